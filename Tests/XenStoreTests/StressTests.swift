import ProcvisorABI
import Testing
@testable import XenStore
import TestSupport

/// 1000 domains of about 20 nodes and a watch each, thousands of interleaved transactions that
/// commit, abort or conflict, checked against a model that predicts every commit's outcome from
/// generation counts, every watch event, and the final tree.
@Suite struct StressTests {
    /// The model's view of one open transaction.
    struct ModelTx {
        let domid: UInt16
        let id: UInt32
        /// Version of each node when the transaction first touched it.
        var touched: [String: Int] = [:]
        var writes: [String: String] = [:]
    }

    @Test func thousandDomainsThousandsOfTransactions() throws {
        let domains = 1000
        let e = XenStoreEngine()
        var rng = SplitMix64(state: 0x5eed)
        var values: [String: String] = [:]  // the model tree below /local/domain/<d>
        var version: [String: Int] = [:]  // bumped on every committed change of a node
        var clients: [UInt16: XSTestClient] = [:]
        let dom0 = XSTestClient(e, id: 0, domid: 0)
        #expect(dom0.call(.watch, ["/local/domain", "all"]) == "OK|")
        for d in 1...UInt16(domains) {
            let home = "/local/domain/\(d)"
            _ = try e.mkdir(home, perms: [XSPermission(.none, d)])
            _ = e.introduceDomain(d)
            let c = XSTestClient(e, id: Int(d), domid: d)
            clients[d] = c
            #expect(c.call(.watch, [home, "w"]) == "OK|")
            for k in 0..<19 {
                #expect(c.write("k\(k)", "0") == "OK|")
                values["\(home)/k\(k)"] = "0"
            }
        }
        var lost = 0, unexpected = 0

        /// Checks the watch events of one request against the paths it changed.
        func checkEvents(_ out: [(XSConnectionID, XSMessage)], changed: [String]) {
            var expected: [String: Int] = [:]
            for p in changed {
                let owner = Int(p.split(separator: "/")[2])!
                expected["\(owner) \(p) w", default: 0] += 1
                expected["0 \(p) all", default: 0] += 1
            }
            var got: [String: Int] = [:]
            for (conn, m) in out where m.type == .watchEvent {
                got["\(conn) " + m.payloadStrings.joined(separator: " "), default: 0] += 1
            }
            for (k, n) in expected where got[k, default: 0] < n { lost += n - got[k, default: 0] }
            for (k, n) in got where expected[k, default: 0] < n { unexpected += n - expected[k, default: 0] }
        }

        var open: [ModelTx] = []
        var commits = 0, conflicts = 0, aborts = 0, started = 0, nextNew = 0
        func pickDomain() -> UInt16 {
            UInt16(Bool.random(using: &rng) ? Int.random(in: 1...20, using: &rng) : Int.random(in: 1...domains, using: &rng))
        }
        for _ in 0..<20_000 {
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<20 where open.count < 400:
                let d = pickDomain()
                guard open.filter({ $0.domid == d }).count < 5 else { continue }
                open.append(ModelTx(domid: d, id: clients[d]!.startTransaction()))
                started += 1
            case 20..<65 where !open.isEmpty:
                // A write inside a transaction: an existing node, or now and then a new one.
                let i = Int.random(in: 0..<open.count, using: &rng)
                let tx = open[i]
                let home = "/local/domain/\(tx.domid)"
                let create = Int.random(in: 0..<10, using: &rng) == 0
                let path = create ? "\(home)/n\(nextNew)" : "\(home)/k\(Int.random(in: 0..<19, using: &rng))"
                if create { nextNew += 1 }
                let value = String(Int.random(in: 0..<1_000_000, using: &rng))
                let out = clients[tx.domid]!.send(XSMessage(.write, transactionID: tx.id, payload: Array("\(path)\0\(value)".utf8)))
                #expect(describe(out.reply) == "OK|")
                #expect(events(out.all, for: Int(tx.domid)).isEmpty && events(out.all, for: 0).isEmpty)
                var touchedNow = [path]
                if create { touchedNow.append(home) }
                for p in touchedNow where open[i].touched[p] == nil { open[i].touched[p] = version[p, default: 0] }
                open[i].writes[path] = value
            case 65..<85 where !open.isEmpty:
                let tx = open.remove(at: Int.random(in: 0..<open.count, using: &rng))
                let abort = Int.random(in: 0..<8, using: &rng) == 0
                let out = clients[tx.domid]!.send(.transactionEnd, [abort ? "F" : "T"], tx: tx.id)
                let conflict = tx.touched.contains { version[$0.key, default: 0] != $0.value }
                if abort {
                    aborts += 1
                    #expect(describe(out.reply) == "OK|")
                    checkEvents(out.all, changed: [])
                } else if conflict {
                    conflicts += 1
                    #expect(describe(out.reply) == "ERR:EAGAIN")
                    checkEvents(out.all, changed: [])
                } else {
                    commits += 1
                    #expect(describe(out.reply) == "OK|")
                    for p in tx.touched.keys { version[p, default: 0] += 1 }
                    for (p, v) in tx.writes { values[p] = v }
                    checkEvents(out.all, changed: Array(tx.writes.keys))
                }
            default:
                // dom0 writes a guest node directly: the source of most conflicts.
                let d = pickDomain()
                let path = "/local/domain/\(d)/k\(Int.random(in: 0..<19, using: &rng))"
                let out = dom0.send(XSMessage(.write, payload: Array("\(path)\0direct".utf8)))
                #expect(describe(out.reply) == "OK|")
                version[path, default: 0] += 1
                values[path] = "direct"
                checkEvents(out.all, changed: [path])
            }
        }
        #expect(lost == 0)
        #expect(unexpected == 0)
        #expect(started > 2000 && commits > 1000 && conflicts > 100 && aborts > 50)

        // The final tree matches the model, children lists and node accounting included.
        for d in 1...UInt16(domains) {
            let home = "/local/domain/\(d)"
            let children = try Set(e.directory(home))
            let modelChildren = Set(values.keys.filter { $0.hasPrefix(home + "/") }.map { String($0.dropFirst(home.count + 1)) })
            #expect(children == modelChildren)
            #expect(e.nodeCount(of: d) == modelChildren.count + 1)
        }
        for (p, v) in values { #expect(try e.read(p) == Array(v.utf8)) }
        #expect(e.totalNodes == values.count + domains + 5 + 2)  // + homes, initial nodes, /local, /local/domain
    }
}

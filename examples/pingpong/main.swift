// pingpong: two domains that share nothing but what they grant each other. `ping` grants a page
// to `pong` and offers it an event channel; they bounce messages through a Xen shared ring on
// that page and report the round trip. They meet through XenStore as a split driver's two halves
// do: pong opens a mailbox in its tree that others may write (data/pingpong, owner pong, default
// `w`); ping writes its offer there (ring-ref and event-channel) and makes it readable by pong only.
//   pong: extra = "role=pong"
//   ping: extra = "role=ping peer=DOMID-OF-PONG [rounds=N] [spin=N]"
import DomainRuntime
import Glibc

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
let layout = RingLayout(requestSize: 64, responseSize: 64)
let ev = domain.eventChannels, gt = domain.grantTable
let spin = Int(arg("spin") ?? "2000") ?? 2000

func fail(_ why: String) -> Never {
    print("pingpong: \(why)")
    domain.shutdown(.crash)
}

switch arg("role") {
case "ping":
    guard let peer = UInt16(arg("peer") ?? "") else { fail("ping needs peer=DOMID") }
    let rounds = Int(arg("rounds") ?? "100000") ?? 100000
    let page = try! gt.allocatePage()
    let front = FrontRing(page: page.base, layout: layout)
    let gref = try! gt.grantAccess(page, to: peer)
    let port = try! ev.allocUnbound(remote: peer)
    let mailbox = "/local/domain/\(peer)/data/pingpong"
    let offer = "\(mailbox)/dom\(domain.domid)"
    do {
        try domain.store.write(offer, "peer=\(domain.domid) gref=\(gref) port=\(port)")
        try domain.store.setPermissions(offer, [XenStorePermission(domid: domain.domid, access: .none),
                                                XenStorePermission(domid: peer, access: .read)])
    } catch {
        fail("cannot leave the offer in \(mailbox) (is dom\(peer) a pong?): \(error)")
    }
    print("offer peer=\(domain.domid) gref=\(gref) port=\(port) written to \(offer)")
    fflush(stdout)
    // pong binds when it gets the offer; the supervisor then tells us (portBound).
    let deadline = SystemTime.nanoseconds() + 60_000_000_000
    while !ev.isConnected(port) {
        if SystemTime.nanoseconds() > deadline { fail("pong never bound port \(port)") }
        _ = ev.waitAny(timeoutNs: 100_000_000)
    }
    var samples: [UInt64] = []
    samples.reserveCapacity(rounds)
    for i in 0..<rounds {
        let t0 = SystemTime.nanoseconds()
        guard let slot = front.nextRequest() else { fail("ring full") }
        slot.storeBytes(of: UInt64(i), as: UInt64.self)
        if front.pushRequests() { try! ev.send(port) }
        while true {
            do {
                if let rsp = try front.takeResponse() {
                    guard rsp.load(as: UInt64.self) == UInt64(i) &* 2 else { fail("bad response at round \(i)") }
                    break
                }
            } catch { fail("peer corrupted the ring: \(error)") }
            if !front.finalCheckForResponses() { _ = ev.waitAny(timeoutNs: 5_000_000_000, spin: spin) }
        }
        samples.append(SystemTime.nanoseconds() - t0)
    }
    samples.sort()
    print("pingpong: \(rounds) round trips through a granted ring, median \(samples[rounds / 2]) ns, p99 \(samples[rounds * 99 / 100]) ns")
    try? ev.close(port)
    fflush(stdout)
    domain.shutdown(.poweroff)
case "pong":
    // The mailbox: owned by us, writable (not readable) by every other domain.
    let mailbox = "data/pingpong"
    do {
        try domain.store.mkdir(mailbox)
        try domain.store.setPermissions(mailbox, [XenStorePermission(domid: domain.domid, access: .write)])
    } catch {
        fail("cannot open the mailbox: \(error)")
    }
    print("pong: dom\(domain.domid) waiting for an offer in /local/domain/\(domain.domid)/\(mailbox)")
    fflush(stdout)
    var line = ""
    let deadline = SystemTime.nanoseconds() + 120_000_000_000
    while line.isEmpty {
        // An offer becomes readable once its writer has handed it to us.
        for entry in (try? domain.store.directory(mailbox)) ?? [] {
            if let v = try? domain.store.read("\(mailbox)/\(entry)") { line = v; break }
        }
        if line.isEmpty {
            if SystemTime.nanoseconds() > deadline { fail("no offer within 120 s") }
            usleep(10_000)
        }
    }
    var kv: [String: UInt32] = [:]
    for part in line.split(separator: " ") {
        let f = part.split(separator: "=")
        if f.count == 2 { kv[String(f[0])] = UInt32(f[1]) }
    }
    guard let p = kv["peer"], let g = kv["gref"], let rp = kv["port"] else { fail("bad offer '\(line)'") }
    let peer = UInt16(p)
    let mapping = try! gt.map(domid: peer, ref: GrantRef(g))
    let back = BackRing(page: mapping.base, layout: layout)
    let port = try! ev.bindInterdomain(remote: peer, remotePort: EventChannels.Port(rp))
    print("pong: mapped gref \(g) of dom\(peer), bound port \(port)")
    fflush(stdout)
    var served = 0
    while ev.isConnected(port) {
        do {
            while let req = try back.takeRequest() {
                let v = req.load(as: UInt64.self)
                back.nextResponse().storeBytes(of: v &* 2, as: UInt64.self)
                served += 1
            }
        } catch {
            print("pong: ping corrupted the ring (\(error)); disconnecting")
            break
        }
        if back.pushResponses() { try? ev.send(port) }
        if !back.finalCheckForRequests() { _ = ev.waitAny(timeoutNs: 1_000_000_000, spin: spin) }
    }
    try? gt.unmap(mapping)
    print("pong: served \(served) requests; ping closed the channel")
    fflush(stdout)
    domain.shutdown(.poweroff)
default:
    fail("set extra = \"role=ping peer=DOMID\" or \"role=pong\"")
}

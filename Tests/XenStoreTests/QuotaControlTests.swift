import ProcvisorABI
import Testing
@testable import XenStore

@Suite struct QuotaControlTests {
    func guest(_ q: XSQuota) throws -> (XenStoreEngine, XSTestClient) {
        let e = XenStoreEngine(quota: q)
        _ = try e.mkdir("/local/domain/1", perms: [XSPermission(.none, 1)])
        return (e, XSTestClient(e, id: 1, domid: 1))
    }

    @Test func nodeQuota() throws {
        var q = XSQuota()
        q.nodes = 5
        let (e, g) = try guest(q)
        #expect(e.nodeCount(of: 1) == 1)
        #expect(g.write("a/b/c/d/e", "") == "ERR:ENOSPC")  // 5 more would make 6: all or nothing
        #expect(e.nodeCount(of: 1) == 1)
        #expect(g.read("a") == "ERR:ENOENT")
        #expect(g.write("a/b/c/d", "") == "OK|")
        #expect(g.write("x", "") == "ERR:ENOSPC")
        #expect(g.write("a", "rewrite is fine") == "OK|")
        #expect(g.call(.rm, ["a/b/c/d"]) == "OK|")
        #expect(g.write("x", "") == "OK|")
        // In a transaction the commit checks the total, as acc_fix_domains() does (>= quota).
        let t = g.startTransaction()
        #expect(g.call(.rm, ["x"], tx: t) == "OK|")
        #expect(g.write("y", "", tx: t) == "OK|")
        #expect(g.call(.transactionEnd, ["T"], tx: t) == "ERR:ENOSPC")
        // dom0 is exempt.
        let d0 = XSTestClient(e, id: 2, domid: 0)
        for i in 0..<10 { #expect(d0.write("/local/domain/1/z\(i)", "") == "OK|") }
    }

    @Test func nodeSizeQuota() throws {
        var q = XSQuota()
        q.nodeSize = 100
        let (_, g) = try guest(q)
        // 16 header + 8 per permission + value.
        #expect(g.write("v", String(repeating: "x", count: 100 - 24)) == "OK|")
        #expect(g.write("v", String(repeating: "x", count: 100 - 23)) == "ERR:ENOSPC")
        // Inside a transaction the failure dooms the transaction (ENOMEM at commit), as in xenstored.
        let t = g.startTransaction()
        #expect(g.write("v", String(repeating: "x", count: 200), tx: t) == "ERR:ENOSPC")
        #expect(g.call(.transactionEnd, ["T"], tx: t) == "ERR:ENOMEM")
    }

    @Test func transactionNodesQuota() throws {
        var q = XSQuota()
        q.transactionNodes = 3
        let (_, g) = try guest(q)
        _ = g.write("a", "")
        let t = g.startTransaction()
        #expect(g.read("a", tx: t) == "")
        #expect(g.read("b", tx: t) == "ERR:ENOENT")
        // A missing node makes xenstored look at its parent too: that is the third node.
        #expect(g.read("c", tx: t) == "ERR:ENOSPC")
        #expect(g.call(.transactionEnd, ["T"], tx: t) == "ERR:ENOMEM")
    }

    @Test func controlQuotaAndLog() throws {
        let e = XenStoreEngine()
        var logged: [String] = []
        e.logSink = { logged.append($0) }
        let d0 = XSTestClient(e, id: 1, domid: 0)
        let text = d0.call(.control, ["quota"])
        #expect(text.hasPrefix("Quota settings:\n"))
        #expect(text.contains("nodes            :     1000 Nodes per domain\n"))
        #expect(text.contains("watches          :      128 Watches per domain\n"))
        #expect(text.contains("node-size        :     2048 Max. size of a node\n"))
        #expect(d0.call(.control, ["quota", "set", "nodes", "7"]) == "OK|")
        #expect(e.quota.nodes == 7)
        #expect(d0.call(.control, ["quota", "set", "nodes", "0"]) == "ERR:EINVAL")
        #expect(d0.call(.control, ["quota", "set", "bogus", "3"]) == "ERR:EINVAL")
        #expect(d0.call(.control, ["quota", "0"]).hasPrefix("Domain 0:\nnodes            :        5 (max "))
        #expect(d0.call(.control, ["quota", "99"]) == "ERR:ENOENT")
        #expect(d0.call(.control, ["quota", "max"]).hasPrefix("Max. seen accounting values:\n"))
        #expect(d0.call(.control, ["quota-soft"]).contains("memory           :  2097152"))
        #expect(d0.call(.control, ["log"]).hasPrefix("Log switch settings:\nobj     : on\n"))
        #expect(d0.call(.control, ["log", "on"]) == "OK|")
        _ = d0.read("/tool")
        #expect(logged.contains { $0.contains("IN") && $0.contains("XS_READ") })
        #expect(d0.call(.control, ["log", "off"]) == "OK|")
        let n = logged.count
        _ = d0.read("/tool")
        #expect(logged.count == n)
        #expect(d0.call(.control, ["log", "+tdb"]) == "OK|")
        #expect(d0.call(.control, ["log", "+nope"]) == "ERR:EINVAL")
        #expect(d0.call(.control, ["print", "hello"]) == "OK|")
        #expect(logged.last == "control: hello")
        #expect(d0.call(.control, ["check"]) == "OK|")
        #expect(d0.call(.control, ["frobnicate"]) == "ERR:EINVAL")
        #expect(d0.call(.control, ["help"]).contains("quota-soft"))
    }
}

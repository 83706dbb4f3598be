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

/// Where the store follows xenstored's written rules even for dom0: path lengths
/// (docs/misc/xenstore.txt), which domids INTRODUCE and IS_DOMAIN_INTRODUCED take, and the
/// `logfile` and `memreport` control commands.
@Suite struct XenStoreParityTests {
    @Test func pathsLongerThanXenstoreTxtAllowsAreRefusedForEveryone() throws {
        let e = XenStoreEngine()
        let d0 = XSTestClient(e, id: 1, domid: 0)
        let longest = "/" + String(repeating: "a", count: 3071)
        #expect(d0.write(longest, "x") == "OK|")
        #expect(d0.write(longest + "b", "x") == "ERR:EINVAL")
        #expect(d0.read(longest + "b") == "ERR:EINVAL")
        // Relative: at most 2048 bytes before /local/domain/0/ is put in front.
        #expect(d0.write(String(repeating: "r", count: 2048), "x") == "OK|")
        #expect(d0.write(String(repeating: "r", count: 2049), "x") == "ERR:EINVAL")
        // A special watch path is held to the relative length.
        #expect(d0.call(.watch, ["@" + String(repeating: "w", count: 2047), "t"]) == "OK|")
        #expect(d0.call(.watch, ["@" + String(repeating: "w", count: 2048), "t"]) == "ERR:EINVAL")
    }

    @Test func domainZeroIsIntroducedAndReservedDomidsCannotBe() throws {
        let e = XenStoreEngine()
        let d0 = XSTestClient(e, id: 1, domid: 0)
        #expect(d0.call(.isDomainIntroduced, ["0"]) == "T|")
        for reserved in ["32752", "32753", "32767", "65535"] {  // DOMID_FIRST_RESERVED (DOMID_SELF) and up
            #expect(d0.call(.introduce, [reserved, "1", "5"]) == "ERR:EINVAL", "\(reserved)")
        }
        var asked: [UInt16] = []
        e.onIntroduce = { domid, _, _ in asked.append(domid); return domid == 40 ? .ENOENT : nil }
        #expect(d0.call(.introduce, ["40", "1", "5"]) == "ERR:ENOENT")
        #expect(d0.call(.isDomainIntroduced, ["40"]) == "F|")
        #expect(d0.call(.introduce, ["41", "1", "5"]) == "OK|")
        #expect(asked == [40, 41])
    }

    @Test func logfileAndMemreportGoWhereTheHostSays() throws {
        let e = XenStoreEngine()
        let d0 = XSTestClient(e, id: 1, domid: 0)
        _ = try e.mkdir("/local/domain/3", perms: [XSPermission(.none, 3)])
        _ = e.introduceDomain(3)
        // Without a host to open files, both are refused.
        #expect(d0.call(.control, ["logfile", "/x"]) == "ERR:EINVAL")
        #expect(d0.call(.control, ["memreport"]) == "ERR:EINVAL")
        var logfiles: [String] = []
        var reports: [(String, String?)] = []
        e.onLogfile = { logfiles.append($0); return $0 == "/nope" ? .EACCES : nil }
        e.onMemreport = { reports.append(($0, $1)); return nil }
        #expect(d0.call(.control, ["logfile", "/var/log/xs.log"]) == "OK|")
        #expect(d0.call(.control, ["logfile", "/nope"]) == "ERR:EACCES")
        #expect(d0.call(.control, ["logfile"]) == "ERR:EINVAL")
        #expect(logfiles == ["/var/log/xs.log", "/nope"])
        #expect(d0.call(.control, ["memreport", "/tmp/r"]) == "OK|")
        #expect(d0.call(.control, ["memreport"]) == "OK|")
        #expect(d0.call(.control, ["memreport", "a", "b"]) == "ERR:EINVAL")
        #expect(reports.map(\.1) == ["/tmp/r", nil])
        let report = try #require(reports.first?.0)
        #expect(report.hasPrefix("xenstore memory report: "), "\(report)")
        #expect(report.contains("\ndomain 3: nodes 1, "), "\(report)")
        let help = d0.call(.control, ["help"])
        #expect(help.contains("logfile") && help.contains("memreport"), "\(help)")
    }
}

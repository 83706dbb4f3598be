import ProcvisorABI
import Testing
@testable import XenStore

@Suite struct WatchTests {
    func setup() throws -> (XenStoreEngine, XSTestClient, XSTestClient, XSTestClient) { try dom0AndTwoGuests() }

    @Test func firesOnRegisterThenOnChangesBelow() throws {
        let (_, d0, _, _) = try setup()
        let r = d0.send(.watch, ["/w", "tok"])
        #expect(describe(r.reply) == "OK|")
        #expect(events(r.all, for: 100) == ["/w tok"])
        #expect(r.all.first?.1.type == .watch)  // reply first, then the initial event
        #expect(events(d0.send(.write, ["/w/a/b", "x"]).all, for: 100) == ["/w/a/b tok"])
        #expect(events(d0.send(.write, ["/other", "x"]).all, for: 100) == [])
        #expect(events(d0.send(.write, ["/wx", "x"]).all, for: 100) == [])  // not a child of /w
        #expect(d0.call(.watch, ["/w", "tok"]) == "ERR:EEXIST")
        #expect(d0.call(.watch, ["/w", "tok2"]) == "OK|")
        #expect(events(d0.send(.mkdir, ["/w/c"]).all, for: 100) == ["/w/c tok", "/w/c tok2"])
        #expect(d0.call(.unwatch, ["/w", "tok"]) == "OK|")
        #expect(d0.call(.unwatch, ["/w", "tok"]) == "ERR:ENOENT")
        #expect(events(d0.send(.write, ["/w", "y"]).all, for: 100) == ["/w tok2"])
        // Events caused by a change come before the reply.
        let out = d0.send(.write, ["/w", "z"]).all
        #expect(out.map { $0.1.type } == [.watchEvent, .write])
    }

    @Test func rmFiresForSubtreeWatches() throws {
        let (_, d0, _, _) = try setup()
        _ = d0.write("/r/a/b", "1")
        _ = d0.write("/r/c", "1")
        _ = d0.send(.watch, ["/r", "top"])
        _ = d0.send(.watch, ["/r/a/b", "deep"])
        _ = d0.send(.watch, ["/", "root"])
        let ev = events(d0.send(.rm, ["/r/a"]).all, for: 100)
        // Descendants: only exact watches; the removed node: its watchers and above.
        #expect(ev == ["/r/a/b deep", "/r/a top", "/r/a root"])
    }

    @Test func relativeWatchesGetRelativePaths() throws {
        let (_, _, g1, _) = try setup()
        let r = g1.send(.watch, ["device", "t"])
        #expect(events(r.all, for: 1) == ["device t"])
        #expect(events(g1.send(.write, ["device/vif/0", "x"]).all, for: 1) == ["device/vif/0 t"])
        #expect(g1.call(.watch, ["/local/domain/1/device", "t"]) == "ERR:EEXIST")  // same canonical watch
        #expect(g1.call(.unwatch, ["/local/domain/1/device", "t"]) == "OK|")
    }

    @Test func noEventWithoutReadPermission() throws {
        let (e, d0, g1, g2) = try setup()
        _ = g2.send(.watch, ["/local/domain/1", "spy"])  // fires once on registration anyway
        let out = g1.send(.write, ["/local/domain/1/private", "x"]).all
        #expect(events(out, for: 2) == [])
        // Readable through the ACL: events arrive.
        _ = g1.call(.setPerms, ["/local/domain/1/private", "n1", "r2"])
        #expect(events(g1.send(.write, ["/local/domain/1/private", "y"]).all, for: 2) == ["/local/domain/1/private spy"])
        // A permission change that takes access away still tells the watcher (old permissions).
        #expect(events(g1.send(.setPerms, ["/local/domain/1/private", "n1"]).all, for: 2) == ["/local/domain/1/private spy"])
        #expect(events(g1.send(.write, ["/local/domain/1/private", "z"]).all, for: 2) == [])
        _ = d0
        _ = e
    }

    @Test func specialWatches() throws {
        let (e, d0, g1, _) = try setup()
        _ = d0.send(.watch, ["@releaseDomain", "rel"])
        _ = d0.send(.watch, ["@introduceDomain", "intro"])
        _ = d0.send(.watch, ["/", "all"])
        _ = g1.send(.watch, ["@releaseDomain", "g"])
        #expect(events(e.introduceDomain(5), for: 100) == ["@introduceDomain intro"])
        #expect(events(e.introduceDomain(5), for: 100) == [])  // already introduced
        // Guests need read access to the special node.
        #expect(events(e.releaseDomain(5), for: 1) == [])
        _ = try e.setPermissions("@releaseDomain", [XSPermission(.none, 0), XSPermission(.read, 1)])
        _ = e.introduceDomain(6)
        let out = e.releaseDomain(6)
        #expect(events(out, for: 100) == ["@releaseDomain rel"])
        #expect(events(out, for: 1) == ["@releaseDomain g"])
        #expect(!e.isIntroduced(6))
        // Through the wire, with the hooks.
        var released: [UInt16] = []
        e.onRelease = { released.append($0); return nil }
        _ = e.introduceDomain(7)
        #expect(d0.call(.isDomainIntroduced, ["7"]) == "T|")
        #expect(d0.call(.isDomainIntroduced, ["8"]) == "F|")
        #expect(d0.call(.isDomainIntroduced, ["32752"]) == "T|")  // DOMID_SELF
        #expect(events(d0.send(.release, ["7"]).all, for: 100) == ["@releaseDomain rel"])
        #expect(released == [7])
        #expect(d0.call(.release, ["7"]) == "ERR:ENOENT")
        #expect(d0.call(.release, ["0"]) == "ERR:EINVAL")
        var introduced: [(UInt16, UInt64, UInt32)] = []
        e.onIntroduce = { introduced.append(($0, $1, $2)); return $0 == 13 ? .EINVAL : nil }
        #expect(events(d0.send(.introduce, ["9", "1234", "5"]).all, for: 100) == ["@introduceDomain intro"])
        #expect(introduced.map { $0.0 } == [9] && introduced[0].1 == 1234 && introduced[0].2 == 5)
        #expect(d0.call(.introduce, ["13", "1", "1"]) == "ERR:EINVAL")
        #expect(d0.call(.resume, ["9"]) == "OK|")
        #expect(d0.call(.resume, ["10"]) == "ERR:ENOENT")
    }

    @Test func releaseRemovesOwnedNodesAndFiresTheirWatches() throws {
        let (e, d0, g1, _) = try setup()
        _ = g1.write("data/x", "1")
        _ = try e.write("/backend/vif/1/0", [], perms: [XSPermission(.none, 1)])
        _ = d0.send(.watch, ["/backend", "be"])
        #expect(e.nodeCount(of: 1) > 0)
        let out = e.releaseDomain(1)
        #expect(events(out, for: 100).contains("/backend/vif/1/0 be"))
        #expect(throws: XSError.ENOENT) { try e.read("/local/domain/1") }
        #expect(throws: XSError.ENOENT) { try e.read("/backend/vif/1/0") }
        #expect(e.nodeCount(of: 1) == 0)
        #expect(try e.directory("/backend/vif/1") == [])
    }

    @Test func resetWatchesAndDisconnect() throws {
        let (e, d0, _, _) = try setup()
        _ = d0.send(.watch, ["/a", "t"])
        #expect(d0.call(.resetWatches, []) == "OK|")
        #expect(events(d0.send(.write, ["/a", "1"]).all, for: 100) == [])
        _ = d0.send(.watch, ["/a", "t"])
        e.disconnect(100)
        #expect(try events(e.write("/a", []), for: 100) == [])
    }

    @Test func watchQuota() throws {
        var q = XSQuota()
        q.watches = 3
        let e = XenStoreEngine(quota: q)
        let g = XSTestClient(e, id: 1, domid: 1)
        // xenstored refuses once the count already exceeds the quota: quota + 1 watches fit.
        for i in 0..<4 { #expect(g.call(.watch, ["/w\(i)", "t"]) == "OK|") }
        #expect(g.call(.watch, ["/w9", "t"]) == "ERR:E2BIG")
        let d0 = XSTestClient(e, id: 2, domid: 0)
        for i in 0..<10 { #expect(d0.call(.watch, ["/w\(i)", "t"]) == "OK|") }
    }
}

@Suite struct TransactionTests {
    func setup() throws -> (XenStoreEngine, XSTestClient, XSTestClient) {
        let e = XenStoreEngine()
        _ = try e.mkdir("/local/domain/1", perms: [XSPermission(.none, 1)])
        _ = e.introduceDomain(1)
        return (e, XSTestClient(e, id: 100, domid: 0), XSTestClient(e, id: 1, domid: 1))
    }

    @Test func readYourWritesThenCommit() throws {
        let (e, d0, g1) = try setup()
        _ = d0.send(.watch, ["/local/domain/1", "w"])
        let t = g1.startTransaction()
        #expect(t == 1)
        var p = Array("a/b\0".utf8); p += "v".utf8
        let out = g1.send(XSMessage(.write, transactionID: t, payload: p)).all
        #expect(events(out, for: 100) == [])  // nothing until commit
        #expect(g1.read("a/b", tx: t) == "v")
        #expect(g1.read("a/b") == "ERR:ENOENT")  // invisible outside
        #expect(g1.call(.directory, ["/local/domain/1"], tx: t) == "a|")
        let end = g1.send(.transactionEnd, ["T"], tx: t).all
        #expect(describe(end.last!.1) == "OK|")
        #expect(events(end, for: 100) == ["/local/domain/1/a/b w"])
        #expect(try e.read("/local/domain/1/a/b") == Array("v".utf8))
        #expect(e.nodeCount(of: 1) == 3)
        #expect(g1.call(.transactionEnd, ["T"], tx: t) == "ERR:ENOENT")
    }

    @Test func abortDiscards() throws {
        let (e, _, g1) = try setup()
        let t = g1.startTransaction()
        _ = g1.write("x", "1", tx: t)
        _ = g1.call(.rm, ["/local/domain/1"], tx: t)
        #expect(g1.call(.transactionEnd, ["F"], tx: t) == "OK|")
        #expect(throws: XSError.ENOENT) { try e.read("/local/domain/1/x") }
        #expect(try e.read("/local/domain/1") == [])
        #expect(e.nodeCount(of: 1) == 1)
    }

    @Test func conflictIsEAGAIN() throws {
        let (e, d0, g1) = try setup()
        _ = g1.write("c", "0")
        let t = g1.startTransaction()
        #expect(g1.read("c", tx: t) == "0")
        _ = g1.write("other", "1", tx: t)
        _ = d0.write("/local/domain/1/c", "changed")
        #expect(g1.call(.transactionEnd, ["T"], tx: t) == "ERR:EAGAIN")
        #expect(throws: XSError.ENOENT) { try e.read("/local/domain/1/other") }
        // The transaction is gone after EAGAIN.
        #expect(g1.call(.transactionEnd, ["T"], tx: t) == "ERR:ENOENT")
        // XS_WRITE reads the node first, so even a blind write conflicts with a concurrent one.
        let t2 = g1.startTransaction()
        _ = g1.write("c", "mine", tx: t2)
        _ = d0.write("/local/domain/1/c", "theirs")
        #expect(g1.call(.transactionEnd, ["T"], tx: t2) == "ERR:EAGAIN")
        #expect(try e.read("/local/domain/1/c") == Array("theirs".utf8))
        // Changes elsewhere do not conflict.
        let t5 = g1.startTransaction()
        _ = g1.write("c", "mine", tx: t5)
        _ = d0.write("/elsewhere", "x")
        #expect(g1.call(.transactionEnd, ["T"], tx: t5) == "OK|")
        #expect(try e.read("/local/domain/1/c") == Array("mine".utf8))
        // Creating a sibling changes the parent's children: conflict.
        let t3 = g1.startTransaction()
        _ = g1.write("new1", "", tx: t3)
        _ = d0.write("/local/domain/1/new2", "")
        #expect(g1.call(.transactionEnd, ["T"], tx: t3) == "ERR:EAGAIN")
        // A node seen missing that someone else creates is a conflict too.
        let t4 = g1.startTransaction()
        #expect(g1.read("ghost", tx: t4) == "ERR:ENOENT")
        _ = d0.write("/local/domain/1/ghost", "")
        #expect(g1.call(.transactionEnd, ["T"], tx: t4) == "ERR:EAGAIN")
    }

    @Test func twoInterferingTransactions() throws {
        // transaction.c example 4.
        let (_, d0, g1) = try setup()
        _ = d0.write("/local/domain/1/A", "a")
        _ = d0.write("/local/domain/1/B", "b")
        let d0b = XSTestClient(d0.engine, id: 101, domid: 0)
        let t1 = g1.startTransaction(), t2 = d0b.startTransaction()
        _ = g1.read("/local/domain/1/A", tx: t1)
        _ = d0b.read("/local/domain/1/B", tx: t2)
        _ = g1.write("/local/domain/1/B", "1", tx: t1)
        _ = d0b.write("/local/domain/1/A", "2", tx: t2)
        #expect(g1.call(.transactionEnd, ["T"], tx: t1) == "OK|")
        #expect(d0b.call(.transactionEnd, ["T"], tx: t2) == "ERR:EAGAIN")
    }

    @Test func rmInTransactionFiresOnCommit() throws {
        let (e, d0, g1) = try setup()
        _ = g1.write("tree/a", "1")
        _ = d0.send(.watch, ["/local/domain/1/tree", "t"])
        _ = d0.send(.watch, ["/local/domain/1/tree/a", "a"])
        let t = g1.startTransaction()
        #expect(events(g1.send(.rm, ["tree"], tx: t).all, for: 100) == [])
        #expect(g1.read("tree/a", tx: t) == "ERR:ENOENT")
        let ev = events(g1.send(.transactionEnd, ["T"], tx: t).all, for: 100)
        #expect(Set(ev) == ["/local/domain/1/tree t", "/local/domain/1/tree/a a"])
        #expect(throws: XSError.ENOENT) { try e.read("/local/domain/1/tree") }
        #expect(e.nodeCount(of: 1) == 1)
    }

    @Test func transactionErrors() throws {
        var q = XSQuota()
        q.transactions = 2
        let e = XenStoreEngine(quota: q)
        _ = try e.mkdir("/local/domain/1", perms: [XSPermission(.none, 1)])
        let g1 = XSTestClient(e, id: 1, domid: 1)
        #expect(g1.read("x", tx: 77) == "ERR:ENOENT")
        let t = g1.startTransaction()
        #expect(g1.call(.transactionStart, [""], tx: t) == "ERR:EBUSY")
        #expect(g1.call(.transactionEnd, ["T"], tx: 0) == "ERR:ENOENT")
        // quota + 1 open transactions fit, as in xenstored.
        _ = g1.startTransaction()
        _ = g1.startTransaction()
        #expect(g1.call(.transactionStart, [""], tx: 0) == "ERR:ENOSPC")
        #expect(g1.call(.resetWatches, [], tx: 0) == "OK|")  // drops the transactions too
        #expect(g1.read("x", tx: t) == "ERR:ENOENT")
        #expect(g1.call(.transactionStart, [""], tx: 0) == "1|" || g1.call(.transactionStart, [""], tx: 0).hasSuffix("|"))
        // Transaction ids are per connection.
        let other = XSTestClient(e, id: 2, domid: 0)
        #expect(other.read("/", tx: t) == "ERR:ENOENT")
    }
}

import ProcvisorABI
import Testing
@testable import XenStore

extension XSTestClient {
    /// A client of a connection the engine already has (one a snapshot brought back).
    init(attached engine: XenStoreEngine, id: XSConnectionID) {
        self.engine = engine
        self.id = id
    }
}

/// The database a live update hands to the next supervisor: rebuilt from its snapshot (through
/// `BinaryCoder`, as it travels), it answers every connection as the original would have.
@Suite struct XenStoreSnapshotTests {
    static func roundTrip(_ e: XenStoreEngine) throws -> XenStoreEngine {
        let bytes = try BinaryCoder.encode(e.snapshot())
        return try XenStoreEngine(snapshot: try BinaryCoder.decode(XenStoreSnapshot.self, from: bytes))
    }

    @Test func watchesTransactionsAndAccountingCarryOver() throws {
        let (e, d0, g1, g2) = try dom0AndTwoGuests()
        _ = d0.write("/tool/x", "1")
        #expect(g1.write("data/a", "guest") == "OK|")
        _ = d0.send(.watch, ["/tool", "dom0-tok"])
        _ = g1.send(.watch, ["data", "rel-tok"])  // relative: events come back relative
        // Two transactions: one that will conflict, one that will not.
        let conflicting = d0.startTransaction()
        #expect(d0.read("/tool/x", tx: conflicting) == "1")
        #expect(d0.write("/tool/x", "from-tx", tx: conflicting) == "OK|")
        let clean = g2.startTransaction()
        #expect(g2.write("data/b", "in-tx", tx: clean) == "OK|")
        #expect(d0.call(.control, ["quota", "set", "nodes", "77"]) == "OK|")
        let nodesOf1 = e.nodeCount(of: 1)

        let r = try Self.roundTrip(e)
        #expect(r.snapshot() == e.snapshot())
        #expect(r.nodeCount(of: 1) == nodesOf1)
        #expect(r.quota.nodes == 77)
        #expect(r.isIntroduced(1) && r.isIntroduced(2))
        let (n0, n1, n2) = (XSTestClient(attached: r, id: 100), XSTestClient(attached: r, id: 1), XSTestClient(attached: r, id: 2))
        // Watches fire, with their tokens, relative paths relative.
        #expect(events(n0.send(.write, ["/tool/y", "2"]).all, for: 100) == ["/tool/y dom0-tok"])
        #expect(events(n1.send(.write, ["data/c", "3"]).all, for: 1) == ["data/c rel-tok"])
        // The transaction whose node changed meanwhile fails as it would have; the other commits.
        _ = n0.write("/tool/x", "changed")
        #expect(n0.call(.transactionEnd, ["T"], tx: conflicting) == "ERR:EAGAIN")
        #expect(n2.call(.transactionEnd, ["T"], tx: clean) == "OK|")
        #expect(n2.read("data/b") == "in-tx")
        #expect(n1.read("/local/domain/1/data/a") == "guest")
        // Ids go on from where they were: a new transaction gets a fresh one.
        #expect(n0.startTransaction() != conflicting)
        // Disconnecting a carried connection releases its watches as before.
        r.disconnect(100)
        #expect(events(n1.send(.write, ["/tool/z", "1"]).all, for: 100).isEmpty)
    }

    @Test func aSnapshotThatContradictsItselfIsRefused() throws {
        let (e, d0, _, _) = try dom0AndTwoGuests()
        _ = d0.send(.watch, ["/tool", "tok"])
        var s = e.snapshot()
        // A watch whose connection is gone.
        var orphan = s
        orphan.connections.removeAll { $0.id == 100 }
        #expect(throws: XenStoreSnapshotError.self) { try XenStoreEngine(snapshot: orphan) }
        // A child the tree does not hold.
        let i = try #require(s.nodes.firstIndex { $0.path == "/tool" })
        s.nodes[i].node.addChild("ghost")
        #expect(throws: XenStoreSnapshotError.self) { try XenStoreEngine(snapshot: s) }
    }
}

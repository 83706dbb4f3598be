import LinuxHost
import ProcvisorABI
import Testing
@testable import Supervisor

/// Machine memory on its own: frames, the M2P, domains' RAM and P2M (real memfds, no domain
/// process), and memory_op's reservation rules.
@Suite struct MachineMemoryTests {
    static func op(_ m: MachineMemory, _ domid: DomID, _ op: XenMemOp, _ args: [UInt64] = [], pfns: [UInt64] = []) -> HypercallOutcome {
        var w = WireWriter()
        for p in pfns { w.u64(p) }
        return m.op(domid, HypercallRequest(op: HypercallOp.memoryOp.rawValue, seq: 1, args: [op.rawValue] + args, payload: w.bytes))
    }

    static func rc(_ outcome: HypercallOutcome) -> Int64? {
        if case let .reply(rc, _, _, _) = outcome { return rc }
        return nil
    }

    @Test func framesAreScatteredDistinctAndAllHandedOut() throws {
        let m = try MachineMemory(totalFrames: 1000)
        var seen = Set<UInt64>()
        var contiguous = 0
        var last: UInt64?
        while let mfn = m.allocate() {
            #expect(mfn.rawValue < 1000)
            #expect(seen.insert(mfn.rawValue).inserted)
            if let l = last, mfn.rawValue == l + 1 { contiguous += 1 }
            last = mfn.rawValue
        }
        #expect(seen.count == 1000 && m.freeFrames == 0)
        #expect(contiguous < 10, "frames came out in machine order")
        m.free(MFN(5))
        #expect(m.freeFrames == 1 && m.allocate() == MFN(5))
    }

    @Test func aDomainsRAMIsPopulatedAndTheTablesAgree() throws {
        let m = try MachineMemory(totalFrames: 64)
        let mem = try m.createDomain(3, spanPages: 32, populatedPages: 16)
        #expect(mem.currentPages == 16 && mem.maxPages == 32 && m.freeFrames == 48)
        for pfn in 0..<UInt64(16) {
            let mfn = try #require(mem.mfn(of: PFN(pfn)))
            #expect(m.m2pEntry(mfn) == PFN(pfn))
        }
        #expect(mem.mfn(of: PFN(16)) == nil && mem.mfn(of: PFN(99)) == nil)
        m.releaseDomain(3)
        #expect(m.freeFrames == 64 && m.domains[3] == nil)
        #expect(mem.mfn(of: PFN(0)) == nil)
    }

    @Test func creationThatRunsOutOfFramesHoldsNothing() throws {
        let m = try MachineMemory(totalFrames: 8)
        _ = try m.createDomain(1, spanPages: 4, populatedPages: 4)
        #expect(throws: MachineMemory.DomainMemoryError.self) { try m.createDomain(2, spanPages: 8, populatedPages: 8) }
        #expect(m.freeFrames == 4 && m.domains[2] == nil)
    }

    @Test func reservationsFollowXensRules() throws {
        let m = try MachineMemory(totalFrames: 64)
        _ = try m.createDomain(1, spanPages: 8, populatedPages: 4)
        let selfId = UInt64(DOMID_SELF.rawValue)
        #expect(Self.rc(Self.op(m, 1, .currentReservation, [selfId])) == 4)
        #expect(Self.rc(Self.op(m, 1, .maximumReservation, [1])) == 8)
        #expect(Self.rc(Self.op(m, 1, .currentReservation, [2])) == -XenErrno.EPERM.rawValue)
        // populate stops at the first extent it cannot do: pfn 5, then 2 (already backed).
        #expect(Self.rc(Self.op(m, 1, .populatePhysmap, pfns: [5, 2, 6])) == 1)
        #expect(Self.rc(Self.op(m, 1, .increaseReservation, pfns: [6, 7, 8])) == 2)  // 8 is past maxmem
        #expect(Self.rc(Self.op(m, 1, .currentReservation, [selfId])) == 7)
        // decrease gives frames back and stops at a pfn that holds none.
        let before = m.freeFrames
        #expect(Self.rc(Self.op(m, 1, .decreaseReservation, pfns: [0, 1, 4, 2])) == 2)
        #expect(m.freeFrames == before + 2)
        // The reservation's ceiling (mem-max) stops populate.
        m.domains[1]!.maxPages = 5
        #expect(Self.rc(Self.op(m, 1, .populatePhysmap, pfns: [0, 1])) == 0)
        #expect(Self.rc(Self.op(m, 2, .currentReservation, [selfId])) == -XenErrno.ESRCH.rawValue)
        #expect(Self.rc(Self.op(m, 1, .currentReservation, [selfId])) == 5)
        #expect(Self.rc(m.op(1, HypercallRequest(op: HypercallOp.memoryOp.rawValue, seq: 1, args: [99]))) == -XenErrno.ENOSYS.rawValue)
    }

    @Test func malformedExtentListsAreMalformed() throws {
        let m = try MachineMemory(totalFrames: 16)
        _ = try m.createDomain(1, spanPages: 8, populatedPages: 0)
        let ragged = m.op(1, HypercallRequest(op: HypercallOp.memoryOp.rawValue, seq: 1, args: [XenMemOp.populatePhysmap.rawValue],
                                              payload: [1, 2, 3]))
        guard case .malformed = ragged else { Issue.record("a ragged extent list was not malformed: \(ragged)"); return }
        let tooMany = Self.op(m, 1, .populatePhysmap, pfns: Array(repeating: 0, count: XenMemOp.maxExtents + 1))
        guard case .malformed = tooMany else { Issue.record("too many extents were not malformed: \(tooMany)"); return }
        #expect(m.domains[1]!.currentPages == 0)
    }

    @Test func pagesWrittenWithoutAReservationAreFound() throws {
        let m = try MachineMemory(totalFrames: 64)
        let mem = try m.createDomain(1, spanPages: 8, populatedPages: 2)
        _ = try m.createDomain(2, spanPages: 8, populatedPages: 2)
        #expect(m.overReservation(among: [1, 2]).isEmpty)
        // Write four pages of dom1's RAM (two more than it holds) as a guest that skips populate.
        let ram = try SharedMapping(mem.ramFD, length: 8 * 4096)
        for page in 0..<4 { (ram.base + page * 4096).storeBytes(of: 0xAB, as: UInt8.self) }
        let found = m.overReservation(among: [1, 2])
        #expect(found.count == 1 && found.first?.domid == 1 && found.first?.allowed == 2 * 4096)
        #expect((found.first?.held ?? 0) >= 4 * 4096)
    }
}

import DomainRuntime
import Glibc
import ProcvisorABI
@testable import SplitDrivers
import Testing

/// blkback's in-flight log over plain memory, with a blkif ring in memory whose frontend end
/// plays the guest: what a new incarnation of the driver domain would find after being killed at
/// any instruction, and that resuming from it answers every request exactly once.
@Suite struct BlkbackInflightLogTests {
    typealias Entry = BlkbackInflightLog.Entry
    typealias Layout = BlkbackInflightLog.Layout

    /// Page-aligned zeroed memory, as the supervisor's memfd is the first time.
    final class Memory {
        let base: UnsafeMutableRawPointer
        let bytes: Int
        init(bytes: Int) {
            var p: UnsafeMutableRawPointer?
            posix_memalign(&p, 4096, bytes)
            base = p!
            self.bytes = bytes
            memset(base, 0, bytes)
        }
        deinit { free(base) }
    }

    /// A one-page blkif ring (32 slots) with both ends, and blkback's log for it. The backend's
    /// steps are `BlkbackQueue`'s: take into the log, answer in the log before the slot, publish,
    /// free.
    final class Rig {
        let page = Memory(bytes: 4096)
        let memory: Memory
        let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size)
        let front: FrontRing
        var back: BackRing
        var log: BlkbackInflightLog
        var slots: Int { Int(layout.count) }

        init(memory: Memory? = nil) {
            front = FrontRing(page: page.base, layout: layout)
            self.memory = memory ?? Memory(bytes: BlkbackInflightLog.bytes(slots: Int(layout.count)))
            back = BackRing(page: page.base, layout: layout)
            log = BlkbackInflightLog(memory: self.memory.base, bytes: self.memory.bytes, slots: Int(layout.count))
            log.format(requestsConsumed: back.reqCons)
        }

        /// The frontend puts writes with these ids on the ring (one page each, at sector `id`).
        func submit(_ ids: [UInt64]) {
            for id in ids {
                let rw = BlkifRequest.ReadWrite(operation: .write, id: id, sectorNumber: id, segments: [BlkifSegment(gref: GrantRef(UInt32(truncatingIfNeeded: id)))])
                BlkifRequest.readWrite(rw).encode(to: front.nextRequest()!)
            }
            _ = front.pushRequests()
        }

        /// Takes one request off the ring into the log, as `BlkbackQueue.serviceRing`.
        func take() throws -> Entry? {
            guard let slot = try back.takeRequest() else { return nil }
            return log.take(slot, at: back.reqCons &- 1)
        }

        func takeAll() throws -> [Entry] {
            var taken: [Entry] = []
            while let e = try take() { taken.append(e) }
            return taken
        }

        /// The id of the request an entry holds, from the log's copy.
        func id(_ e: Entry) throws -> UInt64 {
            try BlkifRequest.decode(slot: log.request(e), maxIndirectSegments: BlkbackDevice.maxIndirectSegments).id
        }

        /// `BlkbackQueue.respond` up to the slot: the entry says answered, then the response is
        /// written. Not published.
        func answer(_ e: Entry, _ status: BlkifStatus = .okay) throws {
            let r = BlkifResponse(id: try id(e), operation: BlkifOp.write.rawValue, status: status)
            log.answer(e, at: back.rspProdPvt, with: r)
            r.encode(to: back.nextResponse())
        }

        /// `BlkbackQueue.respond` whole: answered, published, freed.
        func respond(_ entries: [Entry], _ status: BlkifStatus = .okay) throws {
            for e in entries { try answer(e, status) }
            _ = back.pushResponses()
            for e in entries { log.release(e) }
        }

        /// What the frontend receives.
        func responses() throws -> [BlkifResponse] {
            var out: [BlkifResponse] = []
            while let s = try front.takeResponse() { out.append(try BlkifResponse.decode(slot: s)) }
            return out
        }

        /// The backend process dies: a new incarnation attaches to the same ring and log memory.
        func restart() {
            back = BackRing(page: page.base, layout: layout)
            log = BlkbackInflightLog(memory: memory.base, bytes: memory.bytes, slots: slots)
        }

        func check() throws(BlkbackInflightLogError) -> BlkbackInflightLog.Recovery {
            try log.check(requestProducer: back.reqProd, responsesPublished: back.rspProd)
        }

        func state(_ e: Entry) -> UInt32 { memory.base.load(fromByteOffset: Layout.headerSize + Int(e) * Layout.entrySize + Layout.state, as: UInt32.self) }
        var headerReqCons: UInt32 {
            get { memory.base.load(fromByteOffset: Layout.reqCons, as: UInt32.self) }
            set { memory.base.storeBytes(of: newValue, toByteOffset: Layout.reqCons, as: UInt32.self) }
        }
        func setEntry(_ e: Int, _ offset: Int, _ v: UInt32) {
            memory.base.storeBytes(of: v, toByteOffset: Layout.headerSize + e * Layout.entrySize + offset, as: UInt32.self)
        }
        func setSeq(_ e: Int, _ v: UInt64) {
            memory.base.storeBytes(of: v, toByteOffset: Layout.headerSize + e * Layout.entrySize + Layout.seq, as: UInt64.self)
        }
    }

    @Test func sizeCoversTheLargestRingInWholePages() {
        #expect(Layout.entrySize == 136)
        #expect(BlkbackInflightLog.bytes(slots: 32) == 8192)  // 64 + 32 × 136 = 4416
        #expect(BlkbackInflightLog.bytes(slots: 512) == 73728)
        #expect(BlkbackQueue.logBytes == 73728 && BlkbackQueue.logBytes <= 1 << 20)
    }

    @Test func takeAnswerFreeCycle() throws {
        let rig = Rig()
        rig.submit([10, 11, 12])
        let taken = try rig.takeAll()
        #expect(Set(taken).count == 3)
        #expect(rig.headerReqCons == 3)
        // The log's copy is the request as it was on the ring.
        for (e, id) in zip(taken, [UInt64(10), 11, 12]) {
            #expect(try rig.id(e) == id)
            #expect(rig.state(e) == BlkbackInflightLog.State.taken.rawValue)
            let copy = [UInt8](UnsafeRawBufferPointer(start: rig.log.request(e), count: BlkifRequest.Layout.size))
            let rw = BlkifRequest.ReadWrite(operation: .write, id: id, sectorNumber: id, segments: [BlkifSegment(gref: GrantRef(UInt32(id)))])
            #expect(copy == BlkifRequest.readWrite(rw).bytes)
        }
        // Answered: marked with where the response goes, before it is published.
        try rig.answer(taken[1], .error)
        #expect(rig.state(taken[1]) == BlkbackInflightLog.State.answered.rawValue)
        #expect(try rig.check().republish == [taken[1]])
        _ = rig.back.pushResponses()
        #expect(try rig.check().published == [taken[1]])
        rig.log.release(taken[1])
        #expect(rig.state(taken[1]) == BlkbackInflightLog.State.free.rawValue)
        #expect(try rig.responses() == [BlkifResponse(id: 11, operation: .write, status: .error)])
        let r = try rig.check()
        #expect(r.reissue == [taken[0], taken[2]] && r.republish.isEmpty && r.published.isEmpty && r.requestsConsumed == 3)
        // Entries come back: hundreds of requests through 32 entries, the ring wrapping many times.
        try rig.respond([taken[0], taken[2]])
        #expect(try rig.responses().map(\.id) == [10, 12])
        var id: UInt64 = 100
        for _ in 0..<40 {
            rig.submit((0..<UInt64(rig.slots)).map { id + $0 })
            id += UInt64(rig.slots)
            let all = try rig.takeAll()
            #expect(all.count == rig.slots)
            try rig.respond(all.reversed())
            #expect(try rig.responses().count == rig.slots)
        }
        let idle = try rig.check()
        #expect(idle.reissue.isEmpty && idle.republish.isEmpty && idle.published.isEmpty)
        #expect(idle.requestsConsumed == rig.back.reqCons && rig.back.reqCons == 3 + 40 * 32)
    }

    /// Killed with six requests taken: two answered and published (not yet freed), two answered
    /// but not published, two still in flight.
    @Test func recoveryReissuesTakenRepublishesUnpublishedAndDropsPublished() throws {
        let rig = Rig()
        rig.submit([100, 101, 102, 103, 104, 105])
        let e = try rig.takeAll()
        // 101 and 103 published; the process dies before freeing their entries.
        try rig.answer(e[1]); try rig.answer(e[3])
        _ = rig.back.pushResponses()
        // 104 then 100 (with an error) written, not published.
        try rig.answer(e[4]); try rig.answer(e[0], .error)
        #expect(try rig.responses().map(\.id) == [101, 103])

        rig.restart()
        let r = try rig.check()
        #expect(r.requestsConsumed == 6 && r.responsesPublished == 2)
        #expect(r.republish == [e[4], e[0]])
        #expect(r.reissue == [e[2], e[5]])
        #expect(Set(r.published) == [e[1], e[3]])
        rig.log.resume(r, ring: rig.back)
        #expect(rig.back.reqCons == 6 && rig.back.rspProdPvt == 4 && rig.back.rspProd == 4)
        // The frontend gets the unpublished answers as they were, never 101 or 103 again.
        #expect(try rig.responses() == [BlkifResponse(id: 104, operation: .write, status: .okay),
                                        BlkifResponse(id: 100, operation: .write, status: .error)])
        for x in [e[0], e[1], e[3], e[4]] { #expect(rig.state(x) == BlkbackInflightLog.State.free.rawValue) }
        // The reissued requests are the log's copies; answering them ends it.
        #expect(try r.reissue.map { try rig.id($0) } == [102, 105])
        try rig.respond(r.reissue)
        #expect(try rig.responses().map(\.id) == [102, 105])
        // All 32 entries are usable again (a leak would run out here).
        rig.submit((200..<232).map { UInt64($0) })
        #expect(try rig.takeAll().count == 32)
        #expect(try rig.check().reissue.count == 32)
    }

    /// A request outlives its ring slot: answered out of order, the others free the ring and the
    /// frontend puts new requests where it was. Its ring index is then before `rsp_prod`, and it is
    /// reissued from the log's copy, not from the slot.
    @Test func aSlowRequestOutlivesItsRingSlot() throws {
        let rig = Rig()
        rig.submit([0])
        let slow = try #require(try rig.take())
        var id: UInt64 = 1
        for _ in 0..<3 {
            rig.submit((0..<UInt64(rig.slots - 1)).map { id + $0 })
            id += UInt64(rig.slots - 1)
            try rig.respond(try rig.takeAll())
            _ = try rig.responses()
        }
        #expect(rig.back.rspProd == 93 && rig.back.reqCons == 94)
        rig.restart()
        let r = try rig.check()
        #expect(r.reissue == [slow] && r.requestsConsumed == 94)
        #expect(try rig.id(slow) == 0)
        // The slot it came from holds other requests' bytes (and responses') now.
        #expect(memcmp(rig.page.base + RingLayout.headerSize, rig.log.request(slow), BlkifRequest.Layout.size) != 0)
        rig.log.resume(r, ring: rig.back)
        try rig.respond([slow])
        #expect(try rig.responses().map(\.id) == [0])
    }

    /// Killed between recording a request and moving the header's `req_cons` past it; and
    /// killed before recording it at all (the new incarnation takes it off the ring again).
    @Test func reqConsIsDerivedWhenTheHeaderLags() throws {
        let rig = Rig()
        rig.submit([1, 2, 3])
        _ = try rig.take()
        let second = try #require(try rig.take())
        rig.headerReqCons = 1
        var r = try rig.check()
        #expect(r.requestsConsumed == 2 && r.reissue.count == 2 && r.reissue.last == second)

        // The third taken off the ring, not recorded: it is still on the ring for the next one.
        let rig2 = Rig()
        rig2.submit([1, 2, 3])
        _ = try rig2.take(); _ = try rig2.take()
        _ = try rig2.back.takeRequest()
        rig2.restart()
        r = try rig2.check()
        #expect(r.requestsConsumed == 2 && r.reissue.count == 2)
        rig2.log.resume(r, ring: rig2.back)
        let third = try #require(try rig2.take())
        #expect(try rig2.id(third) == 3)
    }

    /// Killed after the header's `next_seq` counted a request that was never recorded (that
    /// store is not ordered with the entry's): the next incarnation numbers on from the ring
    /// indexes, so a request still in flight from before and one taken after are in order for
    /// the incarnation after that.
    @Test func nextSeqAheadOfTheEntriesIsHarmless() throws {
        let rig = Rig()
        rig.submit([1, 2, 3])
        let first = try #require(try rig.take())
        let nextSeq = rig.memory.base.load(fromByteOffset: Layout.nextSeq, as: UInt64.self)
        rig.memory.base.storeBytes(of: nextSeq + 1, toByteOffset: Layout.nextSeq, as: UInt64.self)
        rig.restart()
        var r = try rig.check()
        #expect(r.reissue == [first] && r.requestsConsumed == 1 && r.nextSeq == 1)
        rig.log.resume(r, ring: rig.back)
        let second = try #require(try rig.take())
        rig.restart()
        r = try rig.check()
        #expect(r.reissue == [first, second] && r.requestsConsumed == 2)
    }

    /// A random frontend and backend, killed at random points of taking and answering and
    /// resumed: every check says exactly what is outstanding, and every request is answered
    /// exactly once, with the status it was answered with.
    @Test(arguments: [UInt64(1), 2, 3, 0xdead_beef])
    func killedAnywhereEveryRequestIsAnsweredExactlyOnce(seed: UInt64) throws {
        var rng = Rng(seed)
        let rig = Rig()
        var nextId: UInt64 = 1
        var outstanding: [(id: UInt64, entry: Entry)] = []  // taken, unanswered, in the order taken
        var expected: [UInt64: BlkifStatus] = [:]
        var seen: [UInt64: BlkifStatus] = [:]
        var restarts = 0

        func drain() throws {
            for r in try rig.responses() {
                #expect(seen[r.id] == nil, "id \(r.id) answered twice")
                #expect(expected[r.id] == r.status, "id \(r.id) answered \(r.status), expected \(String(describing: expected[r.id]))")
                seen[r.id] = r.status
            }
        }
        /// The new incarnation: the check must find what the model says, then resume.
        func restart(republish: [UInt64], published: Int, reqCons: UInt32) throws {
            rig.restart()
            restarts += 1
            let r = try rig.check()
            #expect(r.requestsConsumed == reqCons)
            #expect(try r.reissue.map { try rig.id($0) } == outstanding.map(\.id))
            #expect(r.reissue == outstanding.map(\.entry))
            #expect(try r.republish.map { try rig.id($0) } == republish)
            #expect(r.published.count == published)
            rig.log.resume(r, ring: rig.back)
        }

        for _ in 0..<3000 {
            switch rng.below(6) {
            case 0, 1:
                let n = min(Int(rig.front.freeRequests), 1 + rng.below(6))
                if n > 0 {
                    rig.submit((0..<UInt64(n)).map { nextId + $0 })
                    nextId += UInt64(n)
                }
            case 2:
                for _ in 0..<(1 + rng.below(8)) {
                    guard let e = try rig.take() else { break }
                    outstanding.append((try rig.id(e), e))
                }
            case 3, 4:
                guard !outstanding.isEmpty else { break }
                var batch: [(id: UInt64, entry: Entry)] = []
                for _ in 0..<(1 + rng.below(min(6, outstanding.count))) {
                    batch.append(outstanding.remove(at: rng.below(outstanding.count)))
                }
                let status: BlkifStatus = rng.below(4) == 0 ? .error : .okay
                for b in batch { expected[b.id] = status }
                // Killed part-way through answering: the ones marked are published by the next
                // incarnation, the others are still in flight.
                if rng.below(8) == 0 {
                    let marked = rng.below(batch.count + 1)
                    for b in batch.prefix(marked) { try rig.answer(b.entry, status) }
                    outstanding += batch.dropFirst(marked)
                    outstanding.sort { $0.id < $1.id }
                    for b in batch.dropFirst(marked) { expected[b.id] = nil }
                    try restart(republish: batch.prefix(marked).map(\.id), published: 0, reqCons: rig.back.reqCons)
                    break
                }
                for b in batch { try rig.answer(b.entry, status) }
                _ = rig.back.pushResponses()
                // Killed after publishing, before freeing.
                if rng.below(8) == 0 {
                    try restart(republish: [], published: batch.count, reqCons: rig.back.reqCons)
                    break
                }
                for b in batch { rig.log.release(b.entry) }
            default:
                // Killed while taking: before the request is recorded (perhaps after `next_seq`
                // counted it), or before `req_cons` moves.
                if rng.below(2) == 0 {
                    if try rig.back.takeRequest() != nil {
                        if rng.below(2) == 0 {
                            let nextSeq = rig.memory.base.load(fromByteOffset: Layout.nextSeq, as: UInt64.self)
                            rig.memory.base.storeBytes(of: nextSeq &+ 1, toByteOffset: Layout.nextSeq, as: UInt64.self)
                        }
                        try restart(republish: [], published: 0, reqCons: rig.back.reqCons &- 1)
                    }
                } else if let e = try rig.take() {
                    outstanding.append((try rig.id(e), e))
                    let reqCons = rig.back.reqCons
                    rig.headerReqCons = reqCons &- 1
                    try restart(republish: [], published: 0, reqCons: reqCons)
                }
            }
            try drain()
            // At any instant, what a new incarnation would do.
            let r = try rig.check()
            #expect(r.reissue == outstanding.map(\.entry) && r.republish.isEmpty)
        }
        // Finish: everything taken and answered.
        while true {
            while let e = try rig.take() { outstanding.append((try rig.id(e), e)) }
            if outstanding.isEmpty { break }
            for o in outstanding { expected[o.id] = .okay }
            try rig.respond(outstanding.map(\.entry))
            outstanding = []
            try drain()
        }
        try drain()
        #expect(restarts > 20)
        #expect(seen.count == Int(nextId - 1), "every request submitted is answered")
        #expect(seen == expected)
    }

    // MARK: logs not to trust

    @Test func randomBytesAreRefused() {
        var rng = Rng(7)
        let rig = Rig()
        for _ in 0..<200 {
            rng.fill(UnsafeMutableRawBufferPointer(start: rig.memory.base, count: rig.memory.bytes))
            #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        }
    }

    /// A valid header over random entries: refused, or else a recovery whose numbers add up;
    /// never a crash.
    @Test func randomEntriesUnderAValidHeaderNeverCrash() {
        var rng = Rng(11)
        let rig = Rig()
        var accepted = 0
        for round in 0..<2000 {
            rig.log.format(requestsConsumed: 0)
            let reqCons = UInt32(truncatingIfNeeded: rng.next() % 64)
            rig.headerReqCons = reqCons
            rig.memory.base.storeBytes(of: rng.next() % 64, toByteOffset: Layout.nextSeq, as: UInt64.self)
            for e in 0..<rig.slots where rng.below(round % 2 == 0 ? 4 : 16) == 0 {
                rig.setEntry(e, Layout.state, UInt32(rng.below(4)))
                rig.setEntry(e, Layout.reqPos, UInt32(rng.below(64)))
                rig.setSeq(e, UInt64(rng.below(64)))
                rig.setEntry(e, Layout.rspPos, UInt32(rng.below(64)))
                rig.memory.base.storeBytes(of: Int16(rng.below(4)) - 2, toByteOffset: Layout.headerSize + e * Layout.entrySize + Layout.status, as: Int16.self)
            }
            // Often the indexes of a ring with nothing or little in flight, so that some pass.
            let rspProd = round % 3 == 0 ? reqCons &- UInt32(rng.below(3)) : UInt32(rng.below(64))
            let reqProd = rspProd &+ UInt32(rng.below(40))
            guard let r = try? rig.log.check(requestProducer: reqProd, responsesPublished: rspProd) else { continue }
            accepted += 1
            #expect(UInt32(r.reissue.count + r.republish.count) == r.requestsConsumed &- rspProd)
            #expect(r.requestsConsumed &- rspProd <= reqProd &- rspProd)
            #expect(Set(r.reissue + r.republish + r.published).count == r.reissue.count + r.republish.count + r.published.count)
        }
        #expect(accepted > 0)
    }

    /// A real log with a few bytes changed: refused, or else a recovery whose numbers add up;
    /// never a crash.
    @Test func corruptedLogsNeverCrash() throws {
        var rng = Rng(13)
        var refused = 0
        for _ in 0..<300 {
            let rig = Rig()
            rig.submit((1...20).map { UInt64($0) })
            let e = try rig.takeAll()
            try rig.respond(Array(e[0..<5]))
            try rig.answer(e[7]); try rig.answer(e[9])
            let used = Layout.headerSize + rig.slots * Layout.entrySize
            for _ in 0..<(1 + rng.below(3)) {
                let at = rng.below(used)
                rig.memory.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: at, as: UInt8.self)
            }
            do {
                let r = try rig.check()
                #expect(UInt32(r.reissue.count + r.republish.count) == r.requestsConsumed &- rig.back.rspProd)
                rig.log.resume(r, ring: rig.back)
            } catch {
                refused += 1
            }
        }
        #expect(refused > 0)
    }

    @Test func aWrongMagicVersionOrSlotCountIsRefused() throws {
        let rig = Rig()
        rig.submit([1])
        _ = try rig.take()
        #expect(throws: Never.self) { try rig.check() }
        rig.memory.base.storeBytes(of: UInt32(2), toByteOffset: Layout.version, as: UInt32.self)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        rig.memory.base.storeBytes(of: BlkbackInflightLog.version, toByteOffset: Layout.version, as: UInt32.self)
        rig.memory.base.storeBytes(of: UInt32(0), toByteOffset: Layout.magic, as: UInt32.self)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        rig.memory.base.storeBytes(of: BlkbackInflightLog.magic, toByteOffset: Layout.magic, as: UInt32.self)
        // The frontend connected again with a two-page ring: this log was for one page.
        let bigger = Memory(bytes: BlkbackInflightLog.bytes(slots: 64))
        memcpy(bigger.base, rig.memory.base, rig.memory.bytes)
        let other = BlkbackInflightLog(memory: bigger.base, bytes: bigger.bytes, slots: 64)
        #expect(throws: BlkbackInflightLogError(message: "made for a ring of 32 slots; this ring has 64")) {
            try other.check(requestProducer: 1, responsesPublished: 0)
        }
    }

    @Test func impossibleIndexesAreRefused() throws {
        func rigWithFour() throws -> (Rig, [Entry]) {
            let rig = Rig()
            rig.submit([1, 2, 3, 4])
            return (rig, try rig.takeAll())
        }
        // req_cons more than a ring past rsp_prod.
        var (rig, e) = try rigWithFour()
        rig.headerReqCons = 100
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // req_cons past req_prod.
        (rig, e) = try rigWithFour()
        #expect(throws: BlkbackInflightLogError.self) { try rig.log.check(requestProducer: 3, responsesPublished: 0) }
        // The ring's own req_prod impossible.
        #expect(throws: BlkbackInflightLogError.self) { try rig.log.check(requestProducer: 40, responsesPublished: 0) }
        // An entry taken ahead of req_cons.
        rig = Rig()
        rig.submit([1])
        let one = try #require(try rig.take())
        rig.setEntry(Int(one), Layout.reqPos, 9)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // Ring indexes that disagree with the order of taking.
        (rig, e) = try rigWithFour()
        rig.setEntry(Int(e[1]), Layout.reqPos, 2)
        rig.setEntry(Int(e[2]), Layout.reqPos, 1)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // Two entries with one seq.
        (rig, e) = try rigWithFour()
        rig.setSeq(Int(e[2]), 1)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // An answer far from rsp_prod.
        (rig, e) = try rigWithFour()
        try rig.answer(e[0])
        rig.setEntry(Int(e[0]), Layout.rspPos, 1000)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // Unpublished answers with a gap.
        (rig, e) = try rigWithFour()
        try rig.answer(e[0]); try rig.answer(e[1])
        rig.setEntry(Int(e[1]), Layout.rspPos, 2)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        // A state or status that cannot be.
        (rig, e) = try rigWithFour()
        rig.setEntry(Int(e[0]), Layout.state, 7)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
        (rig, e) = try rigWithFour()
        try rig.answer(e[0])
        rig.memory.base.storeBytes(of: Int16(5), toByteOffset: Layout.headerSize + Int(e[0]) * Layout.entrySize + Layout.status, as: Int16.self)
        #expect(throws: BlkbackInflightLogError.self) { try rig.check() }
    }

    /// Every entry live, consistently numbered, but the ring's indexes allow only four requests
    /// in flight.
    @Test func moreLiveEntriesThanTheIndexesAllowAreRefused() throws {
        let rig = Rig()
        for e in 0..<rig.slots {
            rig.setEntry(e, Layout.state, BlkbackInflightLog.State.taken.rawValue)
            rig.setEntry(e, Layout.reqPos, UInt32(e))
            rig.setSeq(e, UInt64(e))
        }
        rig.headerReqCons = 32
        rig.memory.base.storeBytes(of: UInt64(32), toByteOffset: Layout.nextSeq, as: UInt64.self)
        #expect(throws: Never.self) { try rig.log.check(requestProducer: 32, responsesPublished: 0) }
        #expect(throws: BlkbackInflightLogError.self) { try rig.log.check(requestProducer: 32, responsesPublished: 28) }
        #expect(throws: BlkbackInflightLogError.self) { try rig.log.check(requestProducer: 40, responsesPublished: 28) }
    }

    /// A device connecting afresh starts its log over, whatever an earlier connection left.
    @Test func formatStartsOver() throws {
        let rig = Rig()
        rig.submit([1, 2, 3])
        let e = try rig.takeAll()
        try rig.answer(e[0])
        // Attached afresh: the ring is served from its rsp_prod, as if nothing were in flight.
        rig.restart()
        rig.log.format(requestsConsumed: rig.back.reqCons)
        let r = try rig.check()
        #expect(r.reissue.isEmpty && r.republish.isEmpty && r.published.isEmpty && r.requestsConsumed == 0)
        #expect(try rig.takeAll().count == 3)
    }
}


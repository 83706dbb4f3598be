@testable import DomainRuntime
import Glibc
import ProcvisorABI
import Testing
import TestSupport

/// The persistent heap over plain page-aligned buffers: a "restore" is the same bytes copied to a
/// buffer at another address and opened there, as a restored domain finds its RAM mapped anew.
@Suite struct RAMHeapTests {
    /// Zeroed, page-aligned memory standing in for pseudo-physical RAM.
    final class Region {
        let base: UnsafeMutableRawPointer
        let pages: Int
        init(pages: Int) {
            self.pages = pages
            base = .allocate(byteCount: pages * 4096, alignment: 4096)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096)
        }
        /// A copy of these bytes at a new address.
        func copy() -> Region {
            let r = Region(pages: pages)
            r.base.copyMemory(from: base, byteCount: pages * 4096)
            return r
        }
        deinit { base.deallocate() }
        func u64(_ offset: Int) -> UInt64 { base.load(fromByteOffset: offset, as: UInt64.self) }
        func set(_ offset: Int, _ v: UInt64) { base.storeBytes(of: v, toByteOffset: offset, as: UInt64.self) }
    }

    struct Counters: BitwiseCopyable, Equatable {
        var boots: UInt64
        var requests: UInt64
        var blockOffsets: (UInt64, UInt64, UInt64)
        static func == (a: Counters, b: Counters) -> Bool {
            a.boots == b.boots && a.requests == b.requests && a.blockOffsets == b.blockOffsets
        }
    }

    struct SameSizeAsUInt64: BitwiseCopyable { var value: Int64 }

    @Test func aFreshRegionGetsAValidHeaderAndOneFreeBlock() throws {
        let r = Region(pages: 16)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        #expect(try RAMHeap.existingPages(at: r.base) == nil)
        let heap = try RAMHeap(base: r.base, pages: 16)
        #expect(!heap.restored)
        #expect(heap.byteCount == 16 * 4096)
        #expect(try RAMHeap.existingPages(at: r.base) == 16)
        #expect(r.u64(0) == RAMHeap.Header.magic)
        let stats = try heap.statistics()
        #expect(stats == RAMHeapStatistics(freeBytes: 15 * 4096, largestFreeBlock: 15 * 4096 - 16, freeBlocks: 1))
        #expect(heap.rootNames.isEmpty)
        // Opening the same memory again finds it.
        let again = try RAMHeap(base: r.base, pages: 16)
        #expect(again.restored)
    }

    @Test func aCopyAtAnotherAddressFindsItsRootsAndAllocations() throws {
        let r = Region(pages: 32)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 32)
        let counters = try heap.root(named: "counters", initialValue: Counters(boots: 1, requests: 0, blockOffsets: (0, 0, 0)))
        counters.pointee.requests = 42
        let blob = try heap.rootBytes(named: "blob", count: 1000)
        #expect(blob.allSatisfy { $0 == 0 }, "a new byte root is zero-filled")
        for i in 0..<1000 { blob[i] = UInt8(truncatingIfNeeded: i * 7) }
        var offsets: [Int] = []
        for (i, size) in [100, 5000, 64].enumerated() {
            let p = try heap.allocate(byteCount: size)
            p.initializeMemory(as: UInt8.self, repeating: UInt8(0xA0 + i), count: size)
            offsets.append(try #require(heap.offset(of: p)))
        }
        counters.pointee.blockOffsets = (UInt64(offsets[0]), UInt64(offsets[1]), UInt64(offsets[2]))
        try heap.deallocate(try #require(heap.pointer(at: offsets[1])))
        let statsBefore = try heap.statistics()

        let copy = r.copy()
        defer { withExtendedLifetime(copy) {} }
        #expect(copy.base != r.base)
        let restored = try RAMHeap(base: copy.base, pages: 32)
        #expect(restored.restored)
        var initialised = false
        let c = try restored.root(named: "counters", of: Counters.self) { _ in initialised = true }
        #expect(!initialised, "an existing root is not initialised again")
        #expect(c.pointee == Counters(boots: 1, requests: 42, blockOffsets: (UInt64(offsets[0]), UInt64(offsets[1]), UInt64(offsets[2]))))
        #expect(restored.offset(of: c) == heap.offset(of: counters))
        let b = try restored.rootBytes(named: "blob", count: 1000)
        #expect(b.elementsEqual((0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }))
        #expect(restored.rootNames == ["counters", "blob"])
        let first = try #require(restored.pointer(at: Int(c.pointee.blockOffsets.0)))
        #expect(UnsafeRawBufferPointer(start: first, count: 100).allSatisfy { $0 == 0xA0 })
        let third = try #require(restored.pointer(at: Int(c.pointee.blockOffsets.2)))
        #expect(UnsafeRawBufferPointer(start: third, count: 64).allSatisfy { $0 == 0xA2 })
        #expect(try restored.statistics() == statsBefore)
        // Both heaps are in the same state: the same request lands at the same offset, the freed block.
        let inOriginal = try heap.allocate(byteCount: 4000)
        let inCopy = try restored.allocate(byteCount: 4000)
        #expect(heap.offset(of: inOriginal) == restored.offset(of: inCopy))
        #expect(restored.offset(of: inCopy) == offsets[1])
        // Blocks allocated before the copy can be freed in the copy.
        try restored.deallocate(first)
        try restored.deallocate(third)
    }

    @Test func exhaustionIsAnErrorWithFiguresAndFreeingMakesRoomAgain() throws {
        let r = Region(pages: 4)  // 3 pages of blocks
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 4)
        var blocks: [UnsafeMutableRawPointer] = []
        while true {
            do {
                blocks.append(try heap.allocate(byteCount: 1000))  // 1008 + a 16-byte header: 1024 a block
            } catch let e as RAMHeapError {
                guard case let .outOfSpace(requested, alignment, freeBytes, largest) = e else {
                    Issue.record("unexpected \(e)")
                    break
                }
                #expect(requested == 1000 && alignment == 16 && freeBytes == 0 && largest == 0)
                #expect("\(e)".contains("no room for 1000 bytes"))
                break
            }
            #expect(blocks.count <= 12)
        }
        #expect(blocks.count == 12)
        try heap.deallocate(blocks[5])
        let again = try heap.allocate(byteCount: 1000)
        #expect(again == blocks[5])
        #expect(throws: RAMHeapError.self) { try heap.allocate(byteCount: 1) }
        // A request larger than the heap says so without walking off its end.
        let big = Region(pages: 4)
        defer { withExtendedLifetime(big) {} }  // the heap lives in it
        let empty = try RAMHeap(base: big.base, pages: 4)
        #expect(throws: RAMHeapError.outOfSpace(requested: 3 * 4096, alignment: 16, freeBytes: 3 * 4096, largestFreeBlock: 3 * 4096 - 16)) {
            try empty.allocate(byteCount: 3 * 4096)
        }
        #expect(throws: RAMHeapError.self) { try empty.allocate(byteCount: 1 << 40) }
        #expect(throws: RAMHeapError.self) { try empty.allocate(byteCount: 16, alignment: 24) }
        #expect(throws: RAMHeapError.self) { try empty.allocate(byteCount: 16, alignment: 8192) }
    }

    @Test func aHeaderThatIsThereButWrongIsRefused() throws {
        let r = Region(pages: 8)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        _ = try RAMHeap(base: r.base, pages: 8)

        // Another size than asked for.
        #expect(throws: RAMHeapError.sizeMismatch(found: 8, expected: 6)) { try RAMHeap(base: r.base, pages: 6) }

        // Another version.
        let v2 = r.copy()
        defer { withExtendedLifetime(v2) {} }
        v2.base.storeBytes(of: UInt32(2), toByteOffset: RAMHeap.Header.versionOffset, as: UInt32.self)
        #expect(throws: RAMHeapError.versionMismatch(found: 2, supported: 1)) { try RAMHeap(base: v2.base, pages: 8) }

        // A fixed field changed behind the checksum's back.
        let bent = r.copy()
        defer { withExtendedLifetime(bent) {} }
        bent.set(RAMHeap.Header.pagesOffset, 9)
        do {
            _ = try RAMHeap(base: bent.base, pages: 9)
            Issue.record("a header with a bad checksum was accepted")
        } catch let e as RAMHeapError {
            guard case .checksumMismatch = e else { Issue.record("unexpected \(e)"); return }
            #expect("\(e)".contains("damaged header"))
        }

        // Another geometry with a checksum that matches it: still refused.
        let odd = r.copy()
        defer { withExtendedLifetime(odd) {} }
        odd.base.storeBytes(of: UInt32(8192), toByteOffset: RAMHeap.Header.pageSizeOffset, as: UInt32.self)
        odd.set(RAMHeap.Header.checksumOffset, RAMHeap.checksum(odd.base))
        #expect(throws: RAMHeapError.self) { try RAMHeap(base: odd.base, pages: 8) }

        // A damaged free list is found when the heap is opened, not later.
        let broken = r.copy()
        defer { withExtendedLifetime(broken) {} }
        broken.set(RAMHeap.Header.freeHeadOffset, 4096 + 8)
        #expect(throws: RAMHeapError.corrupt(offset: 4096 + 8, reason: "a free-list link points outside the heap's blocks")) {
            try RAMHeap(base: broken.base, pages: 8)
        }
        let cycle = r.copy()
        defer { withExtendedLifetime(cycle) {} }
        cycle.set(4096 + 16, 4096)  // the only free block's link points at itself
        #expect(throws: RAMHeapError.self) { try RAMHeap(base: cycle.base, pages: 8) }
    }

    @Test func pagesThatAreNotPopulatedAreRefused() throws {
        let r = Region(pages: 8)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        #expect(throws: RAMHeapError.unpopulatedPage(page: 5, heapPages: 8)) {
            try RAMHeap(base: r.base, pages: 8) { $0 != 5 }
        }
        #expect(try RAMHeap.existingPages(at: r.base) == nil, "nothing was written")
        #expect(throws: RAMHeapError.tooSmall(pages: 1, minimum: 2)) { try RAMHeap(base: r.base, pages: 1) }
        #expect(throws: RAMHeapError.self) { try RAMHeap(base: r.base + 16, pages: 4) }
    }

    @Test func aRootAskedForAsAnotherTypeOrSizeIsAnError() throws {
        let r = Region(pages: 8)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 8)
        let n = try heap.root(named: "n", initialValue: UInt64(7))
        #expect(n.pointee == 7)
        #expect(try heap.root(named: "n", initialValue: UInt64(99)).pointee == 7)
        do {
            _ = try heap.root(named: "n", initialValue: UInt32(1))
            Issue.record("a UInt64 root was handed out as a UInt32")
        } catch let e as RAMHeapError {
            guard case let .rootMismatch(name, stored, requested) = e else { Issue.record("unexpected \(e)"); return }
            #expect(name == "n" && stored.contains("8 bytes") && requested.contains("Swift.UInt32 (4 bytes"))
        }
        // Same size and alignment, another type.
        #expect(throws: RAMHeapError.self) { try heap.root(named: "n", initialValue: SameSizeAsUInt64(value: 1)) }
        #expect(throws: RAMHeapError.self) { try heap.rootBytes(named: "n", count: 8) }
        _ = try heap.rootBytes(named: "bytes", count: 100)
        #expect(throws: RAMHeapError.self) { try heap.rootBytes(named: "bytes", count: 101) }
        #expect(throws: RAMHeapError.self) { try heap.rootBytes(named: "bytes", count: 100, alignment: 64) }
        #expect(throws: RAMHeapError.self) { try heap.root(named: "bytes", initialValue: UInt64(0)) }
        #expect(throws: RAMHeapError.self) { try heap.rootBytes(named: "", count: 1) }
        #expect(throws: RAMHeapError.self) { try heap.rootBytes(named: String(repeating: "x", count: 33), count: 1) }
        #expect(try heap.rootBytes(named: String(repeating: "x", count: 32), count: 1).count == 1)
        // The mismatch survives a restore: the stored description is all it takes.
        let copy = r.copy()
        defer { withExtendedLifetime(copy) {} }
        let restored = try RAMHeap(base: copy.base, pages: 8)
        #expect(try restored.root(named: "n", initialValue: UInt64(0)).pointee == 7)
        #expect(throws: RAMHeapError.self) { try restored.root(named: "n", initialValue: Int64(0)) }
    }

    @Test func rootsFillTheirTableAndAFailedInitializeLeavesNothing() throws {
        let r = Region(pages: 64)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 64)
        let free = try heap.statistics()
        struct Refused: Error {}
        #expect(throws: Refused.self) { try heap.root(named: "half", of: UInt64.self) { _ in throw Refused() } }
        #expect(!heap.hasRoot(named: "half"))
        #expect(try heap.statistics() == free, "the block of a root whose initialize threw is freed")
        // initialize may use the heap, roots included.
        let outer = try heap.root(named: "outer", of: UInt64.self) { p in
            p.pointee = UInt64(heap.offset(of: try heap.allocate(byteCount: 128))!)
            _ = try heap.root(named: "inner", initialValue: UInt32(5))
        }
        #expect(outer.pointee != 0 && heap.rootNames == ["inner", "outer"])
        for i in 2..<RAMHeap.rootCapacity { _ = try heap.root(named: "r\(i)", initialValue: UInt8(0)) }
        #expect(throws: RAMHeapError.rootTableFull(capacity: RAMHeap.rootCapacity, name: "one-too-many")) {
            try heap.root(named: "one-too-many", initialValue: UInt8(0))
        }
        #expect(heap.rootNames.count == RAMHeap.rootCapacity)
    }

    @Test func freedBlocksAreReusedAndMergeBackIntoOne() throws {
        let r = Region(pages: 16)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 16)
        let initial = try heap.statistics()
        let a = try heap.allocate(byteCount: 200), b = try heap.allocate(byteCount: 300), c = try heap.allocate(byteCount: 400)
        #expect(b > a && c > b)
        try heap.deallocate(b)
        #expect(try heap.allocate(byteCount: 300) == b, "first fit takes the hole")
        try heap.deallocate(b)
        #expect(try heap.allocate(byteCount: 100) == b, "a smaller request takes the front of the hole")
        // Double free and pointers that are not blocks are refused, with the offset.
        let interior = a + 16
        #expect(throws: RAMHeapError.notAllocated(offset: heap.offset(of: interior)!)) { try heap.deallocate(interior) }
        try heap.deallocate(a)
        #expect(throws: RAMHeapError.notAllocated(offset: heap.offset(of: a)!)) { try heap.deallocate(a) }
        #expect(throws: RAMHeapError.self) { try heap.deallocate(r.base) }
        try heap.deallocate(c)
        try heap.deallocate(b)
        #expect(try heap.statistics() == initial, "every neighbour merged")
        // Aligned blocks leave their gap free and give it back.
        let page = try heap.allocate(byteCount: 10, alignment: 4096)
        #expect(Int(bitPattern: page) % 4096 == 0)
        let line = try heap.allocate(byteCount: 10, alignment: 64)
        #expect(Int(bitPattern: line) % 64 == 0)
        try heap.deallocate(page)
        try heap.deallocate(line)
        #expect(try heap.statistics() == initial)
    }

    /// Random allocations and frees of random sizes and alignments: blocks never overlap (each
    /// holds its own pattern to the end), and freeing everything leaves the heap as it started.
    @Test(arguments: [1 as UInt64, 2, 3])
    func randomAllocationsNeverOverlap(seed: UInt64) throws {
        var rng = SplitMix64(state: seed)
        let r = Region(pages: 64)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 64)
        let initial = try heap.statistics()
        var live: [(p: UnsafeMutableRawPointer, size: Int, tag: UInt8)] = []
        for step in 0..<3000 {
            if live.isEmpty || (Int.random(in: 0..<10, using: &rng) < 6) {
                let size = Int.random(in: 0...3000, using: &rng)
                let alignment = 1 << Int.random(in: 0...12, using: &rng)
                guard let p = try? heap.allocate(byteCount: size, alignment: alignment) else { continue }
                #expect(Int(bitPattern: p) % alignment == 0)
                let tag = UInt8(truncatingIfNeeded: step)
                p.initializeMemory(as: UInt8.self, repeating: tag, count: size)
                live.append((p, size, tag))
            } else {
                let i = Int.random(in: 0..<live.count, using: &rng)
                let (p, size, tag) = live.remove(at: i)
                #expect(UnsafeRawBufferPointer(start: p, count: size).allSatisfy { $0 == tag }, "block overwritten (step \(step))")
                try heap.deallocate(p)
            }
        }
        for (p, size, tag) in live {
            #expect(UnsafeRawBufferPointer(start: p, count: size).allSatisfy { $0 == tag })
            try heap.deallocate(p)
        }
        #expect(try heap.statistics() == initial)
    }

    /// A save may capture RAM at any instant. Capture it before and after every publishing store
    /// of every kind of operation: each capture opens as a valid heap, and no free block in it
    /// overlaps a block that was allocated (and not being freed) when the operation began.
    @Test func aCaptureAtAnyPublishingStoreOpensAsAValidHeap() throws {
        let r = Region(pages: 16)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 16)
        var live: [UnsafeMutableRawPointer: Int] = [:]  // payload → size asked for
        var captures = 0
        /// `freeing`: a block being freed: while a capture still marks it allocated, its header must
        /// be as it was (else a restored owner freeing it again would free more than its block).
        func checkCaptures(protecting protected: [UnsafeMutableRawPointer: Int], freeing: UnsafeMutableRawPointer? = nil,
                           _ op: () throws -> Void) throws {
            var failures: [String] = []
            let starts = (Array(protected.keys) + (freeing.map { [$0] } ?? [])).map { heap.offset(of: $0)! - 16 }
            let sizes = Dictionary(uniqueKeysWithValues: starts.map { ($0, r.u64($0)) })
            heap.publishHook = {
                captures += 1
                let copy = r.copy()
                defer { withExtendedLifetime(copy) {} }
                do {
                    let h = try RAMHeap(base: copy.base, pages: 16)
                    for range in try h.freeBlockRanges() {
                        for (p, size) in protected {
                            let start = heap.offset(of: p)! - 16
                            if range.overlaps(start..<(start + 16 + size)) { failures.append("free \(range) overlaps live block at \(start)") }
                        }
                    }
                    for start in starts where copy.u64(start + 8) == RAMHeap.Block.allocatedTag ^ UInt64(start) {
                        if copy.u64(start) != sizes[start] { failures.append("allocated block at \(start) changed size to \(copy.u64(start))") }
                    }
                    for (p, _) in protected {
                        let start = heap.offset(of: p)! - 16
                        if copy.u64(start + 8) != RAMHeap.Block.allocatedTag ^ UInt64(start) { failures.append("live block at \(start) lost its tag") }
                    }
                } catch {
                    failures.append("\(error)")
                }
            }
            defer { heap.publishHook = nil }
            try op()
            #expect(failures.isEmpty, "\(failures)")
        }
        func alloc(_ size: Int, _ alignment: Int = 16) throws -> UnsafeMutableRawPointer {
            var p: UnsafeMutableRawPointer!
            try checkCaptures(protecting: live) { p = try heap.allocate(byteCount: size, alignment: alignment) }
            live[p] = size
            return p
        }
        func free(_ p: UnsafeMutableRawPointer) throws {
            live[p] = nil
            try checkCaptures(protecting: live, freeing: p) { try heap.deallocate(p) }
        }
        let a = try alloc(100), b = try alloc(100), c = try alloc(100), d = try alloc(100), e = try alloc(100)
        _ = try alloc(4000, 4096)  // a gap before it stays free
        try free(b)  // no free neighbour
        try free(d)  // no free neighbour
        try free(c)  // both neighbours free
        try free(a)  // the next one free
        let f = try alloc(40)  // from the front of the merged hole, with a tail
        try free(e)  // both neighbours free again
        try free(f)  // the next one free
        let x = try alloc(100), y = try alloc(100), z = try alloc(100)
        try free(x)  // no free neighbour
        try free(y)  // only the previous one free
        try free(z)  // both
        try checkCaptures(protecting: live) { _ = try heap.root(named: "root", initialValue: UInt64(3)) }
        #expect(captures > 20)
    }
}

/// The balloon's choice of pages to give back: from the top, never below the heap's floor.
@Suite struct BalloonFloorTests {
    @Test func pagesBelowTheFloorAreKept() {
        let populated: Set<UInt64> = Set(0..<100).subtracting([90, 91])
        let all = Balloon.pagesToGive(30, spanPages: 128, floor: 0) { populated.contains($0.rawValue) }
        let expected: [UInt64] = Array((58..<100).reversed().filter { $0 != 90 && $0 != 91 }.prefix(30))
        #expect(expected.count == 30 && expected.last == 68)
        #expect(all.map(\.rawValue) == expected)
        let floored = Balloon.pagesToGive(1000, spanPages: 128, floor: 50) { populated.contains($0.rawValue) }
        #expect(floored.count == 48 && floored.allSatisfy { $0.rawValue >= 50 })
        #expect(Balloon.pagesToGive(10, spanPages: 128, floor: 128) { _ in true }.isEmpty)
    }
}

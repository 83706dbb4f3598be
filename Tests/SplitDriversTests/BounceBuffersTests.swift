import Glibc
@testable import SplitDrivers
import Testing

/// blkback's staging memory for large requests: runs of granules, back to back for the
/// requests of one sequential transfer, never two requests on the same bytes.
@Suite struct BounceBuffersTests {
    @Test func runsAreDisjointBackToBackAndComeBack() throws {
        let b = try #require(BounceBuffers(bytes: 1 << 20, granule: 64 << 10))
        #expect(Int(bitPattern: b.base) % BounceBuffers.hugePage == 0, "not 2 MiB aligned: huge pages cannot back it")
        // Eight 128 KiB requests of a 1 MiB transfer: consecutive, so the disk sees one stretch.
        var runs: [BounceBuffers.Run] = []
        for _ in 0..<8 { runs.append(try #require(b.take(128 << 10))) }
        for (a, c) in zip(runs, runs.dropFirst()) { #expect(b.address(c) == b.address(a) + (128 << 10)) }
        // Full: nothing more, not even one granule.
        #expect(b.take(1) == nil)
        // Every byte is usable and distinct per run.
        for (i, r) in runs.enumerated() { memset(b.address(r), Int32(i + 1), 128 << 10) }
        for (i, r) in runs.enumerated() {
            let p = b.address(r).assumingMemoryBound(to: UInt8.self)
            #expect(p[0] == UInt8(i + 1) && p[(128 << 10) - 1] == UInt8(i + 1))
        }
        // A hole in the middle: a request that fits takes it, a larger one does not.
        b.give(runs[3])
        #expect(b.take(192 << 10) == nil)
        let again = try #require(b.take(100 << 10))  // rounded up to two granules
        #expect(b.address(again) == b.address(runs[3]))
        b.give(again)
        for r in runs where r.first != runs[3].first { b.give(r) }
        // All back: one run can span the whole region again.
        let whole = try #require(b.take(1 << 20))
        #expect(whole.count == 16)
    }

    @Test func oversizedRequestsAreRefused() throws {
        let b = try #require(BounceBuffers(bytes: 256 << 10, granule: 64 << 10))
        #expect(b.take((256 << 10) + 1) == nil)
        #expect(b.take(256 << 10) != nil)
    }
}

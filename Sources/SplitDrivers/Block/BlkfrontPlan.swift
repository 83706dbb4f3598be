import ProcvisorABI

/// Splits transfers into ring requests.
public enum BlkfrontPlan {
    /// The most sectors one direct request carries (11 pages of 8).
    public static let maxSectorsPerRequest = Blkif.maxSegmentsPerRequest * Blkif.sectorsPerPage

    /// Sectors per full request, and the first request's share (shorter when `sector` is not
    /// on a page boundary).
    private static func split(sector: UInt64, count: Int, maxSegments: Int) -> (per: Int, first: Int) {
        let per = maxSegments * Blkif.sectorsPerPage
        return (per, min(count, per - Int(sector % UInt64(Blkif.sectorsPerPage))))
    }

    /// How many ring requests `count` sectors from `sector` take (see `chunk`).
    public static func chunkCount(sector: UInt64, count: Int, maxSegments: Int = Blkif.maxSegmentsPerRequest) -> Int {
        let (per, first) = split(sector: sector, count: count, maxSegments: maxSegments)
        return 1 + (count - first + per - 1) / per
    }

    /// Ring request `k` of `count` sectors from `sector`: the first of an unaligned transfer
    /// carries up to `8 * maxSegments - S % 8` sectors; the next ones start on a page boundary
    /// and carry up to `8 * maxSegments`.
    public static func chunk(_ k: Int, sector: UInt64, count: Int, maxSegments: Int = Blkif.maxSegmentsPerRequest) -> BlkfrontChunk {
        let (per, first) = split(sector: sector, count: count, maxSegments: maxSegments)
        let done = k == 0 ? 0 : first + (k - 1) * per
        return BlkfrontChunk(sectorNumber: sector + UInt64(done), sectorCount: min(count - done, k == 0 ? first : per),
                             bufferOffset: done * Blkif.sectorSize)
    }

    /// Every ring request of a transfer (`chunk` for each of `chunkCount`).
    public static func chunks(sector: UInt64, count: Int, maxSegments: Int = Blkif.maxSegmentsPerRequest) -> [BlkfrontChunk] {
        precondition(count > 0, "a transfer of \(count) sectors")
        precondition((1...Blkif.maxIndirectSegments).contains(maxSegments), "maxSegments \(maxSegments)")
        return (0..<chunkCount(sector: sector, count: count, maxSegments: maxSegments)).map {
            chunk($0, sector: sector, count: count, maxSegments: maxSegments)
        }
    }
}

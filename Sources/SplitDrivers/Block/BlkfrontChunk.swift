import ProcvisorABI

/// One segment of a planned ring request: page `page` of the slot's data pages, sectors
/// `firstSect...lastSect` of it.
public struct BlkfrontSegmentPlan: Equatable, Sendable {
    public var page: Int
    public var firstSect: UInt8
    public var lastSect: UInt8

    public init(page: Int, firstSect: UInt8, lastSect: UInt8) {
        self.page = page
        self.firstSect = firstSect
        self.lastSect = lastSect
    }

    public var sectorCount: Int { Int(lastSect) - Int(firstSect) + 1 }
    public var byteOffset: Int { Int(firstSect) * Blkif.sectorSize }
    public var byteCount: Int { sectorCount * Blkif.sectorSize }
}

/// One ring request's share of a transfer. Its segments follow from where it starts: disk
/// sector S sits at sector S % 8 of its page, so the first segment starts there and every other
/// one at 0, and every segment but the last ends at sector 7.
public struct BlkfrontChunk: Equatable, Sendable {
    /// The first disk sector (512-byte units).
    public var sectorNumber: UInt64
    public var sectorCount: Int
    /// Where this chunk's bytes start in the caller's buffer.
    public var bufferOffset: Int

    public init(sectorNumber: UInt64, sectorCount: Int, bufferOffset: Int) {
        self.sectorNumber = sectorNumber
        self.sectorCount = sectorCount
        self.bufferOffset = bufferOffset
    }

    /// The sector offset of the first segment in its page.
    private var lead: Int { Int(sectorNumber % UInt64(Blkif.sectorsPerPage)) }

    /// Pages the chunk spans: one segment each.
    public var segmentCount: Int { (lead + sectorCount + Blkif.sectorsPerPage - 1) / Blkif.sectorsPerPage }

    /// Segment `i` (page `i` of the slot's data pages); computed, nothing allocated.
    public func segment(_ i: Int) -> BlkfrontSegmentPlan {
        let perPage = Blkif.sectorsPerPage
        let first = i == 0 ? lead : 0
        let before = i == 0 ? 0 : perPage * i - lead  // this chunk's sectors in the pages before
        let last = min(perPage - 1, first + (sectorCount - before) - 1)
        return BlkfrontSegmentPlan(page: i, firstSect: UInt8(first), lastSect: UInt8(last))
    }

    /// In disk order, one per page, page indexes 0, 1, 2 …
    public var segments: [BlkfrontSegmentPlan] { (0..<segmentCount).map(segment) }

    /// Segment `i` on the wire, `gref` being the grant of the slot's page `i`.
    public func segment(_ i: Int, gref: GrantRef) -> BlkifSegment {
        let s = segment(i)
        return BlkifSegment(gref: gref, firstSect: s.firstSect, lastSect: s.lastSect)
    }

    /// The ring request for this chunk: `grefs[i]` is the grant of the slot's page `i`.
    public func request(operation: BlkifOp, id: UInt64, handle: UInt16, grefs: [GrantRef]) -> BlkifRequest {
        .readWrite(.init(operation: operation, handle: handle, id: id, sectorNumber: sectorNumber,
                         segments: (0..<segmentCount).map { segment($0, gref: grefs[$0]) }))
    }
}

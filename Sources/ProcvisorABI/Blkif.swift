/// The block split driver's wire format, byte for byte `xen/io/blkif.h` on x86_64: the request and
/// response structs that travel on the blkif ring, the operations and statuses with Xen's numbers,
/// and the decoding a backend does on what a frontend put on its ring (which it must not trust).
///
/// Every size and offset below was checked against the C header with `offsetof`/`sizeof`
/// (see Tests/LinuxHostTests/BlkifTests.swift).

/// `BLKIF_OP_*`: what a request asks for.
public enum BlkifOp: UInt8, CaseIterable, Sendable {
    case read = 0
    case write = 1
    /// Writes issued before it complete before it; writes after it wait for it (`feature-barrier`).
    case writeBarrier = 2
    /// Commit the backing device's volatile cache to stable storage (`feature-flush-cache`).
    case flushDiskcache = 3
    /// Reserved in SLES for device specific command packets; never served.
    case reserved1 = 4
    /// `blkif_request_discard` (`feature-discard`).
    case discard = 5
    /// `blkif_request_indirect`: the segments are in granted pages (`feature-max-indirect-segments`).
    case indirect = 6

    /// Xen's name (`BLKIF_OP_READ` …), for logs and error messages.
    public var xenName: String {
        switch self {
        case .read: return "BLKIF_OP_READ"
        case .write: return "BLKIF_OP_WRITE"
        case .writeBarrier: return "BLKIF_OP_WRITE_BARRIER"
        case .flushDiskcache: return "BLKIF_OP_FLUSH_DISKCACHE"
        case .reserved1: return "BLKIF_OP_RESERVED_1"
        case .discard: return "BLKIF_OP_DISCARD"
        case .indirect: return "BLKIF_OP_INDIRECT"
        }
    }
}

/// `BLKIF_RSP_*`: a response's `status`.
public enum BlkifStatus: Int16, CaseIterable, Sendable {
    case okay = 0
    /// The operation failed (-EIO), or the request was malformed.
    case error = -1
    /// The operation is not supported (an unknown or unadvertised operation).
    case eopnotsupp = -2

    /// Xen's name (`BLKIF_RSP_OKAY` …).
    public var xenName: String {
        switch self {
        case .okay: return "BLKIF_RSP_OKAY"
        case .error: return "BLKIF_RSP_ERROR"
        case .eopnotsupp: return "BLKIF_RSP_EOPNOTSUPP"
        }
    }
}

/// The protocol's constants.
public enum Blkif {
    /// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments carried in a ring slot.
    public static let maxSegmentsPerRequest = 11
    /// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
    public static let maxIndirectPagesPerRequest = 8
    /// `PAGE_SIZE / sizeof(struct blkif_request_segment)`: segments in one indirect page.
    public static let segmentsPerIndirectPage = 4096 / BlkifSegment.Layout.size
    /// The most segments an indirect request can describe at all (8 pages of 512).
    public static let maxIndirectSegments = maxIndirectPagesPerRequest * segmentsPerIndirectPage
    /// `BLKIF_DISCARD_SECURE`: the discard flag asking for the data to be unrecoverable.
    public static let discardSecure: UInt8 = 1 << 0
    /// The unit of `sector_number`, `first_sect`, `last_sect` and `nr_sectors` (the protocol's
    /// 512, whatever the backend's `sector-size`, as long as `feature-large-sector-size` is unused).
    public static let sectorSize = 512
    /// Sectors in a 4 KiB page: `last_sect` is at most `sectorsPerPage - 1`.
    public static let sectorsPerPage = 4096 / sectorSize
    /// The largest sector count from sector 0 whose byte offset still fits an `off_t`.
    public static let maxSectors = UInt64(Int64.max) / UInt64(sectorSize)

    /// `VDISK_*`: the bits of the backend's `info` node.
    public static let vdiskCDROM: UInt32 = 0x1
    public static let vdiskRemovable: UInt32 = 0x2
    public static let vdiskReadOnly: UInt32 = 0x4
}

/// The blkif ring (`DEFINE_RING_TYPES(blkif, struct blkif_request, struct blkif_response)`):
/// a 64-byte header then slots of `max(112, 16)` bytes, a power of two of them.
public enum BlkifRing {
    /// `struct blkif_sring` up to `ring[]`: the four indexes and their padding.
    public static let headerSize = 64
    /// `sizeof(union blkif_sring_entry)`.
    public static let slotSize = max(BlkifRequest.Layout.size, BlkifResponse.Layout.size)
    /// The largest `ring-page-order` Linux's blkfront and blkback use (`XENBUS_MAX_RING_GRANT_ORDER`).
    public static let maxRingPageOrder = 4

    /// `__RING_SIZE` of a ring spanning `pages` 4 KiB pages: the slots that fit after the header,
    /// rounded down to a power of two (32 for one page, 64 for two, 512 for sixteen).
    public static func slots(pages: Int) -> Int {
        precondition(pages >= 1, "a blkif ring has at least one page")
        let fit = (pages * 4096 - headerSize) / slotSize
        var n = 1
        while n * 2 <= fit { n *= 2 }
        return n
    }

    /// The slots of a ring of `1 << order` pages (`ring-page-order`).
    public static func slots(ringPageOrder order: Int) -> Int {
        precondition((0...maxRingPageOrder).contains(order), "ring-page-order \(order) is over \(maxRingPageOrder)")
        return slots(pages: 1 << order)
    }
}

/// `struct blkif_request_segment`: a granted page and the sectors of it to transfer.
public struct BlkifSegment: Equatable, Hashable, Sendable {
    /// `gref` @0 (u32), `first_sect` @4, `last_sect` @5 (u8), 2 bytes of padding: 8 bytes.
    public enum Layout {
        public static let size = 8
        public static let gref = 0
        public static let firstSect = 4
        public static let lastSect = 5
    }

    /// The grant of the I/O buffer frame.
    public var gref: GrantRef
    /// The first sector of the frame to transfer (inclusive, 0...7).
    public var firstSect: UInt8
    /// The last sector of the frame to transfer (inclusive, firstSect...7).
    public var lastSect: UInt8

    /// A segment of `gref` from `firstSect` through `lastSect`; the whole page by default.
    public init(gref: GrantRef, firstSect: UInt8 = 0, lastSect: UInt8 = UInt8(Blkif.sectorsPerPage - 1)) {
        self.gref = gref
        self.firstSect = firstSect
        self.lastSect = lastSect
    }

    /// Sectors transferred (valid segments only).
    public var sectorCount: Int { Int(lastSect) - Int(firstSect) + 1 }
    /// Where in the page the data starts.
    public var byteOffset: Int { Int(firstSect) * Blkif.sectorSize }
    /// Bytes transferred (valid segments only).
    public var byteCount: Int { sectorCount * Blkif.sectorSize }

    /// Why the segment is not a valid range of a 4 KiB page, or nil. `name` is how the message
    /// calls it (`seg[3]`); built only for a bad segment.
    func problem(_ name: @autoclosure () -> String) -> (field: String, value: UInt64, reason: String)? {
        if lastSect >= Blkif.sectorsPerPage {
            return ("\(name()).last_sect", UInt64(lastSect), "is beyond the page (at most \(Blkif.sectorsPerPage - 1))")
        }
        if firstSect > lastSect {
            return ("\(name()).first_sect", UInt64(firstSect), "is after last_sect \(lastSect)")
        }
        return nil
    }

    /// Reads the 8 bytes once (the frontend may be changing them) and splits them.
    static func load(_ p: UnsafeRawPointer) -> BlkifSegment {
        let word = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        return BlkifSegment(gref: GrantRef(UInt32(truncatingIfNeeded: word)),
                            firstSect: UInt8(truncatingIfNeeded: word >> 32),
                            lastSect: UInt8(truncatingIfNeeded: word >> 40))
    }

    func store(_ p: UnsafeMutableRawPointer) {
        let word = UInt64(gref.rawValue) | UInt64(firstSect) << 32 | UInt64(lastSect) << 40
        p.storeBytes(of: word.littleEndian, as: UInt64.self)
    }
}

/// A request taken off (or put on) a blkif ring slot: `struct blkif_request` and the two structs
/// a slot is cast to when `operation` says so.
public enum BlkifRequest: Equatable, Sendable {
    /// `BLKIF_OP_READ`, `WRITE`, `WRITE_BARRIER` or `FLUSH_DISKCACHE` with its segments in the slot.
    case readWrite(ReadWrite)
    /// `BLKIF_OP_DISCARD`.
    case discard(Discard)
    /// `BLKIF_OP_INDIRECT`: a read or write whose segments are in granted pages.
    case indirect(Indirect)

    /// `struct blkif_request` (x86_64): `operation` @0, `nr_segments` @1, `handle` @2 (u16),
    /// 4 bytes of padding, `id` @8, `sector_number` @16, `seg[11]` @24: 112 bytes.
    public enum Layout {
        public static let size = 112
        public static let operation = 0
        public static let nrSegments = 1
        public static let handle = 2
        public static let id = 8
        public static let sectorNumber = 16
        public static let seg = 24
    }

    /// `struct blkif_request_discard`: `operation` @0, `flag` @1, `handle` @2, `id` @8,
    /// `sector_number` @16, `nr_sectors` @24: 32 bytes.
    public enum DiscardLayout {
        public static let size = 32
        public static let operation = 0
        public static let flag = 1
        public static let handle = 2
        public static let id = 8
        public static let sectorNumber = 16
        public static let nrSectors = 24
    }

    /// `struct blkif_request_indirect` (x86_64): `operation` @0, `indirect_op` @1,
    /// `nr_segments` @2 (u16), `id` @8, `sector_number` @16, `handle` @24 (u16), 2 bytes of
    /// padding, `indirect_grefs[8]` @28, 4 bytes of tail padding: 64 bytes.
    public enum IndirectLayout {
        public static let size = 64
        public static let operation = 0
        public static let indirectOp = 1
        public static let nrSegments = 2
        public static let id = 8
        public static let sectorNumber = 16
        public static let handle = 24
        public static let indirectGrefs = 28
    }

    /// A request whose segments are in the slot.
    public struct ReadWrite: Equatable, Sendable {
        /// `.read`, `.write`, `.writeBarrier` or `.flushDiskcache`.
        public var operation: BlkifOp
        /// The virtual device (`blkif_vdev_t`).
        public var handle: UInt16
        /// The frontend's value, echoed in the response.
        public var id: UInt64
        /// The first sector on the disk.
        public var sectorNumber: UInt64
        /// Up to `Blkif.maxSegmentsPerRequest`; at least one for reads and writes, possibly none
        /// for a flush or barrier (which then only flushes).
        public var segments: [BlkifSegment]

        public init(operation: BlkifOp, handle: UInt16 = 0, id: UInt64, sectorNumber: UInt64, segments: [BlkifSegment]) {
            self.operation = operation
            self.handle = handle
            self.id = id
            self.sectorNumber = sectorNumber
            self.segments = segments
        }

        /// Sectors the segments transfer, in order, starting at `sectorNumber`.
        public var sectorCount: Int { segments.reduce(0) { $0 + $1.sectorCount } }
    }

    /// `struct blkif_request_discard`.
    public struct Discard: Equatable, Sendable {
        /// `BLKIF_DISCARD_SECURE` or zero.
        public var flag: UInt8
        public var handle: UInt16
        public var id: UInt64
        public var sectorNumber: UInt64
        /// Contiguous sectors to discard, at least one.
        public var nrSectors: UInt64

        public init(secure: Bool = false, handle: UInt16 = 0, id: UInt64, sectorNumber: UInt64, nrSectors: UInt64) {
            flag = secure ? Blkif.discardSecure : 0
            self.handle = handle
            self.id = id
            self.sectorNumber = sectorNumber
            self.nrSectors = nrSectors
        }

        /// The frontend asked for `BLKIF_DISCARD_SECURE`.
        public var isSecure: Bool { flag & Blkif.discardSecure != 0 }
    }

    /// `struct blkif_request_indirect`.
    public struct Indirect: Equatable, Sendable {
        /// `.read` or `.write`.
        public var indirectOp: BlkifOp
        /// Segments in the indirect pages (at most the backend's `feature-max-indirect-segments`).
        public var nrSegments: UInt16
        public var id: UInt64
        public var sectorNumber: UInt64
        public var handle: UInt16
        /// The grants of the pages holding the segments: exactly `pageCount` of them (the other
        /// entries of the slot's `indirect_grefs[8]` are not looked at).
        public var indirectGrefs: [GrantRef]

        public init(indirectOp: BlkifOp, nrSegments: UInt16, handle: UInt16 = 0, id: UInt64, sectorNumber: UInt64,
                    indirectGrefs: [GrantRef]) {
            self.indirectOp = indirectOp
            self.nrSegments = nrSegments
            self.id = id
            self.sectorNumber = sectorNumber
            self.handle = handle
            self.indirectGrefs = indirectGrefs
        }

        /// Indirect pages `nrSegments` segments need: ceil(nrSegments / 512).
        public static func pageCount(segments: Int) -> Int {
            (segments + Blkif.segmentsPerIndirectPage - 1) / Blkif.segmentsPerIndirectPage
        }

        /// Indirect pages this request uses.
        public var pageCount: Int { Self.pageCount(segments: Int(nrSegments)) }

        /// Reads and checks the segments from the indirect pages, `pages[i]` mapping
        /// `indirectGrefs[i]`. Each segment is read once: the frontend may be writing the pages.
        /// Throws when a segment is not a valid range of its page, or when the sectors run past
        /// any possible disk.
        public func segments(pages: [UnsafeRawPointer]) throws -> [BlkifSegment] {
            precondition(pages.count >= pageCount, "\(pageCount) indirect pages needed, \(pages.count) given")
            var segments: [BlkifSegment] = []
            segments.reserveCapacity(Int(nrSegments))
            var sectors: UInt64 = 0
            for i in 0..<Int(nrSegments) {
                let page = pages[i / Blkif.segmentsPerIndirectPage]
                let s = BlkifSegment.load(page + (i % Blkif.segmentsPerIndirectPage) * BlkifSegment.Layout.size)
                if let p = s.problem("indirect seg[\(i)]") {
                    throw BlkifRequestError(id: id, operation: indirectOp.rawValue, status: .error,
                                            field: p.field, value: p.value, reason: p.reason)
                }
                sectors += UInt64(s.sectorCount)
                segments.append(s)
            }
            try BlkifRequest.checkRange(id: id, operation: indirectOp.rawValue, sectorNumber: sectorNumber, sectors: sectors)
            return segments
        }

        /// Writes `segments` into the indirect pages a frontend will grant (`pages[i]` for
        /// `indirectGrefs[i]`), 512 per page.
        public static func store(_ segments: [BlkifSegment], to pages: [UnsafeMutableRawPointer]) {
            precondition(pages.count >= pageCount(segments: segments.count), "too few indirect pages")
            for (i, s) in segments.enumerated() {
                s.store(pages[i / Blkif.segmentsPerIndirectPage] + (i % Blkif.segmentsPerIndirectPage) * BlkifSegment.Layout.size)
            }
        }
    }

    /// The frontend's `id`, echoed in the response.
    public var id: UInt64 {
        switch self {
        case let .readWrite(r): return r.id
        case let .discard(d): return d.id
        case let .indirect(i): return i.id
        }
    }

    /// The slot's `operation`.
    public var operation: BlkifOp {
        switch self {
        case let .readWrite(r): return r.operation
        case .discard: return .discard
        case .indirect: return .indirect
        }
    }

    // MARK: encoding

    /// Writes the request into a ring slot: all `Layout.size` bytes, padding and unused
    /// segments zeroed.
    public func encode(to slot: UnsafeMutableRawPointer) {
        slot.initializeMemory(as: UInt8.self, repeating: 0, count: Layout.size)
        func u8(_ offset: Int, _ v: UInt8) { slot.storeBytes(of: v, toByteOffset: offset, as: UInt8.self) }
        func u16(_ offset: Int, _ v: UInt16) { slot.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt16.self) }
        func u32(_ offset: Int, _ v: UInt32) { slot.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self) }
        func u64(_ offset: Int, _ v: UInt64) { slot.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self) }
        switch self {
        case let .readWrite(r):
            Self.encodeReadWrite(to: slot, operation: r.operation, handle: r.handle, id: r.id, sectorNumber: r.sectorNumber,
                                 segmentCount: r.segments.count) { r.segments[$0] }
        case let .discard(d):
            u8(DiscardLayout.operation, BlkifOp.discard.rawValue)
            u8(DiscardLayout.flag, d.flag)
            u16(DiscardLayout.handle, d.handle)
            u64(DiscardLayout.id, d.id)
            u64(DiscardLayout.sectorNumber, d.sectorNumber)
            u64(DiscardLayout.nrSectors, d.nrSectors)
        case let .indirect(i):
            precondition(i.indirectGrefs.count <= Blkif.maxIndirectPagesPerRequest,
                         "\(i.indirectGrefs.count) indirect pages; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST is 8")
            u8(IndirectLayout.operation, BlkifOp.indirect.rawValue)
            u8(IndirectLayout.indirectOp, i.indirectOp.rawValue)
            u16(IndirectLayout.nrSegments, i.nrSegments)
            u64(IndirectLayout.id, i.id)
            u64(IndirectLayout.sectorNumber, i.sectorNumber)
            u16(IndirectLayout.handle, i.handle)
            for (n, g) in i.indirectGrefs.enumerated() { u32(IndirectLayout.indirectGrefs + 4 * n, g.rawValue) }
        }
    }

    /// Writes a read/write request into a ring slot as `encode` does, its segments given by
    /// `segment(0..<segmentCount)`: no array of them is built (the data path's per-request form).
    public static func encodeReadWrite(to slot: UnsafeMutableRawPointer, operation: BlkifOp, handle: UInt16, id: UInt64,
                                       sectorNumber: UInt64, segmentCount: Int, _ segment: (Int) -> BlkifSegment) {
        precondition(segmentCount <= Blkif.maxSegmentsPerRequest,
                     "\(segmentCount) segments do not fit a slot; use an indirect request")
        slot.initializeMemory(as: UInt8.self, repeating: 0, count: Layout.size)
        slot.storeBytes(of: operation.rawValue, toByteOffset: Layout.operation, as: UInt8.self)
        slot.storeBytes(of: UInt8(segmentCount), toByteOffset: Layout.nrSegments, as: UInt8.self)
        slot.storeBytes(of: handle.littleEndian, toByteOffset: Layout.handle, as: UInt16.self)
        slot.storeBytes(of: id.littleEndian, toByteOffset: Layout.id, as: UInt64.self)
        slot.storeBytes(of: sectorNumber.littleEndian, toByteOffset: Layout.sectorNumber, as: UInt64.self)
        for i in 0..<segmentCount { segment(i).store(slot + Layout.seg + i * BlkifSegment.Layout.size) }
    }

    /// The slot's 112 bytes.
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Layout.size) { buffer, count in
            encode(to: UnsafeMutableRawPointer(buffer.baseAddress!))
            count = Layout.size
        }
    }

    // MARK: decoding

    /// Decodes and checks the request in a ring slot the frontend wrote. The slot is copied
    /// first, so each field is read once however the frontend changes it meanwhile.
    /// `maxIndirectSegments` is what the backend advertised in `feature-max-indirect-segments`
    /// (0 when it did not: `BLKIF_OP_INDIRECT` is then unsupported).
    /// Throws `BlkifRequestError`, which says what to answer.
    public static func decode(slot: UnsafeRawPointer, maxIndirectSegments: Int) throws -> BlkifRequest {
        try withUnsafeTemporaryAllocation(byteCount: Layout.size, alignment: 8) { copy in
            copy.copyMemory(from: UnsafeRawBufferPointer(start: slot, count: Layout.size))
            return try parse(UnsafeRawBufferPointer(copy), maxIndirectSegments: maxIndirectSegments)
        }
    }

    /// Decodes and checks a request from bytes: a whole slot, or at least the struct its
    /// `operation` names (112, 32 or 64 bytes).
    public static func decode(_ bytes: [UInt8], maxIndirectSegments: Int) throws -> BlkifRequest {
        try bytes.withUnsafeBytes { try parse($0, maxIndirectSegments: maxIndirectSegments) }
    }

    static func parse(_ b: UnsafeRawBufferPointer, maxIndirectSegments: Int) throws -> BlkifRequest {
        precondition((0...Blkif.maxIndirectSegments).contains(maxIndirectSegments),
                     "maxIndirectSegments \(maxIndirectSegments) is beyond what 8 indirect pages hold")
        func u8(_ o: Int) -> UInt8 { b[o] }
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }

        // Every variant has `operation` at 0 and `id` at 8.
        guard b.count >= Layout.id + 8 else {
            throw BlkifRequestError(id: 0, operation: b.first ?? 0, status: .error, field: "length",
                                    value: UInt64(b.count), reason: "is too short for a blkif request (at least 16 bytes)")
        }
        let rawOp = u8(Layout.operation)
        let id = u64(Layout.id)
        func fail(_ field: String, _ value: UInt64, _ reason: String, operation: UInt8 = rawOp,
                  status: BlkifStatus = .error) -> BlkifRequestError {
            BlkifRequestError(id: id, operation: operation, status: status, field: field, value: value, reason: reason)
        }
        guard let op = BlkifOp(rawValue: rawOp) else {
            throw fail("operation", UInt64(rawOp), "is not a blkif operation", status: .eopnotsupp)
        }
        func need(_ size: Int) throws {
            if b.count < size {
                throw fail("length", UInt64(b.count), "is too short for a \(op.xenName) request (\(size) bytes)")
            }
        }

        switch op {
        case .read, .write, .writeBarrier, .flushDiskcache:
            try need(Layout.size)
            let nr = u8(Layout.nrSegments)
            if nr > Blkif.maxSegmentsPerRequest {
                throw fail("nr_segments", UInt64(nr), "exceeds BLKIF_MAX_SEGMENTS_PER_REQUEST (\(Blkif.maxSegmentsPerRequest))")
            }
            // As Linux's blkback: only a flush (or barrier) may carry no data.
            if nr == 0 && (op == .read || op == .write) {
                throw fail("nr_segments", 0, "leaves \(op.xenName) with nothing to transfer (at least 1 segment)")
            }
            var segments: [BlkifSegment] = []
            segments.reserveCapacity(Int(nr))
            var sectors: UInt64 = 0
            for i in 0..<Int(nr) {
                let s = BlkifSegment.load(b.baseAddress! + Layout.seg + i * BlkifSegment.Layout.size)
                if let p = s.problem("seg[\(i)]") { throw fail(p.field, p.value, p.reason) }
                sectors += UInt64(s.sectorCount)
                segments.append(s)
            }
            let sector = u64(Layout.sectorNumber)
            try checkRange(id: id, operation: rawOp, sectorNumber: sector, sectors: sectors)
            return .readWrite(ReadWrite(operation: op, handle: u16(Layout.handle), id: id, sectorNumber: sector,
                                        segments: segments))

        case .discard:
            try need(DiscardLayout.size)
            let flag = u8(DiscardLayout.flag)
            if flag & ~Blkif.discardSecure != 0 {
                throw fail("flag", UInt64(flag), "has bits other than BLKIF_DISCARD_SECURE (\(Blkif.discardSecure))")
            }
            let nrSectors = u64(DiscardLayout.nrSectors)
            if nrSectors == 0 { throw fail("nr_sectors", 0, "leaves the discard with nothing to discard (at least 1)") }
            let sector = u64(DiscardLayout.sectorNumber)
            try checkRange(id: id, operation: rawOp, sectorNumber: sector, sectors: nrSectors)
            var d = Discard(handle: u16(DiscardLayout.handle), id: id, sectorNumber: sector, nrSectors: nrSectors)
            d.flag = flag
            return .discard(d)

        case .indirect:
            try need(IndirectLayout.size)
            let rawInner = u8(IndirectLayout.indirectOp)
            // The response of a failed indirect request carries the inner operation, as blkback's.
            guard rawInner == BlkifOp.read.rawValue || rawInner == BlkifOp.write.rawValue else {
                throw fail("indirect_op", UInt64(rawInner), "must be BLKIF_OP_READ (0) or BLKIF_OP_WRITE (1)",
                           operation: rawInner)
            }
            if maxIndirectSegments == 0 {
                throw fail("operation", UInt64(rawOp), "BLKIF_OP_INDIRECT is not offered (no feature-max-indirect-segments)",
                           operation: rawInner, status: .eopnotsupp)
            }
            let nr = u16(IndirectLayout.nrSegments)
            if nr == 0 {
                throw fail("nr_segments", 0, "leaves the indirect request with nothing to transfer (at least 1 segment)",
                           operation: rawInner)
            }
            if nr > maxIndirectSegments {
                throw fail("nr_segments", UInt64(nr), "exceeds feature-max-indirect-segments (\(maxIndirectSegments))",
                           operation: rawInner)
            }
            let sector = u64(IndirectLayout.sectorNumber)
            // The segments are in the indirect pages; this is the most they can add up to.
            try checkRange(id: id, operation: rawInner, sectorNumber: sector, sectors: 0)
            let pages = Indirect.pageCount(segments: Int(nr))
            let grefs = (0..<pages).map { GrantRef(u32(IndirectLayout.indirectGrefs + 4 * $0)) }
            return .indirect(Indirect(indirectOp: BlkifOp(rawValue: rawInner)!, nrSegments: nr, handle: u16(IndirectLayout.handle),
                                      id: id, sectorNumber: sector, indirectGrefs: grefs))

        case .reserved1:
            throw fail("operation", UInt64(rawOp), "(BLKIF_OP_RESERVED_1) is not supported", status: .eopnotsupp)
        }
    }

    /// Refuses `sector_number + sectors` past the largest byte offset a file can have (and so
    /// past the end of any disk; the backend still compares with its own disk's size).
    static func checkRange(id: UInt64, operation: UInt8, sectorNumber: UInt64, sectors: UInt64) throws {
        if sectorNumber > Blkif.maxSectors || sectors > Blkif.maxSectors - sectorNumber {
            throw BlkifRequestError(id: id, operation: operation, status: .error, field: "sector_number",
                                    value: sectorNumber, reason: "plus \(sectors) sectors is past the end of any disk")
        }
    }
}

/// A request the backend must refuse, with what it answers: `BLKIF_RSP_ERROR` for a malformed
/// request, `BLKIF_RSP_EOPNOTSUPP` for an operation it does not serve (as Linux's blkback).
public struct BlkifRequestError: Error, Equatable, CustomStringConvertible {
    /// The request's `id`, to echo in the response.
    public var id: UInt64
    /// The operation to echo in the response (the `indirect_op` of an indirect request).
    public var operation: UInt8
    /// The status to answer with.
    public var status: BlkifStatus
    /// The offending field, with the header's name (`nr_segments`, `seg[3].last_sect`).
    public var field: String
    /// Its value.
    public var value: UInt64
    /// What is wrong with it.
    public var reason: String

    public init(id: UInt64, operation: UInt8, status: BlkifStatus, field: String, value: UInt64, reason: String) {
        self.id = id
        self.operation = operation
        self.status = status
        self.field = field
        self.value = value
        self.reason = reason
    }

    /// "blkif request id 7: nr_segments 12 exceeds BLKIF_MAX_SEGMENTS_PER_REQUEST (11)".
    public var description: String { "blkif request id \(id): \(field) \(value) \(reason)" }

    /// The response the backend puts on the ring for this request.
    public var response: BlkifResponse { BlkifResponse(id: id, operation: operation, status: status) }
}

/// `struct blkif_response`: `id` @0, `operation` @8, `status` @10 (i16): 16 bytes.
public struct BlkifResponse: Equatable, Sendable {
    public enum Layout {
        public static let size = 16
        public static let id = 0
        public static let operation = 8
        public static let status = 10
    }

    /// The request's `id`.
    public var id: UInt64
    /// The request's operation, as the frontend sent it (not necessarily a known one).
    public var operation: UInt8
    public var status: BlkifStatus

    public init(id: UInt64, operation: UInt8, status: BlkifStatus) {
        self.id = id
        self.operation = operation
        self.status = status
    }

    public init(id: UInt64, operation: BlkifOp, status: BlkifStatus) {
        self.init(id: id, operation: operation.rawValue, status: status)
    }

    /// Writes the response into a ring slot (its 16 bytes; the rest of the slot is left alone).
    public func encode(to slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: id.littleEndian, toByteOffset: Layout.id, as: UInt64.self)
        slot.storeBytes(of: operation, toByteOffset: Layout.operation, as: UInt8.self)
        slot.storeBytes(of: 0, toByteOffset: Layout.operation + 1, as: UInt8.self)
        slot.storeBytes(of: status.rawValue.littleEndian, toByteOffset: Layout.status, as: Int16.self)
        slot.storeBytes(of: 0, toByteOffset: Layout.status + 2, as: UInt32.self)
    }

    /// The 16 bytes.
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Layout.size) { buffer, count in
            encode(to: UnsafeMutableRawPointer(buffer.baseAddress!))
            count = Layout.size
        }
    }

    /// Decodes a response the backend wrote (read once). Throws when `status` is not one of
    /// `BLKIF_RSP_*`.
    public static func decode(slot: UnsafeRawPointer) throws -> BlkifResponse {
        try withUnsafeTemporaryAllocation(byteCount: Layout.size, alignment: 8) { copy in
            copy.copyMemory(from: UnsafeRawBufferPointer(start: slot, count: Layout.size))
            return try parse(UnsafeRawBufferPointer(copy))
        }
    }

    /// Decodes a response from at least 16 bytes.
    public static func decode(_ bytes: [UInt8]) throws -> BlkifResponse {
        try bytes.withUnsafeBytes { try parse($0) }
    }

    static func parse(_ b: UnsafeRawBufferPointer) throws -> BlkifResponse {
        guard b.count >= Layout.size else {
            throw BlkifResponseError(field: "length", value: Int64(b.count), reason: "is too short for a blkif response (16 bytes)")
        }
        let id = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: Layout.id, as: UInt64.self))
        let raw = Int16(littleEndian: b.loadUnaligned(fromByteOffset: Layout.status, as: Int16.self))
        guard let status = BlkifStatus(rawValue: raw) else {
            throw BlkifResponseError(id: id, field: "status", value: Int64(raw),
                                     reason: "is not BLKIF_RSP_OKAY (0), BLKIF_RSP_ERROR (-1) or BLKIF_RSP_EOPNOTSUPP (-2)")
        }
        return BlkifResponse(id: id, operation: b[Layout.operation], status: status)
    }
}

/// A response a frontend cannot accept from its backend.
public struct BlkifResponseError: Error, Equatable, CustomStringConvertible {
    /// The response's `id`, when it was readable.
    public var id: UInt64?
    public var field: String
    public var value: Int64
    public var reason: String

    public init(id: UInt64? = nil, field: String, value: Int64, reason: String) {
        self.id = id
        self.field = field
        self.value = value
        self.reason = reason
    }

    /// "blkif response id 7: status 3 is not …".
    public var description: String {
        "blkif response\(id.map { " id \($0)" } ?? ""): \(field) \(value) \(reason)"
    }
}

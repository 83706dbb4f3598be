import Glibc
import ProcvisorABI
import Testing

/// `xen/io/blkif.h` byte for byte. Every number hard-coded here was printed by a throwaway C
/// program compiled with `cc` against Debian's /usr/include/xen/io/blkif.h (x86_64): `sizeof` and
/// `offsetof` of each struct and field, `__RING_SIZE((struct blkif_sring *)0, 4096 << order)`
/// for orders 0…4, and the BLKIF_OP_*/BLKIF_RSP_*/limit macros.
@Suite struct BlkifTests {
    // MARK: numbers from the header

    @Test func operationsAndStatusesHaveXensNumbers() {
        #expect(BlkifOp.allCases.map(\.rawValue) == [0, 1, 2, 3, 4, 5, 6])
        #expect(BlkifOp.read.rawValue == 0 && BlkifOp.write.rawValue == 1 && BlkifOp.writeBarrier.rawValue == 2)
        #expect(BlkifOp.flushDiskcache.rawValue == 3 && BlkifOp.reserved1.rawValue == 4)
        #expect(BlkifOp.discard.rawValue == 5 && BlkifOp.indirect.rawValue == 6)
        #expect(BlkifOp.flushDiskcache.xenName == "BLKIF_OP_FLUSH_DISKCACHE")
        #expect(BlkifStatus.okay.rawValue == 0 && BlkifStatus.error.rawValue == -1 && BlkifStatus.eopnotsupp.rawValue == -2)
        #expect(Blkif.maxSegmentsPerRequest == 11)
        #expect(Blkif.maxIndirectPagesPerRequest == 8)
        #expect(Blkif.segmentsPerIndirectPage == 512)
        #expect(Blkif.maxIndirectSegments == 4096)
        #expect(Blkif.discardSecure == 1)
        #expect(Blkif.sectorSize == 512 && Blkif.sectorsPerPage == 8)
        #expect(Blkif.vdiskCDROM == 1 && Blkif.vdiskRemovable == 2 && Blkif.vdiskReadOnly == 4)
    }

    @Test func structLayoutsMatchOffsetofAndSizeof() {
        // struct blkif_request_segment: sizeof 8.
        #expect(BlkifSegment.Layout.size == 8)
        #expect([BlkifSegment.Layout.gref, BlkifSegment.Layout.firstSect, BlkifSegment.Layout.lastSect] == [0, 4, 5])
        // struct blkif_request: sizeof 112, seg[] 88 bytes at 24.
        typealias R = BlkifRequest.Layout
        #expect(R.size == 112)
        #expect([R.operation, R.nrSegments, R.handle, R.id, R.sectorNumber, R.seg] == [0, 1, 2, 8, 16, 24])
        #expect(R.seg + Blkif.maxSegmentsPerRequest * BlkifSegment.Layout.size == R.size)
        // struct blkif_request_discard: sizeof 32.
        typealias D = BlkifRequest.DiscardLayout
        #expect(D.size == 32)
        #expect([D.operation, D.flag, D.handle, D.id, D.sectorNumber, D.nrSectors] == [0, 1, 2, 8, 16, 24])
        // struct blkif_request_indirect: sizeof 64, indirect_grefs[8] 32 bytes at 28.
        typealias I = BlkifRequest.IndirectLayout
        #expect(I.size == 64)
        #expect([I.operation, I.indirectOp, I.nrSegments, I.id, I.sectorNumber, I.handle, I.indirectGrefs]
                == [0, 1, 2, 8, 16, 24, 28])
        // struct blkif_response: sizeof 16.
        typealias S = BlkifResponse.Layout
        #expect(S.size == 16)
        #expect([S.id, S.operation, S.status] == [0, 8, 10])
    }

    /// `__RING_SIZE` for 1, 2, 4, 8, 16 pages; `offsetof(struct blkif_sring, ring)` is 64 and
    /// `sizeof(union blkif_sring_entry)` 112.
    @Test(arguments: [(0, 32), (1, 64), (2, 128), (3, 256), (4, 512)])
    func ringSlotsMatchRingSize(_ order: Int, _ slots: Int) {
        #expect(BlkifRing.headerSize == 64 && BlkifRing.slotSize == 112)
        #expect(BlkifRing.slots(pages: 1 << order) == slots)
        #expect(BlkifRing.slots(ringPageOrder: order) == slots)
    }

    @Test func ringSlotsOfOddPageCountsRoundDown() {
        #expect(BlkifRing.slots(pages: 3) == 64)  // (12288 - 64) / 112 = 109 → 64
        #expect(BlkifRing.maxRingPageOrder == 4)
    }

    // MARK: encoding

    @Test func readRequestEncodesAtTheHeadersOffsets() throws {
        let req = BlkifRequest.readWrite(.init(operation: .write, handle: 0xCAFE, id: 0x1122_3344_5566_7788, sectorNumber: 0x0011_2233_4455_6677,
                                               segments: [BlkifSegment(gref: 0xAABB_CCDD, firstSect: 1, lastSect: 6),
                                                          BlkifSegment(gref: 7)]))
        let b = req.bytes
        #expect(b.count == 112)
        #expect(b[0] == 1 && b[1] == 2)
        #expect(b[2] == 0xFE && b[3] == 0xCA)
        #expect(b[4..<8].allSatisfy { $0 == 0 })
        #expect(Array(b[8..<16]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(b[16..<24]) == [0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00])
        #expect(Array(b[24..<32]) == [0xDD, 0xCC, 0xBB, 0xAA, 1, 6, 0, 0])
        #expect(Array(b[32..<40]) == [7, 0, 0, 0, 0, 7, 0, 0])
        #expect(b[40...].allSatisfy { $0 == 0 })
        #expect(try BlkifRequest.decode(b, maxIndirectSegments: 0) == req)
    }

    @Test func discardAndIndirectEncodeAtTheHeadersOffsets() throws {
        let discard = BlkifRequest.discard(.init(secure: true, handle: 3, id: 9, sectorNumber: 100, nrSectors: 0x10000))
        var b = discard.bytes
        #expect(b[0] == 5 && b[1] == 1 && b[2] == 3 && b[8] == 9 && b[16] == 100)
        #expect(Array(b[24..<32]) == [0, 0, 1, 0, 0, 0, 0, 0])
        #expect(try BlkifRequest.decode(b, maxIndirectSegments: 0) == discard)
        #expect(try BlkifRequest.decode(Array(b[0..<32]), maxIndirectSegments: 0) == discard)

        let indirect = BlkifRequest.indirect(.init(indirectOp: .read, nrSegments: 600, handle: 0x0203, id: 5, sectorNumber: 8,
                                                   indirectGrefs: [0x0A0B_0C0D, 42]))
        b = indirect.bytes
        #expect(b[0] == 6 && b[1] == 0 && b[2] == 0x58 && b[3] == 0x02)  // 600 = 0x258
        #expect(b[24] == 0x03 && b[25] == 0x02 && b[26] == 0 && b[27] == 0)
        #expect(Array(b[28..<36]) == [0x0D, 0x0C, 0x0B, 0x0A, 42, 0, 0, 0])
        #expect(b[36...].allSatisfy { $0 == 0 })
        #expect(try BlkifRequest.decode(b, maxIndirectSegments: 4096) == indirect)
        #expect(try BlkifRequest.decode(Array(b[0..<64]), maxIndirectSegments: 4096) == indirect)
    }

    @Test func responseEncodesAtTheHeadersOffsets() throws {
        let rsp = BlkifResponse(id: 0x0102_0304_0506_0708, operation: .flushDiskcache, status: .eopnotsupp)
        let b = rsp.bytes
        #expect(b == [8, 7, 6, 5, 4, 3, 2, 1, 3, 0, 0xFE, 0xFF, 0, 0, 0, 0])
        #expect(try BlkifResponse.decode(b) == rsp)
    }

    @Test func requestsAndResponsesRoundTripThroughARingPage() throws {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 4096)
        let requests: [BlkifRequest] = [
            .readWrite(.init(operation: .read, id: 1, sectorNumber: 0, segments: (0..<11).map { BlkifSegment(gref: GrantRef(UInt32($0))) })),
            .readWrite(.init(operation: .flushDiskcache, id: 2, sectorNumber: 0, segments: [])),
            .readWrite(.init(operation: .writeBarrier, id: 3, sectorNumber: 8, segments: [BlkifSegment(gref: 1, firstSect: 7, lastSect: 7)])),
            .discard(.init(id: 4, sectorNumber: 5, nrSectors: 1)),
            .indirect(.init(indirectOp: .write, nrSegments: 11, id: 5, sectorNumber: 0, indirectGrefs: [77])),
        ]
        for (i, r) in requests.enumerated() {
            let slot = page + BlkifRing.headerSize + i * BlkifRing.slotSize
            r.encode(to: slot)
            #expect(try BlkifRequest.decode(slot: slot, maxIndirectSegments: 32) == r)
            #expect(r.id == UInt64(i + 1))
            BlkifResponse(id: r.id, operation: r.operation, status: .okay).encode(to: slot)
            #expect(try BlkifResponse.decode(slot: slot) == BlkifResponse(id: r.id, operation: r.operation.rawValue, status: .okay))
        }
        // Nothing beyond the slots was touched.
        #expect((BlkifRing.headerSize + requests.count * 112..<4096).allSatisfy { page.load(fromByteOffset: $0, as: UInt8.self) == 0xEE })
    }

    @Test func segmentsComputeTheirByteRange() {
        let s = BlkifSegment(gref: 1, firstSect: 2, lastSect: 5)
        #expect(s.sectorCount == 4 && s.byteOffset == 1024 && s.byteCount == 2048)
        #expect(BlkifSegment(gref: 1).byteCount == 4096)
        let r = BlkifRequest.ReadWrite(operation: .read, id: 0, sectorNumber: 0, segments: [s, BlkifSegment(gref: 2)])
        #expect(r.sectorCount == 12)
    }

    @Test func indirectSegmentsAreStoredAndCheckedAcrossPages() throws {
        let pages = (0..<2).map { _ in UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096) }
        defer { pages.forEach { $0.deallocate() } }
        let segments = (0..<600).map { BlkifSegment(gref: GrantRef(UInt32($0)), firstSect: UInt8($0 % 8), lastSect: 7) }
        #expect(BlkifRequest.Indirect.pageCount(segments: 600) == 2)
        #expect(BlkifRequest.Indirect.pageCount(segments: 512) == 1)
        BlkifRequest.Indirect.store(segments, to: pages)
        // Segment 512 is the first of the second page.
        #expect(pages[1].load(as: UInt32.self) == 512)
        #expect(pages[0].load(fromByteOffset: 8 * 3 + 4, as: UInt8.self) == 3)
        let req = BlkifRequest.Indirect(indirectOp: .read, nrSegments: 600, id: 1, sectorNumber: 0, indirectGrefs: [10, 11])
        #expect(try req.segments(pages: pages.map { UnsafeRawPointer($0) }) == segments)

        // A frontend scribbling a bad segment into page 2.
        pages[1].storeBytes(of: 9, toByteOffset: 8 * 20 + 5, as: UInt8.self)
        let e = try #require(throws: BlkifRequestError.self) { try req.segments(pages: pages.map { UnsafeRawPointer($0) }) }
        #expect(e.field == "indirect seg[532].last_sect" && e.value == 9 && e.status == .error && e.operation == 0)
        #expect(e.description == "blkif request id 1: indirect seg[532].last_sect 9 is beyond the page (at most 7)")
    }

    // MARK: untrusted requests

    /// A valid write to patch into garbage.
    static func slot(_ patch: (inout [UInt8]) -> Void) -> [UInt8] {
        var b = BlkifRequest.readWrite(.init(operation: .write, id: 77, sectorNumber: 16,
                                             segments: [BlkifSegment(gref: 1), BlkifSegment(gref: 2)])).bytes
        patch(&b)
        return b
    }

    static func refusal(_ bytes: [UInt8], maxIndirectSegments: Int = 256) throws -> BlkifRequestError {
        try #require(throws: BlkifRequestError.self) { try BlkifRequest.decode(bytes, maxIndirectSegments: maxIndirectSegments) }
    }

    @Test func unknownAndReservedOperationsAreNotSupported() throws {
        var e = try Self.refusal(Self.slot { $0[0] = 9 })
        #expect(e.status == .eopnotsupp && e.id == 77 && e.operation == 9 && e.field == "operation" && e.value == 9)
        #expect(e.description == "blkif request id 77: operation 9 is not a blkif operation")
        #expect(e.response == BlkifResponse(id: 77, operation: 9, status: .eopnotsupp))
        e = try Self.refusal(Self.slot { $0[0] = 4 })
        #expect(e.status == .eopnotsupp && e.description.contains("BLKIF_OP_RESERVED_1"))
        e = try Self.refusal(Self.slot { $0[0] = 0xFF })
        #expect(e.status == .eopnotsupp && e.value == 255)
    }

    @Test func segmentCountsOverTheLimitAreErrors() throws {
        var e = try Self.refusal(Self.slot { $0[1] = 12 })
        #expect(e.status == .error && e.field == "nr_segments" && e.value == 12 && e.id == 77 && e.operation == 1)
        #expect(e.description == "blkif request id 77: nr_segments 12 exceeds BLKIF_MAX_SEGMENTS_PER_REQUEST (11)")
        e = try Self.refusal(Self.slot { $0[1] = 255 })
        #expect(e.value == 255)
        e = try Self.refusal(Self.slot { $0[1] = 0 })
        #expect(e.field == "nr_segments" && e.value == 0 && e.description.contains("at least 1 segment"))
        e = try Self.refusal(Self.slot { $0[0] = 0; $0[1] = 0 })
        #expect(e.description.contains("BLKIF_OP_READ"))
        // A flush (or barrier) without data is what Linux's blkfront sends.
        for op: UInt8 in [2, 3] {
            let r = try BlkifRequest.decode(Self.slot { $0[0] = op; $0[1] = 0 }, maxIndirectSegments: 0)
            #expect(r == .readWrite(.init(operation: BlkifOp(rawValue: op)!, id: 77, sectorNumber: 16, segments: [])))
        }
    }

    @Test func segmentsOutsideTheirPageAreErrors() throws {
        var e = try Self.refusal(Self.slot { $0[24 + 8 + 4] = 5; $0[24 + 8 + 5] = 3 })  // seg[1]: 5…3
        #expect(e.field == "seg[1].first_sect" && e.value == 5 && e.status == .error)
        #expect(e.description == "blkif request id 77: seg[1].first_sect 5 is after last_sect 3")
        e = try Self.refusal(Self.slot { $0[24 + 5] = 8 })  // seg[0].last_sect 8
        #expect(e.field == "seg[0].last_sect" && e.value == 8)
        #expect(e.description == "blkif request id 77: seg[0].last_sect 8 is beyond the page (at most 7)")
        e = try Self.refusal(Self.slot { $0[24 + 4] = 200; $0[24 + 5] = 255 })
        #expect(e.field == "seg[0].last_sect" && e.value == 255)
        // Segments past nr_segments are not looked at.
        #expect((try? BlkifRequest.decode(Self.slot { $0[24 + 16 + 5] = 99 }, maxIndirectSegments: 0)) != nil)
    }

    @Test func sectorsPastAnyDiskAreErrors() throws {
        let e = try Self.refusal(Self.slot { b in
            withUnsafeBytes(of: (UInt64.max - 4).littleEndian) { b.replaceSubrange(16..<24, with: $0) }
        })
        #expect(e.field == "sector_number" && e.value == UInt64.max - 4)
        #expect(e.description.hasSuffix("plus 16 sectors is past the end of any disk"))
        // The last sectors an off_t can address are fine.
        let last = Blkif.maxSectors - 16
        let ok = try BlkifRequest.decode(Self.slot { b in withUnsafeBytes(of: last.littleEndian) { b.replaceSubrange(16..<24, with: $0) } },
                                         maxIndirectSegments: 0)
        #expect(ok.id == 77)
        _ = try Self.refusal(Self.slot { b in withUnsafeBytes(of: (last + 1).littleEndian) { b.replaceSubrange(16..<24, with: $0) } })
    }

    @Test func discardsAreChecked() throws {
        func discard(_ patch: (inout [UInt8]) -> Void) -> [UInt8] {
            var b = BlkifRequest.discard(.init(id: 5, sectorNumber: 64, nrSectors: 8)).bytes
            patch(&b)
            return b
        }
        var e = try Self.refusal(discard { $0[24] = 0 })
        #expect(e.field == "nr_sectors" && e.value == 0 && e.status == .error && e.operation == 5)
        #expect(e.description == "blkif request id 5: nr_sectors 0 leaves the discard with nothing to discard (at least 1)")
        e = try Self.refusal(discard { $0[1] = 6 })
        #expect(e.field == "flag" && e.value == 6)
        e = try Self.refusal(discard { b in withUnsafeBytes(of: UInt64.max.littleEndian) { b.replaceSubrange(24..<32, with: $0) } })
        #expect(e.field == "sector_number" && e.value == 64)
        let secure = try BlkifRequest.decode(discard { $0[1] = 1 }, maxIndirectSegments: 0)
        guard case let .discard(d) = secure else { Issue.record("not a discard"); return }
        #expect(d.isSecure && d.nrSectors == 8 && d.sectorNumber == 64)
    }

    @Test func indirectRequestsAreChecked() throws {
        func indirect(_ patch: (inout [UInt8]) -> Void) -> [UInt8] {
            var b = BlkifRequest.indirect(.init(indirectOp: .write, nrSegments: 100, id: 6, sectorNumber: 0, indirectGrefs: [9])).bytes
            patch(&b)
            return b
        }
        var e = try Self.refusal(indirect { $0[1] = 3 })
        #expect(e.field == "indirect_op" && e.value == 3 && e.operation == 3 && e.status == .error)
        #expect(e.description == "blkif request id 6: indirect_op 3 must be BLKIF_OP_READ (0) or BLKIF_OP_WRITE (1)")
        e = try Self.refusal(indirect { $0[2] = 0x01; $0[3] = 0x01 })  // 257 > 256
        #expect(e.field == "nr_segments" && e.value == 257 && e.operation == 1)
        #expect(e.description == "blkif request id 6: nr_segments 257 exceeds feature-max-indirect-segments (256)")
        e = try Self.refusal(indirect { $0[2] = 0xFF; $0[3] = 0xFF })
        #expect(e.value == 65535)
        e = try Self.refusal(indirect { $0[2] = 0; $0[3] = 0 })
        #expect(e.field == "nr_segments" && e.value == 0)
        e = try Self.refusal(indirect { _ in }, maxIndirectSegments: 0)
        #expect(e.status == .eopnotsupp && e.operation == 1)
        // Only the grefs of the pages nr_segments needs are taken.
        let r = try BlkifRequest.decode(indirect { $0[2] = 0x00; $0[3] = 0x10; $0[32] = 0x21 }, maxIndirectSegments: 4096)
        guard case let .indirect(i) = r else { Issue.record("not indirect"); return }
        #expect(i.nrSegments == 4096 && i.pageCount == 8 && i.indirectGrefs == [9, 0x21, 0, 0, 0, 0, 0, 0])
    }

    @Test func truncatedBytesAreErrors() throws {
        var e = try Self.refusal([])
        #expect(e.field == "length" && e.value == 0)
        e = try Self.refusal(Array(Self.slot { _ in }[0..<111]))
        #expect(e.field == "length" && e.value == 111 && e.id == 77)
        #expect(e.description == "blkif request id 77: length 111 is too short for a BLKIF_OP_WRITE request (112 bytes)")
        e = try Self.refusal(Array(BlkifRequest.discard(.init(id: 1, sectorNumber: 0, nrSectors: 1)).bytes[0..<31]))
        #expect(e.value == 31)
        let r = try #require(throws: BlkifResponseError.self) { try BlkifResponse.decode([0, 0]) }
        #expect(r.field == "length")
    }

    @Test func responsesWithUnknownStatusesAreErrors() throws {
        var b = BlkifResponse(id: 3, operation: .read, status: .okay).bytes
        b[10] = 1
        let e = try #require(throws: BlkifResponseError.self) { try BlkifResponse.decode(b) }
        #expect(e.id == 3 && e.field == "status" && e.value == 1)
        #expect(e.description.hasPrefix("blkif response id 3: status 1 is not BLKIF_RSP_OKAY (0)"))
        b[10] = 0xFD; b[11] = 0xFF
        #expect((try? BlkifResponse.decode(b)) == nil)
        // An echoed unknown operation is kept as sent.
        b[10] = 0xFF; b[8] = 42
        #expect(try BlkifResponse.decode(b) == BlkifResponse(id: 3, operation: 42, status: .error))
    }
}

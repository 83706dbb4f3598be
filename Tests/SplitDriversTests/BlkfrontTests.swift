import DomainRuntime
import SplitDrivers
import Testing

/// blkfront's pure parts: splitting transfers into ring requests, the shadow table that checks
/// the backend's responses, the backend features, device names. (End-to-end tests against a real
/// blkback live with the integration tests.)
@Suite struct BlkfrontPlanTests {
    @Test func anAlignedPageIsOneFullSegment() {
        let c = BlkfrontPlan.chunks(sector: 16, count: 8)
        #expect(c == [BlkfrontChunk(sectorNumber: 16, sectorCount: 8, bufferOffset: 0)])
        #expect(c[0].segments == [BlkfrontSegmentPlan(page: 0, firstSect: 0, lastSect: 7)])
    }

    @Test func aSectorInsideAPageKeepsItsOffset() {
        let c = BlkfrontPlan.chunks(sector: 11, count: 1)
        #expect(c == [BlkfrontChunk(sectorNumber: 11, sectorCount: 1, bufferOffset: 0)])
        #expect(c[0].segments == [BlkfrontSegmentPlan(page: 0, firstSect: 3, lastSect: 3)])
    }

    @Test func eightyEightAlignedSectorsFillElevenSegments() {
        let c = BlkfrontPlan.chunks(sector: 0, count: 88)
        #expect(c.count == 1)
        #expect(c[0].segments.count == Blkif.maxSegmentsPerRequest)
        #expect(c[0].segments.allSatisfy { $0.firstSect == 0 && $0.lastSect == 7 })
        #expect(c[0].segments.map(\.page) == Array(0..<11))
        #expect(BlkfrontPlan.maxSectorsPerRequest == 88)
    }

    @Test func eightyNineSectorsTakeTwoRequests() {
        let c = BlkfrontPlan.chunks(sector: 8, count: 89)
        #expect(c.count == 2)
        #expect(c[1] == BlkfrontChunk(sectorNumber: 96, sectorCount: 1, bufferOffset: 88 * 512))
        #expect(c[1].segments == [BlkfrontSegmentPlan(page: 0, firstSect: 0, lastSect: 0)])
    }

    @Test func anUnalignedStartShortensTheFirstRequest() {
        let c = BlkfrontPlan.chunks(sector: 3, count: 88)
        #expect(c.count == 2)
        #expect(c[0].sectorNumber == 3 && c[0].sectorCount == 85)
        #expect(c[0].segments.first == BlkfrontSegmentPlan(page: 0, firstSect: 3, lastSect: 7))
        #expect(c[0].segments.count == 11)
        #expect(c[1] == BlkfrontChunk(sectorNumber: 88, sectorCount: 3, bufferOffset: 85 * 512))
        #expect(c[1].segments == [BlkfrontSegmentPlan(page: 0, firstSect: 0, lastSect: 2)])
    }

    @Test func fewerSegmentsPerRequestWhenAsked() {
        let c = BlkfrontPlan.chunks(sector: 0, count: 40, maxSegments: 2)
        #expect(c.map(\.sectorCount) == [16, 16, 8])
        #expect(c.map(\.sectorNumber) == [0, 16, 32])
    }

    /// With indirect segments a 1 MiB transfer is one request of 256 segments (Linux's blkfront
    /// with max_indirect_segments=256), and an unaligned one spills one page into a second.
    @Test func indirectSegmentsCarryAMebibytePerRequest() throws {
        let c = BlkfrontPlan.chunks(sector: 2048, count: 2048, maxSegments: 256)
        #expect(c.count == 1 && c[0].segments.count == 256 && c[0].sectorCount == 2048)
        let u = BlkfrontPlan.chunks(sector: 3, count: 2048, maxSegments: 256)
        #expect(u.map(\.sectorCount) == [2045, 3] && u[0].segments.count == 256 && u[0].segments[0].firstSect == 3)
        // The segments round-trip through an indirect page as blkback reads them.
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let segs = c[0].segments.map { BlkifSegment(gref: GrantRef(UInt32(100 + $0.page)), firstSect: $0.firstSect, lastSect: $0.lastSect) }
        BlkifRequest.Indirect.store(segs, to: [page])
        let req = BlkifRequest.Indirect(indirectOp: .read, nrSegments: 256, id: 1, sectorNumber: 2048, indirectGrefs: [9])
        #expect(try req.segments(pages: [UnsafeRawPointer(page)]) == segs)
    }

    /// Random transfers: the chunks tile the range and the buffer exactly, every request is one
    /// blkback accepts, and only a request's first segment starts, and its last ends, inside a page.
    @Test func randomTransfersTileExactlyAndDecodeAsValidRequests() throws {
        var g: UInt64 = 0x1234_5678
        func next() -> UInt64 {
            g ^= g << 13; g ^= g >> 7; g ^= g << 17
            return g
        }
        for _ in 0..<2000 {
            let sector = next() % 1_000_000
            let count = Int(1 + next() % 700)
            let chunks = BlkfrontPlan.chunks(sector: sector, count: count)
            var expectSector = sector, expectOffset = 0
            for c in chunks {
                #expect(c.sectorNumber == expectSector)
                #expect(c.bufferOffset == expectOffset)
                #expect(!c.segments.isEmpty && c.segments.count <= Blkif.maxSegmentsPerRequest)
                #expect(c.segments.reduce(0) { $0 + $1.sectorCount } == c.sectorCount)
                #expect(c.segments.first!.firstSect == UInt8(c.sectorNumber % 8))
                for (i, s) in c.segments.enumerated() {
                    #expect(s.page == i)
                    #expect(s.firstSect <= s.lastSect && s.lastSect <= 7)
                    if i > 0 { #expect(s.firstSect == 0) }
                    if i < c.segments.count - 1 { #expect(s.lastSect == 7) }
                }
                // What the backend sees: encoded into a slot and decoded with blkback's checks.
                let grefs = (0..<11).map { GrantRef(UInt32(100 + $0)) }
                let request = c.request(operation: .write, id: 42, handle: 0xca00, grefs: grefs)
                let decoded = try BlkifRequest.decode(request.bytes, maxIndirectSegments: 0)
                // The data path's encoder (no segment array) writes the same 112 bytes.
                var direct = [UInt8](repeating: 0xff, count: BlkifRequest.Layout.size)
                direct.withUnsafeMutableBytes { slot in
                    BlkifRequest.encodeReadWrite(to: slot.baseAddress!, operation: .write, handle: 0xca00, id: 42,
                                                 sectorNumber: c.sectorNumber, segmentCount: c.segmentCount) {
                        let s = c.segment($0)
                        return BlkifSegment(gref: grefs[s.page], firstSect: s.firstSect, lastSect: s.lastSect)
                    }
                }
                #expect(direct == request.bytes)
                #expect(decoded == request)
                guard case let .readWrite(rw) = decoded else { Issue.record("not a read/write"); return }
                #expect(rw.sectorCount == c.sectorCount && rw.sectorNumber == c.sectorNumber)
                #expect(rw.segments.map(\.gref) == Array(grefs.prefix(c.segments.count)))
                expectSector += UInt64(c.sectorCount)
                expectOffset += c.sectorCount * 512
            }
            #expect(expectSector == sector + UInt64(count))
            #expect(expectOffset == count * 512)
            // With indirect segments too: the chunks tile the transfer, each within its limit.
            let maxSegments = [1, 32, 256][Int(next() % 3)]
            let wide = BlkfrontPlan.chunks(sector: sector, count: count, maxSegments: maxSegments)
            #expect(wide.reduce(0) { $0 + $1.sectorCount } == count)
            #expect(wide.allSatisfy { $0.segmentCount <= maxSegments && $0.segments.reduce(0) { $0 + $1.sectorCount } == $0.sectorCount })
            #expect(zip(wide, wide.dropFirst()).allSatisfy { $0.sectorNumber + UInt64($0.sectorCount) == $1.sectorNumber && $1.sectorNumber % 8 == 0 })
        }
    }
}

@Suite struct BlkfrontShadowTableTests {
    typealias Table = BlkfrontShadowTable<String>

    @Test func issuesUpToCapacityThenRefuses() {
        var t = Table(capacity: 32)
        var ids: Set<UInt64> = []
        for i in 0..<32 {
            guard let (id, slot) = t.issue(op: .read, payload: "r\(i)") else { Issue.record("slot \(i) refused"); return }
            #expect(slot == i)
            ids.insert(id)
        }
        #expect(ids.count == 32)
        #expect(t.inFlight == 32 && !t.hasFreeSlot)
        #expect(t.issue(op: .read, payload: "x") == nil)
    }

    @Test func aResponseCompletesItsRequest() throws {
        var t = Table(capacity: 4)
        let (id, slot) = t.issue(op: .write, payload: "w")!
        let done = try t.complete(BlkifResponse(id: id, operation: .write, status: .okay))
        #expect(done.slot == slot && done.op == .write && done.payload == "w")
        #expect(t.inFlight == 0)
    }

    @Test func anIdBeyondTheRingIsRefused() {
        var t = Table(capacity: 32)
        _ = t.issue(op: .read, payload: "r")
        #expect(throws: BlkifResponseError.self) { try t.complete(BlkifResponse(id: 40, operation: .read, status: .okay)) }
        do {
            _ = try t.complete(BlkifResponse(id: 40, operation: .read, status: .okay))
        } catch {
            #expect("\(error)".contains("names slot 40, but the ring has 32 slots"))
        }
        #expect(t.inFlight == 1)
    }

    @Test func aDuplicateResponseIsRefused() throws {
        var t = Table(capacity: 4)
        let (id, _) = t.issue(op: .read, payload: "r")!
        _ = try t.complete(BlkifResponse(id: id, operation: .read, status: .okay))
        #expect(throws: BlkifResponseError.self) { try t.complete(BlkifResponse(id: id, operation: .read, status: .okay)) }
    }

    @Test func aStaleResponseCannotCompleteTheSlotsNextRequest() throws {
        var t = Table(capacity: 1)
        let (first, slot) = t.issue(op: .read, payload: "first")!
        _ = try t.complete(BlkifResponse(id: first, operation: .read, status: .okay))
        let (second, again) = t.issue(op: .read, payload: "second")!
        #expect(again == slot && second != first)
        do {
            _ = try t.complete(BlkifResponse(id: first, operation: .read, status: .okay))
            Issue.record("a stale id was accepted")
        } catch {
            #expect("\(error)".contains("answers no request in flight"))
        }
        #expect(try t.complete(BlkifResponse(id: second, operation: .read, status: .okay)).payload == "second")
    }

    @Test func aResponseForAnIdNeverSentIsRefused() {
        var t = Table(capacity: 4)
        _ = t.issue(op: .read, payload: "r")
        #expect(throws: BlkifResponseError.self) { try t.complete(BlkifResponse(id: 3, operation: .read, status: .okay)) }
    }

    @Test func aResponseWithTheWrongOperationIsRefused() throws {
        var t = Table(capacity: 4)
        let (id, _) = t.issue(op: .write, payload: "w")!
        do {
            _ = try t.complete(BlkifResponse(id: id, operation: .read, status: .okay))
            Issue.record("a wrong operation was accepted")
        } catch let e as BlkifResponseError {
            #expect(e.field == "operation")
            #expect(e.description.contains("BLKIF_OP_WRITE"))
        }
        // The request is still in flight.
        #expect(t.inFlight == 1)
    }

    @Test func cancelAndRemoveAllFreeEverything() throws {
        var t = Table(capacity: 4)
        let (_, a) = t.issue(op: .read, payload: "a")!
        _ = t.issue(op: .write, payload: "b")
        _ = t.issue(op: .discard, payload: "c")
        t.cancel(slot: a)
        #expect(t.inFlight == 2)
        let all = t.removeAll()
        #expect(Set(all.map(\.payload)) == ["b", "c"])
        #expect(t.inFlight == 0)
        #expect(t.removeAll().isEmpty)
    }
}

@Suite struct BlkfrontFeatureTests {
    func parse(_ nodes: [String: String]) throws -> BlkfrontFeatures {
        try BlkfrontFeatures.parse(backendPath: "/local/domain/1/backend/vbd/2/51712") { nodes[$0] }
    }

    @Test func readsWhatBlkbackPublishes() throws {
        let f = try parse([
            "sectors": "2097152", "info": "0", "sector-size": "512", "physical-sector-size": "4096",
            "feature-flush-cache": "1", "feature-barrier": "1", "feature-persistent": "1",
            "feature-discard": "1", "discard-granularity": "4096", "discard-alignment": "0", "discard-secure": "0",
            "feature-max-indirect-segments": "256",
        ])
        #expect(f == BlkfrontFeatures(sectors: 2_097_152, sectorSize: 512, physicalSectorSize: 4096, info: 0, flushCache: true,
                                      barrier: true, discard: true, discardGranularity: 4096, discardAlignment: 0,
                                      discardSecure: false, persistent: true, maxIndirectSegments: 256))
        #expect(f.bytes == 1 << 30)
        #expect(!f.readOnly)
    }

    @Test func optionalFeaturesDefaultToOff() throws {
        let f = try parse(["sectors": "8", "info": "4", "sector-size": "512", "discard-granularity": "4096"])
        #expect(f.readOnly)
        #expect(!f.flushCache && !f.barrier && !f.discard && !f.persistent)
        #expect(f.discardGranularity == 0)  // only meaningful with feature-discard
        #expect(f.physicalSectorSize == 512)
    }

    @Test func requiredNodesAreRequired() {
        for missing in ["sectors", "info", "sector-size"] {
            var nodes = ["sectors": "8", "info": "0", "sector-size": "512"]
            nodes[missing] = nil
            do {
                _ = try parse(nodes)
                Issue.record("\(missing) missing was accepted")
            } catch {
                #expect("\(error)" == "/local/domain/1/backend/vbd/2/51712/\(missing) is missing")
            }
        }
        #expect(throws: (any Error).self) { try parse(["sectors": "lots", "info": "0", "sector-size": "512"]) }
        #expect(throws: (any Error).self) { try parse(["sectors": "8", "info": "0", "sector-size": "1000"]) }
        #expect(throws: (any Error).self) { try parse(["sectors": "8", "info": "0", "sector-size": "8192"]) }
    }
}

@Suite struct BlkfrontMiscTests {
    @Test func deviceNamesAsLinux() {
        #expect(Blkfront.deviceName(devid: 51712) == "xvda")
        #expect(Blkfront.deviceName(devid: 51713) == "xvda1")
        #expect(Blkfront.deviceName(devid: 51728) == "xvdb")
        #expect(Blkfront.deviceName(devid: 202 << 8 | 15 << 4) == "xvdp")
        #expect(Blkfront.deviceName(devid: 1 << 28 | 26 << 8) == "xvdaa")
        #expect(Blkfront.deviceName(devid: 1 << 28 | 16 << 8 | 3) == "xvdq3")
        #expect(Blkfront.deviceName(devid: 768) == "hda")
        #expect(Blkfront.deviceName(devid: 22 << 8 | 1 << 6) == "hdd")
        #expect(Blkfront.deviceName(devid: 2048 + 17) == "sdb1")
        #expect(Blkfront.deviceName(devid: 12345) == "12345")
    }

    @Test func errorsNameOperationSectorAndStatus() {
        let e = BlkfrontError.io(device: "xvda (vbd 51712)", operation: .write, sector: 100, sectors: 8, status: .error)
        #expect(e.description == "xvda (vbd 51712): BLKIF_OP_WRITE of 8 sectors at sector 100 failed: BLKIF_RSP_ERROR")
        let f = BlkfrontError.io(device: "xvda (vbd 51712)", operation: .flushDiskcache, sector: 0, sectors: 0, status: .eopnotsupp)
        #expect(f.description.contains("BLKIF_OP_FLUSH_DISKCACHE") && f.description.contains("BLKIF_RSP_EOPNOTSUPP"))
    }
}

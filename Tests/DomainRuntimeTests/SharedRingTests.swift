import DomainRuntime
import Glibc
import Testing

/// Xen's ring semantics (`xen/io/ring.h`) on a local page: sizes, notification logic, and the
/// refusal of impossible indexes written by a hostile peer.
@Suite struct SharedRingTests {
    final class Page {
        let base: UnsafeMutableRawPointer
        init() {
            var p: UnsafeMutableRawPointer?
            posix_memalign(&p, 4096, 4096)
            base = p!
            memset(base, 0, 4096)
        }
        deinit { free(base) }
        func u32(_ offset: Int) -> UInt32 { base.load(fromByteOffset: offset, as: UInt32.self) }
        func set(_ offset: Int, _ v: UInt32) { base.storeBytes(of: v, toByteOffset: offset, as: UInt32.self) }
    }

    @Test(arguments: [(112, 12, 32), (12, 4, 256), (8, 8, 256), (64, 64, 32), (2000, 8, 2), (3000, 8, 1)])
    func ringSizesMatchRingH(_ req: Int, _ rsp: Int, _ expected: Int) {
        #expect(RingLayout(requestSize: req, responseSize: rsp).count == UInt32(expected))
    }

    /// `__CONST_RING_SIZE(blkif, XEN_PAGE_SIZE << order)`: Linux's BLK_RING_SIZE for ring-page-order
    /// 0…4 (32, 64, 128, 256, 512 slots of 112 bytes).
    @Test(arguments: [(1, 32), (2, 64), (4, 128), (8, 256), (16, 512)])
    func multiPageBlkifRingSizes(_ pages: Int, _ expected: Int) {
        #expect(RingLayout(requestSize: 112, responseSize: 12, pages: pages).count == UInt32(expected))
    }

    @Test func requestsAndResponsesFlowWithXensNotifyRules() throws {
        let page = Page()
        let layout = RingLayout(requestSize: 16, responseSize: 16)
        let front = FrontRing(page: page.base, layout: layout)
        #expect(page.u32(4) == 1 && page.u32(12) == 1)  // SHARED_RING_INIT: req_event = rsp_event = 1
        let back = BackRing(page: page.base, layout: layout)
        for i in 0..<3 { front.nextRequest()!.storeBytes(of: UInt64(i), as: UInt64.self) }
        #expect(front.pushRequests())  // req_event was 1: the backend wants a kick
        #expect(page.u32(0) == 3)
        var seen: [UInt64] = []
        while let r = try back.takeRequest() { seen.append(r.load(as: UInt64.self)) }
        #expect(seen == [0, 1, 2])
        #expect(!back.finalCheckForRequests())
        #expect(page.u32(4) == 4)  // req_event armed at req_cons + 1
        front.nextRequest()!.storeBytes(of: UInt64(9), as: UInt64.self)
        #expect(front.pushRequests())
        front.nextRequest()!.storeBytes(of: UInt64(10), as: UInt64.self)
        #expect(!front.pushRequests(), "no kick needed: the backend has not re-armed req_event")
        for _ in 0..<2 { _ = try back.takeRequest() }
        for i in 0..<5 { back.nextResponse().storeBytes(of: UInt64(100 + i), as: UInt64.self) }
        #expect(back.pushResponses())
        var responses: [UInt64] = []
        while let r = try front.takeResponse() { responses.append(r.load(as: UInt64.self)) }
        #expect(responses == [100, 101, 102, 103, 104])
        #expect(!front.finalCheckForResponses())
    }

    @Test func fullRingRefusesMoreRequests() {
        let page = Page()
        let front = FrontRing(page: page.base, layout: RingLayout(requestSize: 1024, responseSize: 8))
        #expect(front.layout.count == 2)
        #expect(front.nextRequest() != nil && front.nextRequest() != nil)
        #expect(front.isFull)
        #expect(front.nextRequest() == nil)
    }

    @Test func backendRejectsAnImpossibleReqProd() throws {
        let page = Page()
        let layout = RingLayout(requestSize: 16, responseSize: 16)
        _ = FrontRing(page: page.base, layout: layout)
        let back = BackRing(page: page.base, layout: layout)
        page.set(0, 10_000)  // a hostile frontend claims far more requests than the ring holds
        #expect(throws: RingError.self) { try back.takeRequest() }
        page.set(0, UInt32.max)  // wrapped garbage
        #expect(throws: RingError.self) { try back.takeRequest() }
    }

    @Test func frontendRejectsResponsesItNeverAskedFor() throws {
        let page = Page()
        let layout = RingLayout(requestSize: 16, responseSize: 16)
        let front = FrontRing(page: page.base, layout: layout)
        _ = front.nextRequest()
        _ = front.pushRequests()
        page.set(8, 5)  // rsp_prod beyond the one request outstanding
        #expect(throws: RingError.self) { try front.takeResponse() }
    }

    /// A backend restarted while requests were in flight takes over at the `req_cons` its own
    /// records say, with `rsp_prod_pvt` at the published `rsp_prod`.
    @Test func aBackendResumesWhereItsRecordsSay() throws {
        let page = Page()
        let layout = RingLayout(requestSize: 16, responseSize: 16)
        let front = FrontRing(page: page.base, layout: layout)
        var back = BackRing(page: page.base, layout: layout)
        for i in 0..<6 { front.nextRequest()!.storeBytes(of: UInt64(i), as: UInt64.self) }
        _ = front.pushRequests()
        for _ in 0..<4 { _ = try back.takeRequest() }
        for i in 0..<2 { back.nextResponse().storeBytes(of: UInt64(100 + i), as: UInt64.self) }
        _ = back.pushResponses()
        back.nextResponse().storeBytes(of: UInt64(102), as: UInt64.self)  // written, never published
        #expect(back.reqProd == 6 && back.rspProd == 2)
        // The new incarnation: attaching alone would start at rsp_prod, taking 2 and 3 again.
        back = BackRing(page: page.base, layout: layout)
        #expect(back.reqCons == 2)
        back.resume(requestsConsumed: 4)
        #expect(back.reqCons == 4 && back.rspProdPvt == 2)
        #expect(try back.takeRequest()?.load(as: UInt64.self) == 4)
        #expect(try back.pendingRequests() == 1)
    }

    @Test func indexesWrapAroundUInt32() throws {
        let page = Page()
        let layout = RingLayout(requestSize: 16, responseSize: 16)
        // Start both ends just below the wrap, as a long-lived ring eventually is.
        page.set(0, UInt32.max - 1); page.set(8, UInt32.max - 1); page.set(4, UInt32.max); page.set(12, UInt32.max)
        let back = BackRing(page: page.base, layout: layout)
        #expect(back.reqCons == UInt32.max - 1)
        page.set(0, 2)  // four requests, crossing the wrap
        var n = 0
        while try back.takeRequest() != nil { n += 1 }
        #expect(n == 4)
    }
}

import LinuxHost

/// Xen's shared ring (`xen/io/ring.h`) over one page or several back to back, byte compatible:
/// `req_prod` @0, `req_event` @4, `rsp_prod` @8, `rsp_event` @12, 48 bytes of padding, then
/// `count` slots of max(request, response) size, `count` the largest power of two that fits.
public struct RingLayout: Equatable, Sendable {
    public static let headerSize = 64
    public let requestSize: Int
    public let responseSize: Int
    /// Pages the ring spans (`1 << ring-page-order`), mapped back to back.
    public let pages: Int
    public let slotSize: Int
    /// `__RING_SIZE`: entries in the ring's pages.
    public let count: UInt32

    public init(requestSize: Int, responseSize: Int, pages: Int = 1) {
        precondition(pages >= 1)
        self.requestSize = requestSize
        self.responseSize = responseSize
        self.pages = pages
        slotSize = max(requestSize, responseSize)
        let fit = (4096 * pages - Self.headerSize) / slotSize
        var n = 1
        while n * 2 <= fit { n *= 2 }
        count = UInt32(n)
    }
}

/// A peer wrote ring indexes that cannot happen: disconnect it, do not loop or trust the slots.
public struct RingError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

struct SharedRingHeader {
    let base: UnsafeMutableRawPointer
    var reqProd: UnsafeMutablePointer<UInt32> { base.assumingMemoryBound(to: UInt32.self) }
    var reqEvent: UnsafeMutablePointer<UInt32> { (base + 4).assumingMemoryBound(to: UInt32.self) }
    var rspProd: UnsafeMutablePointer<UInt32> { (base + 8).assumingMemoryBound(to: UInt32.self) }
    var rspEvent: UnsafeMutablePointer<UInt32> { (base + 12).assumingMemoryBound(to: UInt32.self) }

    /// `SHARED_RING_INIT`.
    func initialise() {
        SharedAtomic.store(reqProd, 0)
        SharedAtomic.store(rspProd, 0)
        SharedAtomic.store(reqEvent, 1)
        SharedAtomic.store(rspEvent, 1)
    }
}

/// The frontend's view (`FRONT_RING_INIT`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
/// `RING_FINAL_CHECK_FOR_RESPONSES`).
public final class FrontRing {
    public let layout: RingLayout
    let sring: SharedRingHeader
    /// `req_prod_pvt` and `rsp_cons`.
    @exclusivity(unchecked) public private(set) var reqProdPvt: UInt32 = 0
    @exclusivity(unchecked) public private(set) var rspCons: UInt32 = 0

    /// Initialises the shared page (the frontend owns it) and attaches.
    public init(page: UnsafeMutableRawPointer, layout: RingLayout) {
        self.layout = layout
        sring = SharedRingHeader(base: page)
        sring.initialise()
    }

    func slot(_ idx: UInt32) -> UnsafeMutableRawPointer {
        sring.base + RingLayout.headerSize + Int(idx & (layout.count - 1)) * layout.slotSize
    }

    /// `RING_FULL`.
    public var isFull: Bool { reqProdPvt &- rspCons == layout.count }

    /// The shared and private indexes, for a diagnostic.
    public var indexes: String {
        "req_prod \(SharedAtomic.load(sring.reqProd)) req_event \(SharedAtomic.load(sring.reqEvent)) "
            + "rsp_prod \(SharedAtomic.load(sring.rspProd)) rsp_event \(SharedAtomic.load(sring.rspEvent)) rsp_cons \(rspCons)"
    }

    /// `RING_FREE_REQUESTS`.
    public var freeRequests: UInt32 { layout.count &- (reqProdPvt &- rspCons) }

    /// The next request slot (`RING_GET_REQUEST(req_prod_pvt++)`); nil when the ring is full.
    public func nextRequest() -> UnsafeMutableRawPointer? {
        if isFull { return nil }
        let s = slot(reqProdPvt)
        reqProdPvt &+= 1
        return s
    }

    /// Publishes the requests; true when the backend asked to be notified.
    public func pushRequests() -> Bool {
        let old = SharedAtomic.load(sring.reqProd)
        let new = reqProdPvt
        SharedAtomic.store(sring.reqProd, new)  // seq_cst: the write barrier and the full barrier
        return new &- SharedAtomic.load(sring.reqEvent) < new &- old
    }

    /// Takes the next response, or nil when none is pending. Throws when the backend's `rsp_prod`
    /// claims more responses than requests were issued.
    public func takeResponse() throws -> UnsafeRawPointer? {
        let prod = SharedAtomic.load(sring.rspProd)
        if prod &- rspCons > reqProdPvt &- rspCons {
            throw RingError(message: "impossible rsp_prod \(prod): rsp_cons \(rspCons), req_prod \(reqProdPvt)")
        }
        if prod == rspCons { return nil }
        let s = slot(rspCons)
        rspCons &+= 1
        return UnsafeRawPointer(s)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: arms `rsp_event` when empty; true if responses wait.
    public func finalCheckForResponses() -> Bool {
        if SharedAtomic.load(sring.rspProd) != rspCons { return true }
        SharedAtomic.store(sring.rspEvent, rspCons &+ 1)
        return SharedAtomic.load(sring.rspProd) != rspCons
    }
}

/// The backend's view (`BACK_RING_ATTACH`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
/// `RING_FINAL_CHECK_FOR_REQUESTS`), checking the frontend's indexes.
public final class BackRing {
    public let layout: RingLayout
    let sring: SharedRingHeader
    @exclusivity(unchecked) public private(set) var reqCons: UInt32 = 0
    @exclusivity(unchecked) public private(set) var rspProdPvt: UInt32 = 0

    /// Attaches to a page the frontend initialised.
    public init(page: UnsafeMutableRawPointer, layout: RingLayout) {
        self.layout = layout
        sring = SharedRingHeader(base: page)
        rspProdPvt = SharedAtomic.load(sring.rspProd)
        reqCons = rspProdPvt
    }

    func slot(_ idx: UInt32) -> UnsafeMutableRawPointer {
        sring.base + RingLayout.headerSize + Int(idx & (layout.count - 1)) * layout.slotSize
    }

    /// `req_prod` as the frontend last published it (read, not checked).
    public var reqProd: UInt32 { SharedAtomic.load(sring.reqProd) }

    /// `rsp_prod` as this backend (or an earlier incarnation of it) last published it.
    public var rspProd: UInt32 { SharedAtomic.load(sring.rspProd) }

    /// Takes over a ring that an earlier incarnation of this backend served and died with: the
    /// private indexes are not in the shared page, so `init` starts from `rsp_prod` as if every
    /// request before it had been answered and none after it taken. `rsp_prod_pvt` becomes the
    /// shared `rsp_prod` as published (a response written but not published is written again) and
    /// `req_cons` the next request to take, which the backend knows from its own records (requests
    /// it took and has not answered are no longer on the ring for it to see). The caller has
    /// checked that `requestsConsumed` lies between `rsp_prod` and `req_prod`, at most a ring
    /// apart from `rsp_prod`.
    public func resume(requestsConsumed: UInt32) {
        rspProdPvt = SharedAtomic.load(sring.rspProd)
        reqCons = requestsConsumed
    }

    /// The next request, or nil. Throws `RingError` when `req_prod` is impossible
    /// (`RING_REQUEST_PROD_OVERFLOW`): more outstanding requests than the ring holds.
    public func takeRequest() throws -> UnsafeRawPointer? {
        let prod = SharedAtomic.load(sring.reqProd)
        if prod &- rspProdPvt > layout.count {
            throw RingError(message: "impossible req_prod \(prod): rsp_prod_pvt \(rspProdPvt), ring size \(layout.count)")
        }
        if prod == reqCons { return nil }
        // `RING_REQUEST_CONS_OVERFLOW`: no request may be consumed whose response slot is still in use.
        if reqCons &- rspProdPvt >= layout.count { return nil }
        let s = slot(reqCons)
        reqCons &+= 1
        return UnsafeRawPointer(s)
    }

    /// Requests waiting to be consumed, checked as `takeRequest` checks them (throws for an
    /// impossible `req_prod`), and limited to those whose response slots are free.
    public func pendingRequests() throws -> UInt32 {
        let prod = SharedAtomic.load(sring.reqProd)
        if prod &- rspProdPvt > layout.count {
            throw RingError(message: "impossible req_prod \(prod): rsp_prod_pvt \(rspProdPvt), ring size \(layout.count)")
        }
        return min(prod &- reqCons, layout.count &- (reqCons &- rspProdPvt))
    }

    /// The request `i` places after `req_cons`, without consuming it (`i` < `pendingRequests()`).
    public func peekRequest(_ i: UInt32) -> UnsafeRawPointer { UnsafeRawPointer(slot(reqCons &+ i)) }

    /// The slot of ring index `index`: for a backend putting back requests it copied aside before
    /// answering them in place (a response overwrites its request's slot), when it takes over a
    /// ring from a dead incarnation. Only slots between `rsp_prod` and `req_prod` are the
    /// backend's to write.
    public func slotAddress(_ index: UInt32) -> UnsafeMutableRawPointer { slot(index) }

    /// Consumes `n` requests seen with `peekRequest`.
    public func consume(_ n: UInt32) { reqCons &+= n }

    /// The slot for the next response.
    public func nextResponse() -> UnsafeMutableRawPointer {
        let s = slot(rspProdPvt)
        rspProdPvt &+= 1
        return s
    }

    /// Publishes responses; true when the frontend asked to be notified.
    public func pushResponses() -> Bool {
        let old = SharedAtomic.load(sring.rspProd)
        let new = rspProdPvt
        SharedAtomic.store(sring.rspProd, new)
        return new &- SharedAtomic.load(sring.rspEvent) < new &- old
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    public func finalCheckForRequests() -> Bool {
        if SharedAtomic.load(sring.reqProd) != reqCons { return true }
        SharedAtomic.store(sring.reqEvent, reqCons &+ 1)
        return SharedAtomic.load(sring.reqProd) != reqCons
    }
}

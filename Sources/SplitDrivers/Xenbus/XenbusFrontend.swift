import DomainRuntime
import LinuxHost

/// The XenBus side of a frontend (`device/<type>/<devid>` of this domain), one for every frontend
/// (blkfront, netfront): the handshake with the backend (Linux's talk_to_blkback and
/// talk_to_netback), the watch on the backend's `state`, and the teardown. It keeps the account
/// of what the frontend gave the backend — granted pages, contiguous views over ring pages,
/// unbound event channels — so a failed handshake and `close` release all of it in one place.
///
/// Handshake (`connect`):
///   1. Initialising (a frontend connecting again after Closed starts from there, so the backend
///      goes back to InitWait: blkback's "prepare for reconnect"); wait for the backend at
///      InitWait, or Connected (as blkback_changed accepts);
///   2. `publish`: the driver reads what the backend offers, allocates its rings and ports here
///      and returns its nodes (ring refs, event channels, features), written in one transaction
///      under the frontend's directory; Initialised;
///   3. wait for the backend at Connected (unless it already was); `connected`: the driver reads
///      the backend's properties and makes its device; wait until the backend has bound every
///      port (the supervisor's notice reaches this domain's event thread asynchronously, so it is
///      polled: `waitAny` would take the application's events); Connected.
/// On any failure: Closing once anything was published (`xenbus_dev_fatal`), every port closed,
/// every grant ended and its page freed (a page the backend still maps is never reused), views
/// unmapped; the error is the driver's own (`failure`), naming the reason.
///
/// Not thread-safe: the frontend's one thread drives it (the watch only raises a flag).
public final class XenbusFrontend {
    public let domain: Domain
    public let device: XenbusDevice
    public let end: XenbusEnd

    /// A page given to the backend: `ref` is its grant, nil before it is granted and once the
    /// grant has ended.
    private struct Granted {
        var page: GrantablePage
        var ref: GrantRef?
    }

    @exclusivity(unchecked) private var granted: [Granted] = []
    /// Contiguous views over ring pages (`grantRing`), unmapped before their pages are freed.
    @exclusivity(unchecked) private var views: [(base: UnsafeMutableRawPointer, pages: [GrantablePage])] = []
    @exclusivity(unchecked) private var ports: [EventChannels.Port] = []
    /// Set by the watch on the backend's `state` (the store's watch thread); read by `backendStateIfChanged`.
    @exclusivity(unchecked) private var backendChanged: UInt32 = 1
    @exclusivity(unchecked) private var watching = false
    @exclusivity(unchecked) private var closed = false
    private let watchToken: String
    private static let watchCounter = XenbusCounter()

    /// The device as this domain's frontend finds it: `backend-id` and `backend` read from its
    /// directory and checked (`XenbusDevice.frontend`). A missing or wrong link throws
    /// `failure(reason)`.
    public init<Failure: Error>(domain: Domain, type: String, devid: UInt32, failure: (String) -> Failure) throws {
        let store = XenStoreClientXenbus(domain.store)
        let device: XenbusDevice
        do {
            device = try XenbusDevice.frontend(store: store, domid: domain.domid, type: type, devid: devid)
        } catch {
            throw failure("\(error)")
        }
        self.domain = domain
        self.device = device
        end = XenbusEnd(device: device, role: .frontend, store: store)
        watchToken = "\(type)front-\(devid)-\(Self.watchCounter.next())"
    }

    /// A node of the frontend's directory (written by the toolstack: `mac`, `ip` …); nil when missing.
    public func frontendNode(_ key: String) -> String? { try? domain.store.read("\(device.frontendPath)/\(key)") }

    /// A node of the backend's directory (what it offers: `multi-queue-max-queues` …); nil when missing.
    public func backendNode(_ key: String) -> String? { try? domain.store.read("\(device.backendPath)/\(key)") }

    // MARK: what the frontend gives the backend

    /// A new page granted to the backend (read-only with `readonly`). Kept on the account: `close`,
    /// or a failed handshake, ends the grant and frees the page.
    public func grantPage(readonly: Bool = false) throws -> (page: GrantablePage, ref: GrantRef) {
        let gt = domain.grantTable
        let page = try gt.allocatePage()
        let ref: GrantRef
        do {
            ref = try gt.grantAccess(page, to: device.backendDomid, readonly: readonly)
        } catch {
            gt.freePage(page)
            throw error
        }
        granted.append(Granted(page: page, ref: ref))
        return (page, ref)
    }

    /// A shared ring of `pages` new pages granted read-write to the backend, seen back to back
    /// at `base` (FRONT_RING_INIT over several pages): through the grant table's `contiguousView`
    /// when there are several, so re-backing a page at the end re-backs the view too. Kept on
    /// the account as `grantPage`'s pages.
    public func grantRing(pages count: Int) throws -> (base: UnsafeMutableRawPointer, refs: [GrantRef]) {
        precondition(count >= 1, "a ring of \(count) pages")
        let gt = domain.grantTable
        let first = granted.count
        for _ in 0..<count { granted.append(Granted(page: try gt.allocatePage(), ref: nil)) }
        let pages = granted[first...].map(\.page)
        var base = pages[0].base
        if count > 1 {
            base = try gt.contiguousView(pages)
            views.append((base, pages))
        }
        for i in first..<granted.count {
            granted[i].ref = try gt.grantAccess(granted[i].page, to: device.backendDomid, readonly: false)
        }
        return (base, granted[first...].map { $0.ref! })
    }

    /// A new event channel for the backend to bind (`event-channel`), closed by `close` or a
    /// failed handshake. `connect` waits until the backend has bound every one.
    public func allocUnboundPort() throws -> EventChannels.Port {
        let port = try domain.eventChannels.allocUnbound(remote: device.backendDomid)
        ports.append(port)
        return port
    }

    // MARK: the handshake

    /// Connects (the steps in the notes on the type), waiting at most `timeout` seconds in all for
    /// the backend, and returns what `connected` made. `publish` gets the backend's state
    /// (InitWait or Connected) and returns the nodes to write, relative to the frontend's
    /// directory, in order. Errors of type `Failure` from the closures pass as they are; any other
    /// becomes `failure(reason)` (a timeout names the node and the states waited for, and asks
    /// whether the backend domain runs). On failure everything on the account is released.
    public func connect<Front, Failure: Error>(
        timeout: Double, failure: (String) -> Failure,
        publish: (_ backendState: XenbusState) throws -> [(key: String, value: String)],
        connected: () throws -> Front
    ) throws -> Front {
        let deadline = XenbusDeadline(seconds: timeout)
        var published = false
        do {
            if end.state != .initialising { try end.switchState(.initialising) }
            let backendState = try end.waitForOtherEnd(states: [.initWait, .connected], timeout: deadline.left)
            let nodes = try publish(backendState)
            published = true
            let store = domain.store, dir = device.frontendPath
            try store.transaction { t in
                for (key, value) in nodes { try store.write("\(dir)/\(key)", value, transaction: t) }
            }
            try end.switchState(.initialised)
            let s = backendState == .connected
                ? backendState
                : try end.waitForOtherEnd(states: [.connected, .closing, .closed], timeout: deadline.left)
            guard s == .connected else { throw failure("the backend went \(s) instead of Connected") }
            let front = try connected()
            let ev = domain.eventChannels
            for port in ports {
                while !ev.isConnected(port) {
                    if deadline.left <= 0 { throw failure("the backend is Connected but never bound event channel \(port)") }
                    PosixThread.sleep(microseconds: 500)
                }
            }
            try end.switchState(.connected)
            return front
        } catch {
            if published { try? end.switchState(.closing) }
            closePorts()
            _ = releaseGrants()
            if let e = error as? Failure { throw e }
            throw failure(XenbusDeadline.reason(error))
        }
    }

    // MARK: the backend's state

    /// Starts Linux's otherend watch on the backend's `state`: each change raises a flag that
    /// `backendStateIfChanged` reads on the driving thread.
    public func watchBackend() {
        watching = true
        try? domain.store.watch(device.backendPath + "/state", token: watchToken) { [weak self] _ in
            if let self { SharedAtomic.store(&self.backendChanged, 1) }
        }
    }

    /// Stops the watch (idempotent).
    public func stopWatchingBackend() {
        guard watching else { return }
        watching = false
        try? domain.store.unwatch(device.backendPath + "/state", token: watchToken)
    }

    /// The backend's state now; a missing or unreadable node reads as Unknown.
    public func backendState() -> XenbusState { (try? end.otherEndState()) ?? .unknown }

    /// The backend's state when it may have changed since the last call (the watch fired, or
    /// this is the first call), else nil: a flag check on the data path, a read only after a change.
    @inline(__always)
    public func backendStateIfChanged() -> XenbusState? {
        guard SharedAtomic.load(&backendChanged) != 0 else { return nil }
        SharedAtomic.store(&backendChanged, 0)
        return backendState()
    }

    // MARK: teardown

    /// Closing, waits for the backend to close, Closed, waits for it to let go of the pages (a
    /// backend unmaps the rings and its persistent grants when it sees Closed), then ends every
    /// grant on the account — retried while the backend still maps a page, until `deadline`;
    /// such a page stays granted and is never reused — and closes the event channels. Idempotent.
    public func close(deadline: XenbusDeadline) {
        if closed { return }
        closed = true
        stopWatchingBackend()
        try? end.switchState(.closing)
        _ = try? end.waitForOtherEnd(states: [.closing, .closed, .unknown], timeout: deadline.left)
        try? end.switchState(.closed)
        _ = try? end.waitForOtherEnd(states: [.closed, .unknown], timeout: deadline.left)
        while releaseGrants() && deadline.left > 0 { PosixThread.sleep(microseconds: 1000) }
        closePorts()
    }

    private func closePorts() {
        for port in ports { try? domain.eventChannels.close(port) }
        ports = []
    }

    /// Ends the grants still held, in one call (the exposed pages are re-backed 16 per
    /// hypercall); frees the pages whose grant ended (a view's pages only once all of them can
    /// go, after unmapping the view) and forgets those that could not be re-backed (never reused).
    /// Returns whether the backend still maps some page.
    private func releaseGrants() -> Bool {
        let gt = domain.grantTable
        let live = granted.indices.filter { granted[$0].ref != nil }
        var held = Set<Int>()
        var lost = Set<Int>()
        for (i, failure) in zip(live, gt.endAccess(live.map { granted[$0].ref! })) {
            switch failure {
            case nil: granted[i].ref = nil
            case .stillMapped?: held.insert(i)
            default: lost.insert(i)
            }
        }
        let kept = Set((held.union(lost)).map { granted[$0].page.gfn })
        views.removeAll { view in
            guard view.pages.allSatisfy({ !kept.contains($0.gfn) }) else { return false }
            gt.releaseContiguousView(view.base, pages: view.pages)
            return true
        }
        let inViews = Set(views.flatMap { $0.pages.map(\.gfn) })
        var still: [Granted] = []
        for (i, g) in granted.enumerated() where !lost.contains(i) {
            if held.contains(i) || inViews.contains(g.page.gfn) {
                still.append(g)
            } else {
                gt.freePage(g.page)
            }
        }
        granted = still
        return !held.isEmpty
    }
}

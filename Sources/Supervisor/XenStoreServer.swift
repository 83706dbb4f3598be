import LinuxHost
import Logging
import ProcvisorABI
import XenStore

/// Serves the XenStore engine to its two kinds of clients, as xenstored does: dom0 tools on a Unix
/// socket (`xenstore-read` & co. with `XENSTORED_PATH`), and each domain on its
/// `xenstore_domain_interface` page with an event channel. Everything runs on the supervisor's
/// event loop; a slow or dead client never blocks the others (socket writes are non-blocking and
/// buffered within a limit, ring replies wait in a bounded queue).
final class XenStoreServer {
    /// Replies and watch events buffered for one client before it counts as not reading.
    static let maxQueuedBytes = 4 << 20
    /// Xen's `quota-req-outstanding` (20; `CONTROL quota set outstanding N` changes it): requests
    /// of a domain whose replies it has not consumed yet. Beyond it the server stops reading the
    /// domain's ring until it catches up.
    var maxOutstandingRequests: Int { engine.quota.outstanding }

    private(set) var engine: XenStoreEngine
    let loop: EventLoop
    let logger: Logger
    private var listener: SocketListener?
    private var sockets: [XSConnectionID: SocketClient] = [:]
    private var rings: [XSConnectionID: RingClient] = [:]
    private var ringByDomain: [UInt16: XSConnectionID] = [:]
    private var nextID: XSConnectionID = 1
    /// One receive buffer for every socket client (the loop is single-threaded).
    private var receiveBuffer = [UInt8](repeating: 0, count: 65536)
    /// Lines for the hypervisor log (`xl dmesg`).
    var log: (String) -> Void = { _ in }
    /// Watches the supervisor holds itself (libxl's devstate waits): a dom0 connection with no
    /// socket or ring whose watch events go to a closure, run later from the event loop.
    private var internalWatchers: [XSConnectionID: (String) -> Void] = [:]

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
        engine = XenStoreEngine()
        setSink()
    }

    /// XS_CONTROL `live-update -s` (see `XenStoreEngine.onLiveUpdate`).
    var onLiveUpdate: ((_ conn: XSConnectionID, _ requestID: UInt32, _ binary: String, _ force: Bool, _ timeout: Int) -> String?)? {
        didSet { engine.onLiveUpdate = onLiveUpdate }
    }

    /// Whether a domain with this domid exists: XS_INTRODUCE of one that does not is refused
    /// (ENOENT), as xenstored cannot map a ring of a domain that is not there.
    var domainExists: ((UInt16) -> Bool)? {
        didSet { setSink() }
    }

    private func setSink() {
        engine.onLiveUpdate = onLiveUpdate
        engine.onIntroduce = { [unowned self] domid, _, _ in
            guard let domainExists else { return nil }
            return domainExists(domid) ? nil : .ENOENT
        }
        // `xenstore-control log on` traces requests into the supervisor's log, as xenstored's
        // trace file, or into the file `xenstore-control logfile FILE` named.
        engine.logSink = { [unowned self] line in
            if let traceFile, (try? traceFile.writeAll(line + "\n")) != nil { return }
            logger.info("xenstore", metadata: ["trace": "\(line)"])
        }
        engine.onLogfile = { [unowned self] path in
            do {
                let fd = try Self.openForAppend(path)
                traceFile?.close()
                traceFile = fd
                logger.notice("xenstore trace log moved", metadata: ["path": "\(path)"])
                return nil
            } catch {
                return Self.storeError(error)
            }
        }
        engine.onMemreport = { [unowned self] report, path in
            guard let path else {
                report.split(separator: "\n").forEach { engine.logSink?("memreport: \($0)") }
                return nil
            }
            do {
                let fd = try Self.openForAppend(path)
                defer { fd.close() }
                try fd.writeAll(report)
                return nil
            } catch {
                return Self.storeError(error)
            }
        }
    }

    /// Where `xenstore-control logfile FILE` sent the trace log (nil: the supervisor's log).
    private var traceFile: FileDescriptor?

    /// A regular file, opened without waiting (a FIFO named here would stop the event loop) and
    /// not through a symbolic link.
    private static func openForAppend(_ path: String) throws -> FileDescriptor {
        let fd = try FileDescriptor.open(path, [.writeOnly, .create, .append, .closeOnExec, .nonBlocking, .noFollow], mode: 0o600)
        guard (try? FileStatus(fd))?.isRegular == true else {
            fd.close()
            throw SystemError("open", "\(path): not a regular file", errno: .invalidArgument)
        }
        return fd
    }

    /// A file the store could not open, as the errno xenstored would answer.
    private static func storeError(_ error: Error) -> XSError {
        switch (error as? SystemError)?.errno {
        case .noSuchFile?: return .ENOENT
        case .permissionDenied?, .notPermitted?: return .EACCES
        case .readOnlyFileSystem?: return .EROFS
        default: return .EIO
        }
    }

    /// Why a live update cannot carry the server now, if it cannot.
    var liveUpdateRefusal: String? {
        internalWatchers.isEmpty ? nil : "the supervisor waits on \(internalWatchers.count) XenStore watch(es) of its own (a device removal is in progress)"
    }

    /// What a live update hands over; the descriptors it names go into `keep`.
    func image(keep: inout [FileDescriptor]) -> XenStoreServerImage {
        let socks = sockets.values.filter { !$0.closed }.sorted { $0.id < $1.id }.map { c -> XSSocketImage in
            keep.append(c.fd)
            return XSSocketImage(id: c.id, fd: c.fd.rawValue, input: c.framer.unconsumed, output: c.unsent)
        }
        let ringImages = rings.values.sorted { $0.id < $1.id }.map { $0.image() }
        return XenStoreServerImage(engine: engine.snapshot(), nextID: nextID, sockets: socks, rings: ringImages)
    }

    var listenerDescriptor: FileDescriptor? { listener?.descriptor }

    /// Takes over what `image` describes: the engine, the socket clients and the listener; each
    /// ring comes back through `ring` (its page, kick eventfd and notification, nil when the
    /// domain it names is not in the state).
    func adopt(_ i: XenStoreServerImage, listenFD: Int32,
               ring: (UInt16) -> (page: SharedMapping, kick: FileDescriptor, notify: () -> Void)?) throws {
        engine = try XenStoreEngine(snapshot: i.engine)
        setSink()
        nextID = i.nextID
        let known = Set(i.engine.connectionIDs)
        listener = try SocketListener(adopting: FileDescriptor(rawValue: listenFD), what: "xenstore socket", loop: loop, logger: logger) { [unowned self] fd in
            accept(fd)
        }
        for s in i.sockets {
            guard known.contains(s.id) else { throw LiveUpdateError.badState("xenstore socket client \(s.id) has no connection in the store") }
            let c = SocketClient(id: s.id, fd: FileDescriptor(rawValue: s.fd), loop: loop)
            c.onClose = { [unowned self] c in
                sockets[c.id] = nil
                engine.disconnect(c.id)
            }
            c.token = try loop.watch(c.fd) { [unowned self, unowned c] events in socketEvent(c, events) }
            sockets[s.id] = c
            c.framer.feed(s.input)
            if !s.output.isEmpty { c.send(s.output) }
        }
        for r in i.rings {
            guard known.contains(r.id) || r.broken else { throw LiveUpdateError.badState("xenstore ring \(r.id) has no connection in the store") }
            guard let (page, kick, notify) = ring(r.domid) else {
                throw LiveUpdateError.badState("xenstore ring \(r.id) names dom\(r.domid), whose store page is not in the state")
            }
            let client = RingClient(id: r.id, domid: r.domid, page: page, kick: kick, notify: notify)
            client.restore(r)
            client.token = try loop.watch(kick) { [unowned self, unowned client] _ in
                client.drainKick()
                service(client)
            }
            rings[r.id] = client
            ringByDomain[r.domid] = r.id
        }
        // Whatever a domain wrote while the supervisor was replaced: serve it now.
        for r in rings.values { service(r) }
    }

    /// Answers a request the previous binary left waiting (XS_CONTROL live-update).
    func answer(connection: XSConnectionID, requestID: UInt32, _ text: String) {
        deliver([(connection, XSMessage(.control, requestID: requestID, payload: Array(text.utf8) + [0]))])
    }

    // MARK: dom0 socket

    func listen(path: String) throws {
        listener = try SocketListener(path: path, what: "xenstore socket", loop: loop, logger: logger) { [unowned self] fd in
            accept(fd)
        }
    }

    func stop() {
        listener?.close()
        listener = nil
        for c in Array(sockets.values) { c.close() }
        for id in Array(rings.keys) { detach(id) }
    }

    private func accept(_ fd: FileDescriptor) {
        let id = nextID
        nextID += 1
        let c = SocketClient(id: id, fd: fd, loop: loop)
        c.onClose = { [unowned self] c in
            sockets[c.id] = nil
            engine.disconnect(c.id)
        }
        do {
            c.token = try loop.watch(fd) { [unowned self, unowned c] events in socketEvent(c, events) }
        } catch {
            fd.close()
            return
        }
        sockets[id] = c
        engine.connect(id, domid: 0)
    }

    private func socketEvent(_ c: SocketClient, _ events: Epoll.Events) {
        if events.contains(.writable) { c.flush() }
        guard !c.closed, events.contains(.readable) || events.contains(.hangup) || events.contains(.error) else { return }
        let n: Int
        switch receiveBuffer.withUnsafeMutableBytes({ c.fd.receive(into: $0, dontWait: true) }) {
        case let .success(k) where k > 0: n = k
        case .failure(.wouldBlock): return
        case .success, .failure:  // end of stream, or a failure
            c.close()
            return
        }
        c.framer.feed(receiveBuffer[0..<n])
        do {
            while !c.closed, let m = try c.framer.next() {
                deliver(engine.handle(c.id, m))
            }
        } catch {
            logger.warning("xenstore client sent a bad header; disconnecting", metadata: ["connection": "\(c.id)", "error": "\(error)"])
            c.close()
        }
    }

    // MARK: domain rings

    /// Connects `domid`'s ring page; `notify` raises the domain's store port. Returns the
    /// connection id. The domain kicks the server through `kick` (an eventfd).
    @discardableResult
    func attach(domid: UInt16, page: SharedMapping, kick: FileDescriptor, notify: @escaping () -> Void) throws -> XSConnectionID {
        let id = nextID
        nextID += 1
        let r = RingClient(id: id, domid: domid, page: page, kick: kick, notify: notify)
        r.token = try loop.watch(kick) { [unowned self, unowned r] _ in
            r.drainKick()
            service(r)
        }
        rings[id] = r
        ringByDomain[domid] = id
        engine.connect(id, domid: domid)
        r.setConnected()
        return id
    }

    /// Drops `domid`'s ring connection (domain gone). Its watches and transactions go with it.
    func detach(domid: UInt16) {
        if let id = ringByDomain[domid] { detach(id) }
    }

    private func detach(_ id: XSConnectionID) {
        guard let r = rings.removeValue(forKey: id) else { return }
        ringByDomain[r.domid] = nil
        loop.unwatch(r.kick, token: r.token)
        r.kick.close()
        engine.disconnect(id)
    }

    /// Requests taken off one domain's ring per turn of the event loop: a domain that keeps its
    /// ring full is served again on the next turn, after everything else.
    static let requestsPerTurn = 256

    /// Moves requests off the domain's ring and replies onto it, at most `requestsPerTurn`
    /// requests, then comes back on a later turn of the loop if there is more.
    private func service(_ r: RingClient) {
        guard !r.broken else { return }
        var progress = true
        var handled = 0
        while progress && !r.broken {
            if handled >= Self.requestsPerTurn {
                if !r.serviceScheduled {
                    r.serviceScheduled = true
                    loop.after(ms: 0) { [weak self, weak r] in
                        guard let self, let r else { return }
                        r.serviceScheduled = false
                        if rings[r.id] === r { service(r) }
                    }
                }
                break
            }
            progress = false
            if r.flushReplies() { progress = true }
            if r.broken { break }
            while r.outstanding < maxOutstandingRequests, !r.broken {
                do {
                    guard let m = try r.nextRequest() else { break }
                    r.outstanding += 1
                    deliver(engine.handle(r.id, m))
                    progress = true
                    handled += 1
                } catch {
                    fail(r, error)
                    break
                }
            }
        }
        if r.broken { return }
        if let e = r.violation { fail(r, e); return }
        // Requests waiting on the ring while the quota is used up: say so once per episode.
        let throttled = r.outstanding >= maxOutstandingRequests && r.hasUnreadRequests
        if throttled && !r.throttled {
            log("dom\(r.domid): xenstore request quota reached (\(maxOutstandingRequests) replies not taken); its ring waits until it catches up")
            logger.warning("xenstore request quota reached", metadata: ["domid": "\(r.domid)"])
        }
        r.throttled = throttled
    }

    private func fail(_ r: RingClient, _ error: Error) {
        r.markBroken(error)
        let why = "\(error)"
        log("dom\(r.domid): xenstore ring disconnected: \(why)")
        logger.error("xenstore ring disconnected", metadata: ["domid": "\(r.domid)", "error": "\(why)"])
        engine.disconnect(r.id)
    }

    // MARK: the supervisor's own watches

    /// Watches `path` (and below) as dom0; `handler` gets each event's path, from the event
    /// loop (never inside the write that fired it). The initial event XS_WATCH fires comes too.
    func watch(_ path: String, _ handler: @escaping (String) -> Void) -> XSConnectionID {
        let id = nextID
        nextID += 1
        engine.connect(id, domid: 0)
        internalWatchers[id] = handler
        deliver(engine.handle(id, XSMessage(.watch, strings: [path, "procvisord"])))
        return id
    }

    func unwatch(_ id: XSConnectionID) {
        guard internalWatchers.removeValue(forKey: id) != nil else { return }
        engine.disconnect(id)
    }

    // MARK: delivery

    /// Sends the engine's output (a reply and watch events) to the connections it names.
    func deliver(_ out: [(XSConnectionID, XSMessage)]) {
        for (id, m) in out {
            if let c = sockets[id] {
                c.send(m.encoded())
            } else if let r = rings[id], !r.broken {
                let isReply = m.rawType != XSMessageType.watchEvent.rawValue
                if !r.queue(m.encoded(), isReply: isReply, limit: Self.maxQueuedBytes) {
                    fail(r, XenStoreRingError.notReading(queued: r.queuedBytes))
                    continue
                }
                r.flushReplies()
                if let e = r.violation { fail(r, e) }
            } else if internalWatchers[id] != nil, m.rawType == XSMessageType.watchEvent.rawValue {
                let path = m.payloadStrings.first ?? ""
                loop.after(ms: 0) { [weak self] in self?.internalWatchers[id]?(path) }
            }
        }
    }

    /// Disconnects rings whose domain has left replies or events untaken for longer than
    /// `timeoutNs` (xenstored's watch-event timeout): quota first, then disconnection.
    func disconnectStalledRings(now: UInt64, timeoutNs: UInt64) {
        for r in Array(rings.values) where !r.broken {
            if r.queuedBytes > 0, let since = r.stalledSince, now - since > timeoutNs {
                fail(r, XenStoreRingError.notTaking(seconds: Double(now - since) / 1e9))
            }
        }
    }

    /// Connections currently open (sockets, rings), for `xl info` and tests.
    var connectionCounts: (sockets: Int, rings: Int) { (sockets.count, rings.count) }
}

enum XenStoreRingError: Error, CustomStringConvertible {
    case badRequestIndexes(cons: UInt32, prod: UInt32)
    case badResponseIndexes(cons: UInt32, prod: UInt32)
    case notReading(queued: Int)
    case notTaking(seconds: Double)

    var description: String {
        switch self {
        case let .badRequestIndexes(cons, prod): return "impossible request ring indexes (req_cons \(cons), req_prod \(prod))"
        case let .badResponseIndexes(cons, prod): return "impossible response ring indexes (rsp_cons \(cons), rsp_prod \(prod))"
        case let .notReading(queued): return "the domain does not read its replies (\(queued) bytes queued)"
        case let .notTaking(seconds): return "replies and watch events not taken for \(Int(seconds)) s"
        }
    }
}

/// A dom0 client on the socket: framed input, buffered non-blocking output.
final class SocketClient {
    let id: XSConnectionID
    let fd: FileDescriptor
    var token: UInt64 = 0
    var framer = XSFramer()
    private(set) var closed = false
    private var out = OutputBuffer()
    var unsent: [UInt8] { out.unsent }
    private unowned let loop: EventLoop
    var onClose: ((SocketClient) -> Void)?

    init(id: XSConnectionID, fd: FileDescriptor, loop: EventLoop) {
        self.id = id
        self.fd = fd
        self.loop = loop
    }

    func send(_ bytes: [UInt8]) {
        guard !closed else { return }
        out.append(bytes)
        if out.pending > XenStoreServer.maxQueuedBytes { close(); return }
        flush()
    }

    func flush() {
        switch out.flush(to: fd) {
        case .done: loop.modify(fd, token: token, .readable)
        case .wouldBlock: loop.modify(fd, token: token, [.readable, .writable])
        case .failed: close()
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        loop.unwatch(fd, token: token)
        fd.close()
        onClose?(self)
    }
}

/// A domain's `xenstore_domain_interface` page, seen from the server. Every index the domain
/// writes is checked before use: a producer more than a ring ahead of its consumer is a
/// protocol violation that disconnects the ring (`error` = XENSTORE_ERROR_RINGIDX).
final class RingClient {
    let id: XSConnectionID
    let domid: UInt16
    let page: SharedMapping
    let kick: FileDescriptor
    var token: UInt64 = 0
    let notify: () -> Void
    private var framer = XSFramer()
    private var pendingOut: [UInt8] = []
    private var pendingOffset = 0
    /// A later turn of the loop will service this ring (it had more than a turn's requests).
    var serviceScheduled = false
    /// Requests handled whose replies are not yet all on the ring.
    var outstanding = 0
    /// Whether the outstanding-request quota is holding this ring back (logged once per episode).
    var throttled = false
    /// When queued output last stopped moving (nil while the domain takes what is there).
    private(set) var stalledSince: UInt64?
    private var replyEnds: [Int] = []
    private(set) var broken = false
    private(set) var violation: Error?

    init(id: XSConnectionID, domid: UInt16, page: SharedMapping, kick: FileDescriptor, notify: @escaping () -> Void) {
        self.id = id
        self.domid = domid
        self.page = page
        self.kick = kick
        self.notify = notify
    }

    private func word(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (page.base + offset).assumingMemoryBound(to: UInt32.self)
    }

    var queuedBytes: Int { pendingOut.count - pendingOffset }

    /// What a live update hands over of this ring (the page and the kick go with the domain).
    func image() -> XSRingImage {
        XSRingImage(id: id, domid: domid, input: framer.unconsumed, output: Array(pendingOut[pendingOffset...]),
                    replyEnds: replyEnds.map { $0 - pendingOffset }, outstanding: outstanding, throttled: throttled, broken: broken,
                    stalledSince: stalledSince)
    }

    func restore(_ i: XSRingImage) {
        framer.feed(i.input)
        pendingOut = i.output
        pendingOffset = 0
        replyEnds = i.replyEnds.filter { $0 > 0 && $0 <= i.output.count }
        outstanding = i.outstanding
        throttled = i.throttled
        broken = i.broken
        // The stall clock goes on from where it was (monotonic time carries over the exec).
        if !pendingOut.isEmpty { stalledSince = i.stalledSince ?? MonotonicClock.nanoseconds() }
    }

    func setConnected() {
        SharedAtomic.store(word(XenStoreWire.serverFeaturesOffset), XenStoreWire.featureError)
        SharedAtomic.store(word(XenStoreWire.errorOffset), XenStoreWire.errorNone)
        SharedAtomic.store(word(XenStoreWire.connectionOffset), XenStoreWire.connected)
    }

    func markBroken(_ e: Error) {
        broken = true
        let code: UInt32
        switch e {
        case XenStoreRingError.badRequestIndexes, XenStoreRingError.badResponseIndexes: code = XenStoreWire.errorRingIndex
        case is WireError: code = XenStoreWire.errorProtocol
        default: code = XenStoreWire.errorComm
        }
        SharedAtomic.store(word(XenStoreWire.errorOffset), code)
        _ = try? Futex.wake(word(XenStoreWire.rspProdOffset), count: Int32.max)
        _ = try? Futex.wake(word(XenStoreWire.reqConsOffset), count: Int32.max)
        notify()
    }

    func drainKick() {
        EventFD(kick).consume()
    }

    /// Whether the domain has produced request bytes the server has not taken yet.
    var hasUnreadRequests: Bool {
        framer.pendingBytes > 0 || SharedAtomic.load(word(XenStoreWire.reqProdOffset)) != SharedAtomic.load(word(XenStoreWire.reqConsOffset))
    }

    /// The next whole request on the ring, consuming its bytes; nil when none is complete.
    func nextRequest() throws -> XSMessage? {
        if let m = try framer.next() { return m }
        let cons = SharedAtomic.load(word(XenStoreWire.reqConsOffset))
        let prod = SharedAtomic.load(word(XenStoreWire.reqProdOffset))
        let avail = prod &- cons
        guard avail <= UInt32(XenStoreWire.ringSize) else { throw XenStoreRingError.badRequestIndexes(cons: cons, prod: prod) }
        guard avail > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(avail))
        let ring = (page.base + XenStoreWire.reqOffset).assumingMemoryBound(to: UInt8.self)
        for i in 0..<Int(avail) { bytes[i] = ring[Int((cons &+ UInt32(i)) & UInt32(XenStoreWire.ringSize - 1))] }
        SharedAtomic.store(word(XenStoreWire.reqConsOffset), prod)
        framer.feed(bytes)
        // The domain may be waiting for room on the request ring: raise its port, and wake a
        // DomainRuntime client sleeping on the index itself.
        _ = try? Futex.wake(word(XenStoreWire.reqConsOffset), count: Int32.max)
        notify()
        return try framer.next()
    }

    /// Sent bytes at the front of the queue past which it is compacted.
    static let compactAfter = 64 << 10

    /// Queues an encoded message. False when the domain has stopped reading (queue over `limit`).
    func queue(_ bytes: [UInt8], isReply: Bool, limit: Int) -> Bool {
        if pendingOffset > 0 && pendingOffset == pendingOut.count {
            pendingOut.removeAll(keepingCapacity: true)
            pendingOffset = 0
        } else if pendingOffset >= Self.compactAfter && pendingOffset * 2 >= pendingOut.count {
            // What was sent goes: a domain that always leaves a little unread must not make the
            // queue grow without end.
            pendingOut.removeFirst(pendingOffset)
            replyEnds = replyEnds.map { $0 - pendingOffset }
            pendingOffset = 0
        }
        if queuedBytes == 0 { stalledSince = MonotonicClock.nanoseconds() }
        pendingOut += bytes
        if isReply { replyEnds.append(pendingOut.count) }
        return queuedBytes <= limit
    }

    /// Copies queued replies onto the response ring as far as there is room. True when it moved bytes.
    @discardableResult
    func flushReplies() -> Bool {
        guard queuedBytes > 0, !broken else { return false }
        let cons = SharedAtomic.load(word(XenStoreWire.rspConsOffset))
        let prod = SharedAtomic.load(word(XenStoreWire.rspProdOffset))
        let used = prod &- cons
        guard used <= UInt32(XenStoreWire.ringSize) else {
            violation = XenStoreRingError.badResponseIndexes(cons: cons, prod: prod)
            return false
        }
        let room = XenStoreWire.ringSize - Int(used)
        let n = min(room, queuedBytes)
        guard n > 0 else { return false }
        let ring = (page.base + XenStoreWire.rspOffset).assumingMemoryBound(to: UInt8.self)
        pendingOut.withUnsafeBufferPointer { src in
            for i in 0..<n { ring[Int((prod &+ UInt32(i)) & UInt32(XenStoreWire.ringSize - 1))] = src[pendingOffset + i] }
        }
        pendingOffset += n
        stalledSince = queuedBytes > 0 ? MonotonicClock.nanoseconds() : nil
        SharedAtomic.store(word(XenStoreWire.rspProdOffset), prod &+ UInt32(n))
        _ = try? Futex.wake(word(XenStoreWire.rspProdOffset), count: Int32.max)
        // Replies wholly on the ring no longer count as outstanding.
        var done = 0
        for end in replyEnds {
            if end <= pendingOffset { done += 1 } else { break }
        }
        if done > 0 {
            replyEnds.removeFirst(done)
            outstanding = max(0, outstanding - done)
        }
        if pendingOffset == pendingOut.count {
            pendingOut.removeAll(keepingCapacity: true)
            replyEnds = replyEnds.map { $0 - pendingOffset }
            pendingOffset = 0
        }
        notify()
        return true
    }
}

import DomainRuntime
import LinuxHost

// blkfront: the guest half of the block split driver, as Linux's xen-blkfront talks to blkback.
//
// Handshake (Linux's talk_to_blkback, run by `XenbusFrontend.connect`, which also releases
// everything on failure; `BlkfrontOptions` asks for queues, ring pages, indirect segments):
//   1. read `backend`/`backend-id` of device/vbd/DEVID; wait for the backend at InitWait (or
//      Connected, as blkback_changed accepts);
//   2. read the backend's `multi-queue-max-queues` and `max-ring-page-order`; per queue allocate
//      2^order ring pages (seen back to back; FRONT_RING_INIT), grant them read-write to the
//      backend, allocate an unbound event channel; write in one transaction `ring-page-order`
//      (order > 0), `multi-queue-num-queues` (several queues), per queue (under `queue-N/` when
//      several) `ring-ref` or `ring-ref0..`, `event-channel`, then `protocol` (x86_64-abi) and
//      `feature-persistent` = 1; Initialised;
//   3. wait for the backend at Connected, read `sectors`, `info`, `sector-size` (required, as
//      blkfront_connect's xenbus_gather) and the optional features
//      (blkfront_gather_backend_features); Connected.
//
// Data path: requests go to the queues round robin. Every ring slot has up to 11 data pages
// (or the negotiated indirect maximum, with BLKIF_OP_INDIRECT and read-only granted indirect
// pages for requests over 11 segments) of its own, allocated and granted (read-write)
// on first use and kept granted for the life of the connection (persistent grants; with a backend
// that does not advertise feature-persistent they stay granted too and it maps them per request,
// which is still correct). A transfer is split into ring requests of at most 11 segments; within a
// request, disk sector S sits in the pages at sector offset S % 8 (as a page-cache page would), so
// `first_sect` is non-zero when a transfer does not start on a 4 KiB boundary. Request ids are
// `generation << 32 | slot`, so a late or repeated response is caught even after the slot is reused.
//
// Detach: a watch on the backend's `state` flags changes; the driving thread acts on the flag in
// `process()` (every call and wait goes through it). Backend Closing (the toolstack removing the
// device): new submissions fail with `closed`, queued work fails, what is on the rings finishes,
// then the device closes itself (`isClosed`). Backend Closed or gone: everything outstanding fails.
//
// Events: one futex-backed queue serves every port of the domain (`EventChannels.waitAny`), so
// blkfront never sleeps on its own. The application drives it from ONE thread:
//   - `waitForCompletions(timeout:)`, `completions(wait:)` and the synchronous `read`/`write`/
//     `flush`/`discard` sleep in `waitAny`; ports that are not this device's are appended to
//     `strayPorts` (drain with `takeStrayPorts()`), never dropped;
//   - or the application runs its own `waitAny` loop and passes this device's port to
//     `handleEvent(_:)` (or calls `process()`), then collects `completions()`.
// Several Blkfronts on one thread may record each other's ports as strays harmlessly: each reaps
// its ring before it sleeps, so an event taken by another one is never needed.

/// A connected virtual block device of this domain. Not thread-safe: one thread drives it (see
/// the notes at the top of this file for the event rules). Call `close()` when done.
public final class Blkfront {
    public var domain: Domain { xenbus.domain }
    public var device: XenbusDevice { xenbus.device }
    /// `xvda (vbd 51712)`.
    public let label: String
    /// `xvda`.
    public let name: String
    public let features: BlkfrontFeatures
    /// The first queue's event channel (`ports` has every queue's).
    public var port: EventChannels.Port { queues[0].port }
    /// Every queue's event channel, queue 0 first.
    public var ports: [EventChannels.Port] { queues.map(\.port) }
    /// The first queue's first ring page grant.
    public var ringRef: GrantRef { queues[0].refs[0] }
    /// Queues negotiated (`multi-queue-num-queues`, 1 without multi-queue).
    public var queueCount: Int { queues.count }
    /// `ring-page-order` negotiated.
    public let ringPageOrder: Int
    /// Segments per request: 11, or the negotiated indirect maximum.
    public let maxSegmentsPerRequest: Int
    /// Sleep this many doorbell checks before sleeping in `waitAny` (latency versus CPU).
    @exclusivity(unchecked) public var spin: Int = 0
    /// The synchronous calls' limit, in seconds.
    @exclusivity(unchecked) public var ioTimeout: Double = 30
    /// Open `batch` calls: requests are placed on the rings but not yet published.
    @exclusivity(unchecked) private var batching = 0
    /// Inside `batch`, requests are published in groups of this many (and the rest at its end).
    @exclusivity(unchecked) public var batchPublish = 4

    /// Runs `body` (which submits requests) and publishes what it put on the rings with one
    /// notification per queue at the end, as Linux's blkfront does for the last request of a
    /// blk-mq batch (`bd->last`). Without it every submission publishes and notifies at once, and
    /// a backend that wakes for the first request of a burst takes them one at a time.
    public func batch<R>(_ body: () throws -> R) rethrows -> R {
        batching += 1
        defer {
            batching -= 1
            if batching == 0, case .connected = state { publish() }
        }
        return try body()
    }

    public var sectors: UInt64 { features.sectors }
    public var sectorSize: Int { features.sectorSize }
    public var readOnly: Bool { features.readOnly }
    /// Flush is offered (and not refused since).
    @exclusivity(unchecked) public private(set) var canFlush: Bool
    @exclusivity(unchecked) public private(set) var canDiscard: Bool

    /// Ports `waitAny` returned while this device waited that are not its own, oldest first.
    @exclusivity(unchecked) public private(set) var strayPorts: [EventChannels.Port] = []

    /// `detaching`: the backend went Closing (the toolstack is removing the device): nothing new
    /// is sent, what is on the rings finishes, then the device closes itself.
    private enum State { case connected, detaching, broken(BlkfrontError), closed }

    private final class IO {
        let serial: UInt64
        let tag: UInt64
        let op: BlkfrontOperation
        let sector: UInt64
        let count: Int
        let secure: Bool
        let isInternal: Bool
        /// The write's bytes, or the read's destination (unless `into`).
        @exclusivity(unchecked) var data: [UInt8]
        /// A read's destination in the caller's memory (`submitRead(into:)`), else nil.
        let into: UnsafeMutableRawPointer?
        @exclusivity(unchecked) var remaining: Int
        @exclusivity(unchecked) var error: BlkfrontError?

        init(serial: UInt64, tag: UInt64, op: BlkfrontOperation, sector: UInt64, count: Int, secure: Bool,
             isInternal: Bool, data: [UInt8], into: UnsafeMutableRawPointer?, remaining: Int) {
            self.serial = serial
            self.tag = tag
            self.op = op
            self.sector = sector
            self.count = count
            self.secure = secure
            self.isInternal = isInternal
            self.data = data
            self.into = into
            self.remaining = remaining
        }
    }

    private struct Work {
        let io: IO
        let chunk: BlkfrontChunk?
    }

    private typealias Grant = (page: GrantablePage, ref: GrantRef)

    /// One ring (queue): its pages' grants (the pages, back to back at `ring`'s base, are on
    /// `xenbus`'s account), event channel, the shadow of its slots and each slot's persistently
    /// granted data and indirect pages.
    private final class Queue {
        let index: Int
        let refs: [GrantRef]
        let ring: FrontRing
        let port: EventChannels.Port
        @exclusivity(unchecked) var shadow: BlkfrontShadowTable<Work>
        @exclusivity(unchecked) var slotPages: [[Grant]]
        @exclusivity(unchecked) var slotIndirect: [[Grant]]
        @exclusivity(unchecked) var placed = 0

        init(index: Int, refs: [GrantRef], ring: FrontRing, port: EventChannels.Port) {
            self.index = index
            self.refs = refs
            self.ring = ring
            self.port = port
            shadow = BlkfrontShadowTable(capacity: Int(ring.layout.count))
            slotPages = Array(repeating: [], count: Int(ring.layout.count))
            slotIndirect = Array(repeating: [], count: Int(ring.layout.count))
        }
    }

    /// The handshake, the watch on the backend and everything granted to it.
    private let xenbus: XenbusFrontend
    private let queues: [Queue]
    private let handle: UInt16
    @exclusivity(unchecked) private var state = State.connected
    /// The backend's process died and the supervisor is starting a new one in its place: a port
    /// came unbound while the backend's `state` still reads Connected (a backend that means to
    /// stop goes Closing first). Requests stay on the rings; the new backend finds them in its
    /// in-flight log and on the rings and answers them. Cleared, with a notification on every
    /// port, once every port is bound again.
    @exclusivity(unchecked) private var backendAway = false
    @exclusivity(unchecked) private var queue: [Work] = []
    @exclusivity(unchecked) private var queueHead = 0
    /// The next queue to offer a request to (round robin).
    @exclusivity(unchecked) private var nextQueue = 0
    @exclusivity(unchecked) private var completed: [BlkfrontCompletion] = []
    @exclusivity(unchecked) private var internalResults: [UInt64: Result<[UInt8]?, BlkfrontError>] = [:]
    @exclusivity(unchecked) private var nextSerial: UInt64 = 1
    /// IOs submitted and not finished (public and internal).
    @exclusivity(unchecked) private var unfinished = 0
    /// `close()` has started (it processes while it waits; this keeps it from starting again).
    @exclusivity(unchecked) private var closing = false

    private init(xenbus: XenbusFrontend, features: BlkfrontFeatures, queues: [Queue], ringPageOrder: Int, maxSegments: Int) {
        self.xenbus = xenbus
        self.features = features
        self.queues = queues
        self.ringPageOrder = ringPageOrder
        maxSegmentsPerRequest = maxSegments
        let devid = xenbus.device.devid
        name = Blkfront.deviceName(devid: devid)
        label = "\(name) (vbd \(devid))"
        handle = UInt16(truncatingIfNeeded: devid)
        canFlush = features.flushCache || features.barrier
        canDiscard = features.discard
    }

    // MARK: discovery

    /// This domain's vbds: the devids under `device/vbd`, in numeric order.
    public static func devices(domain: Domain) throws -> [UInt32] {
        let entries: [String]
        do {
            entries = try domain.store.directory("device/vbd")
        } catch let e as XenStoreError where e.name == "ENOENT" {
            return []
        }
        return entries.compactMap { UInt32($0) }.sorted()
    }

    /// The Linux name of a Xen device number (docs/misc/vbd-interface.txt): `xvda`, `xvdb1`,
    /// `xvdaa`, `hda`, `sdb`; the number itself for anything else.
    public static func deviceName(devid: UInt32) -> String { VbdNumber.name(of: devid) ?? String(devid) }

    // MARK: connecting

    /// Connects to vbd `devid` of `domain` (the handshake at the top of this file, driven by
    /// `XenbusFrontend.connect`), waiting at most `timeout` seconds in all for the backend. On
    /// failure this end is left Closing (`xenbus_dev_fatal`) once it had published anything, and
    /// everything allocated is released.
    public static func connect(domain: Domain, devid: UInt32, timeout: Double = 30,
                               options: BlkfrontOptions = BlkfrontOptions()) throws -> Blkfront {
        let label = "\(deviceName(devid: devid)) (vbd \(devid))"
        func fail(_ reason: String) -> BlkfrontError { .handshake(device: label, reason: reason) }
        let xenbus = try XenbusFrontend(domain: domain, type: "vbd", devid: devid, failure: fail)
        var queues: [Queue] = []
        var order = 0
        let front = try xenbus.connect(timeout: timeout, failure: fail, publish: { _ in
            // What the backend allows (blkfront_setup_indirect/talk_to_blkback read these first).
            func backendNumber(_ key: String) -> Int { xenbus.backendNode(key).flatMap { Int($0) } ?? 0 }
            let maxQueues = max(1, backendNumber("multi-queue-max-queues"))
            let queueCount = max(1, min(options.queues, maxQueues))
            order = max(0, min(options.ringPageOrder, backendNumber("max-ring-page-order"), BlkfrontOptions.maxRingPageOrder))
            let nPages = 1 << order
            let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size, pages: nPages)
            for q in 0..<queueCount {
                let ring = try xenbus.grantRing(pages: nPages)
                let port = try xenbus.allocUnboundPort()
                queues.append(Queue(index: q, refs: ring.refs, ring: FrontRing(page: ring.base, layout: layout), port: port))
            }
            var nodes: [(key: String, value: String)] = []
            if nPages > 1 { nodes.append(("ring-page-order", String(order))) }
            if queueCount > 1 { nodes.append(("multi-queue-num-queues", String(queueCount))) }
            for q in queues {
                let prefix = queueCount > 1 ? "queue-\(q.index)/" : ""
                if nPages == 1 {
                    nodes.append((prefix + "ring-ref", String(q.refs[0])))
                } else {
                    for (i, r) in q.refs.enumerated() { nodes.append((prefix + "ring-ref\(i)", String(r))) }
                }
                nodes.append((prefix + "event-channel", String(q.port)))
            }
            nodes.append(("protocol", "x86_64-abi"))
            nodes.append(("feature-persistent", "1"))
            return nodes
        }, connected: {
            let features: BlkfrontFeatures
            do {
                features = try BlkfrontFeatures.parse(backendPath: xenbus.device.backendPath, xenbus.backendNode)
            } catch {
                throw fail("\(error)")
            }
            let indirect = min(options.maxIndirectSegments, features.maxIndirectSegments)
            let maxSegments = indirect > Blkif.maxSegmentsPerRequest ? indirect : Blkif.maxSegmentsPerRequest
            return Blkfront(xenbus: xenbus, features: features, queues: queues, ringPageOrder: order, maxSegments: maxSegments)
        })
        // The backend going Closing means the toolstack is removing the device; the flag the
        // watch raises is looked at by the driving thread.
        xenbus.watchBackend()
        return front
    }

    // MARK: submitting

    /// IOs submitted and not yet finished (this device's own synchronous ones included).
    public var outstanding: Int { unfinished }
    /// Ring requests on the rings now.
    public var requestsInFlight: Int { queues.reduce(0) { $0 + $1.shadow.inFlight } }
    /// The device is closed (by `close()`, or by itself after the toolstack detached it).
    public var isClosed: Bool { if case .closed = state { return true } else { return false } }
    /// The toolstack is detaching the device: nothing new is accepted, what is in flight finishes.
    public var isDetaching: Bool { if case .detaching = state { return true } else { return false } }

    private func checkUsable() throws {
        checkBackend()
        switch state {
        case .connected: return
        case let .broken(e): throw e
        case .closed, .detaching: throw BlkfrontError.closed(device: label)
        }
    }

    private func checkRange(_ op: BlkfrontOperation, sector: UInt64, count: Int) throws {
        guard count > 0 else { throw BlkfrontError.badRequest(device: label, reason: "\(op) of \(count) sectors at sector \(sector)") }
        guard sector <= features.sectors, UInt64(count) <= features.sectors - sector else {
            throw BlkfrontError.badRequest(device: label,
                                           reason: "\(op) of \(count) sectors at sector \(sector) is past the end of the disk (\(features.sectors) sectors)")
        }
        let unit = UInt64(features.sectorSize / Blkif.sectorSize)
        if unit > 1 && (sector % unit != 0 || UInt64(count) % unit != 0) {
            throw BlkfrontError.badRequest(device: label,
                                           reason: "\(op) of \(count) sectors at sector \(sector) is not aligned to the \(features.sectorSize)-byte sector size")
        }
    }

    @discardableResult
    private func enqueue(_ op: BlkfrontOperation, sector: UInt64, count: Int, tag: UInt64, secure: Bool = false,
                         data: [UInt8], into: UnsafeMutableRawPointer? = nil, isInternal: Bool) -> UInt64 {
        let transfer = op == .read || op == .write
        let chunks = transfer ? BlkfrontPlan.chunkCount(sector: sector, count: count, maxSegments: maxSegmentsPerRequest) : 1
        let io = IO(serial: nextSerial, tag: tag, op: op, sector: sector, count: count, secure: secure, isInternal: isInternal,
                    data: data, into: into, remaining: chunks)
        nextSerial += 1
        unfinished += 1
        if transfer {
            for k in 0..<chunks {
                queue.append(Work(io: io, chunk: BlkfrontPlan.chunk(k, sector: sector, count: count, maxSegments: maxSegmentsPerRequest)))
            }
        } else {
            queue.append(Work(io: io, chunk: nil))
        }
        pump()
        return io.serial
    }

    /// Starts reading `count` 512-byte sectors from `sector`; the bytes come with the completion.
    public func submitRead(sector: UInt64, count: Int, tag: UInt64) throws {
        try checkUsable()
        try checkRange(.read, sector: sector, count: count)
        enqueue(.read, sector: sector, count: count, tag: tag, data: [UInt8](repeating: 0, count: count * Blkif.sectorSize),
                isInternal: false)
    }

    /// Starts reading `count` 512-byte sectors from `sector` into `buffer` (at least `count * 512`
    /// bytes), as a block layer reads into a bio's pages: nothing is allocated per read. The
    /// buffer must stay valid, and unread by the caller, until the completion, whose result is
    /// then `.success(nil)` (after a failure its contents are undefined).
    public func submitRead(sector: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer, tag: UInt64) throws {
        try checkUsable()
        try checkRange(.read, sector: sector, count: count)
        guard let base = buffer.baseAddress, buffer.count >= count * Blkif.sectorSize else {
            throw BlkfrontError.badRequest(device: label, reason: "read of \(count) sectors into a buffer of \(buffer.count) bytes")
        }
        enqueue(.read, sector: sector, count: count, tag: tag, data: [], into: base, isInternal: false)
    }

    /// Starts writing `data` (a non-zero multiple of 512 bytes, copied now) from `sector`.
    public func submitWrite(sector: UInt64, data: UnsafeRawBufferPointer, tag: UInt64) throws {
        try submitWrite(sector: sector, bytes: [UInt8](data), tag: tag, isInternal: false)
    }

    /// Starts writing `data` (a non-zero multiple of 512 bytes) from `sector`.
    public func submitWrite(sector: UInt64, data: [UInt8], tag: UInt64) throws {
        try submitWrite(sector: sector, bytes: data, tag: tag, isInternal: false)
    }

    @discardableResult
    private func submitWrite(sector: UInt64, bytes: [UInt8], tag: UInt64, isInternal: Bool) throws -> UInt64 {
        try checkUsable()
        if features.readOnly { throw BlkfrontError.readOnly(device: label) }
        guard bytes.count % Blkif.sectorSize == 0 else {
            throw BlkfrontError.badRequest(device: label, reason: "write of \(bytes.count) bytes is not a multiple of 512")
        }
        try checkRange(.write, sector: sector, count: bytes.count / Blkif.sectorSize)
        return enqueue(.write, sector: sector, count: bytes.count / Blkif.sectorSize, tag: tag, data: bytes, isInternal: isInternal)
    }

    /// Starts a cache flush: `BLKIF_OP_FLUSH_DISKCACHE` (or `WRITE_BARRIER` when only
    /// `feature-barrier` is offered), no segments. It covers the writes that had completed when
    /// it was submitted (requests in flight are unordered, as in Linux).
    public func submitFlush(tag: UInt64) throws {
        try checkUsable()
        guard canFlush else { throw BlkfrontError.unsupported(device: label, operation: "flush (no feature-flush-cache or feature-barrier)") }
        enqueue(.flush, sector: 0, count: 0, tag: tag, data: [], isInternal: false)
    }

    /// Starts discarding `count` sectors from `sector` (`BLKIF_OP_DISCARD`); `secure` asks for
    /// BLKIF_DISCARD_SECURE (only when the backend offers `discard-secure`). What discarded
    /// sectors read back as is up to the backend.
    public func submitDiscard(sector: UInt64, count: Int, secure: Bool = false, tag: UInt64) throws {
        try submitDiscard(sector: sector, count: count, secure: secure, tag: tag, isInternal: false)
    }

    @discardableResult
    private func submitDiscard(sector: UInt64, count: Int, secure: Bool, tag: UInt64, isInternal: Bool) throws -> UInt64 {
        try checkUsable()
        if features.readOnly { throw BlkfrontError.readOnly(device: label) }
        guard canDiscard else { throw BlkfrontError.unsupported(device: label, operation: "discard (no feature-discard)") }
        if secure && !features.discardSecure {
            throw BlkfrontError.unsupported(device: label, operation: "secure discard (no discard-secure)")
        }
        try checkRange(.discard, sector: sector, count: count)
        return enqueue(.discard, sector: sector, count: count, tag: tag, secure: secure, data: [], isInternal: isInternal)
    }

    /// A queue with a free slot and room on its ring, round robin from `nextQueue`.
    private func queueWithRoom() -> Queue? {
        for i in 0..<queues.count {
            let q = queues[(nextQueue + i) % queues.count]
            if q.shadow.hasFreeSlot && !q.ring.isFull {
                nextQueue = (q.index + 1) % queues.count
                return q
            }
        }
        return nil
    }

    /// Puts queued work on the rings while slots are free, then publishes and notifies.
    private func pump() {
        guard case .connected = state else { return }
        while queueHead < queue.count, let q = queueWithRoom() {
            let work = queue[queueHead]
            if work.io.error != nil && work.chunk != nil {
                // An earlier chunk of this transfer already failed: do not send the rest.
                queueHead += 1
                finishChunk(work.io)
                continue
            }
            let op: BlkifOp
            switch work.io.op {
            case .read: op = .read
            case .write: op = .write
            case .flush: op = features.flushCache ? .flushDiskcache : .writeBarrier
            case .discard: op = .discard
            }
            let indirect = (work.chunk?.segmentCount ?? 0) > Blkif.maxSegmentsPerRequest
            // Indirect requests are answered with their indirect_op: the shadow expects that.
            guard let (id, slot) = q.shadow.issue(op: op, payload: work) else { break }
            let request: BlkifRequest
            if let chunk = work.chunk {
                do {
                    try ensurePages(q, slot: slot, count: chunk.segmentCount)
                    if indirect { try ensureIndirectPages(q, slot: slot, count: BlkifRequest.Indirect.pageCount(segments: chunk.segmentCount)) }
                } catch {
                    q.shadow.cancel(slot: slot)
                    queueHead += 1
                    work.io.error = work.io.error ?? .badRequest(device: label, reason: "cannot grant data pages: \(error)")
                    finishChunk(work.io)
                    continue
                }
                let pages = q.slotPages[slot]
                if op == .write {
                    work.io.data.withUnsafeBytes { src in
                        var offset = chunk.bufferOffset
                        for i in 0..<chunk.segmentCount {
                            let s = chunk.segment(i)
                            (pages[s.page].page.base + s.byteOffset).copyMemory(from: src.baseAddress! + offset, byteCount: s.byteCount)
                            offset += s.byteCount
                        }
                    }
                }
                if indirect {
                    let segments = (0..<chunk.segmentCount).map { chunk.segment($0, gref: pages[$0].ref) }
                    let ind = q.slotIndirect[slot]
                    let count = BlkifRequest.Indirect.pageCount(segments: segments.count)
                    BlkifRequest.Indirect.store(segments, to: ind.prefix(count).map(\.page.base))
                    request = .indirect(.init(indirectOp: op, nrSegments: UInt16(segments.count), handle: handle, id: id,
                                              sectorNumber: chunk.sectorNumber, indirectGrefs: ind.prefix(count).map(\.ref)))
                } else {
                    // The common request: encoded straight into its slot.
                    guard let slotPointer = q.ring.nextRequest() else { q.shadow.cancel(slot: slot); break }
                    BlkifRequest.encodeReadWrite(to: slotPointer, operation: op, handle: handle, id: id, sectorNumber: chunk.sectorNumber,
                                                 segmentCount: chunk.segmentCount) { chunk.segment($0, gref: pages[$0].ref) }
                    queueHead += 1
                    q.placed += 1
                    continue
                }
            } else if op == .discard {
                request = .discard(.init(secure: work.io.secure, handle: handle, id: id, sectorNumber: work.io.sector,
                                         nrSectors: UInt64(work.io.count)))
            } else {
                request = .readWrite(.init(operation: op, handle: handle, id: id, sectorNumber: 0, segments: []))
            }
            guard let slotPointer = q.ring.nextRequest() else { q.shadow.cancel(slot: slot); break }
            request.encode(to: slotPointer)
            queueHead += 1
            q.placed += 1
        }
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        } else if queueHead > 1024 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        // Inside `batch`, every `batchPublish` requests go out: the disk starts on the first ones
        // while the rest are prepared.
        if batching > 0 && !queues.contains(where: { $0.placed >= batchPublish }) { return }
        publish()
    }

    /// Publishes the requests placed on the rings and notifies the backends that asked for it.
    private func publish() {
        for q in queues where q.placed > 0 {
            q.placed = 0
            if q.ring.pushRequests() {
                do {
                    try domain.eventChannels.send(q.port)
                } catch {
                    // A backend being restarted answers what is on the ring once it is back.
                    if checkPorts() == nil { continue }
                    disconnect("cannot notify the backend on event channel \(q.port): \(error)")
                    return
                }
            }
        }
    }

    /// Allocates and grants (once) pages into `list` until it has `count`.
    private func grow(_ list: inout [Grant], to count: Int, readonly: Bool) throws {
        while list.count < count { list.append(try xenbus.grantPage(readonly: readonly)) }
    }

    /// The slot's first `count` data pages, granted read-write on first use.
    private func ensurePages(_ q: Queue, slot: Int, count: Int) throws {
        try grow(&q.slotPages[slot], to: count, readonly: false)
    }

    /// The slot's first `count` indirect pages (granted read-only as Linux does: the backend only reads them).
    private func ensureIndirectPages(_ q: Queue, slot: Int, count: Int) throws {
        try grow(&q.slotIndirect[slot], to: count, readonly: true)
    }

    // MARK: completing

    /// Takes the backend's responses, finishes what they complete and puts queued work on the
    /// freed slots; never blocks. Returns how many requests (yours and the synchronous calls')
    /// finished. A protocol violation disables the device (`brokenBackend`): everything
    /// outstanding then finishes with that error. Also notices the toolstack detaching the
    /// device (the backend going Closing): the device then closes itself once its rings are
    /// empty (`isClosed`).
    @discardableResult
    public func process() -> Int {
        let before = unfinished
        checkBackend()
        if backendAway { checkPorts() }
        switch state {
        case .connected, .detaching: break
        default: return before - unfinished
        }
        do {
            for q in queues {
                while true {
                    while let slot = try q.ring.takeResponse() {
                        let response = try BlkifResponse.decode(slot: slot)
                        let done = try q.shadow.complete(response)
                        complete(q, done.payload, op: done.op, slot: done.slot, status: response.status)
                    }
                    // RING_FINAL_CHECK_FOR_RESPONSES while requests are out: arms rsp_event.
                    if q.shadow.inFlight == 0 || !q.ring.finalCheckForResponses() { break }
                }
            }
        } catch {
            breakDevice(.brokenBackend(device: label, reason: "\(error)"))
            return before - unfinished
        }
        if case .detaching = state {
            if requestsInFlight == 0 && !closing { close() }
        } else {
            pump()
        }
        return before - unfinished
    }

    /// Nil when the ports are usable or the backend is away for a restart (see `backendAway`);
    /// the backend's state when a port was closed by a backend that is not Connected any more
    /// (named in the error the guest then gets). Coming back: every queue is notified, so the
    /// new backend looks at what waits on the rings.
    @discardableResult
    private func checkPorts() -> XenbusState? {
        let ev = domain.eventChannels
        if queues.allSatisfy({ ev.isConnected($0.port) }) {
            if backendAway {
                backendAway = false
                for q in queues { try? ev.send(q.port) }
            }
            return nil
        }
        let s = xenbus.backendState()
        guard s == .connected else { return s }
        backendAway = true
        return nil
    }

    /// Acts on a change of the backend's state the watch flagged: Closing starts the detach;
    /// Closed or gone fails what is in flight (the backend will not answer it) and closes.
    private func checkBackend() {
        guard let s = xenbus.backendStateIfChanged() else { return }
        switch (state, s) {
        case (.connected, .closing):
            state = .detaching
            failQueued(.closed(device: label))
        case (.connected, .closed), (.connected, .unknown), (.detaching, .closed), (.detaching, .unknown):
            breakDevice(.disconnected(device: label, reason: s == .unknown ? "the toolstack removed the device" : "the backend closed the device"))
            if !closing { close(timeout: 1) }
        default:
            break
        }
    }

    /// For an application running its own `waitAny` loop: processes this device when `port` is
    /// one of its ports and returns true; false for any other port (which is left to the caller).
    @discardableResult
    public func handleEvent(_ port: EventChannels.Port) -> Bool {
        guard queues.contains(where: { $0.port == port }) else { return false }
        process()
        return true
    }

    private func complete(_ q: Queue, _ work: Work, op: BlkifOp, slot: Int, status: BlkifStatus) {
        let io = work.io
        if status == .okay {
            if let chunk = work.chunk, op == .read {
                let pages = q.slotPages[slot]
                func copy(to dst: UnsafeMutableRawPointer) {
                    var offset = chunk.bufferOffset
                    for i in 0..<chunk.segmentCount {
                        let s = chunk.segment(i)
                        (dst + offset).copyMemory(from: pages[s.page].page.base + s.byteOffset, byteCount: s.byteCount)
                        offset += s.byteCount
                    }
                }
                if let into = io.into {
                    copy(to: into)
                } else {
                    io.data.withUnsafeMutableBytes { copy(to: $0.baseAddress!) }
                }
            }
        } else {
            if status == .eopnotsupp {
                // As Linux's blkif_interrupt: the backend refused it, stop offering it.
                if op == .flushDiskcache || op == .writeBarrier { canFlush = false }
                if op == .discard { canDiscard = false }
            }
            let sector = work.chunk?.sectorNumber ?? io.sector
            let count = work.chunk.map { UInt64($0.sectorCount) } ?? UInt64(io.count)
            if io.error == nil {
                io.error = .io(device: label, operation: op, sector: sector, sectors: count, status: status)
            }
        }
        finishChunk(io)
    }

    /// One of the IO's chunks is done (or abandoned); the IO finishes with its last.
    private func finishChunk(_ io: IO) {
        io.remaining -= 1
        guard io.remaining == 0 else { return }
        unfinished -= 1
        let result: Result<[UInt8]?, BlkfrontError>
        if let e = io.error {
            result = .failure(e)
        } else {
            result = .success(io.op == .read && io.into == nil ? io.data : nil)
        }
        io.data = []
        if io.isInternal {
            internalResults[io.serial] = result
        } else {
            completed.append(BlkfrontCompletion(tag: io.tag, operation: io.op, sector: io.sector, count: io.count, result: result))
        }
    }

    /// Fails the work not yet on a ring.
    private func failQueued(_ error: BlkfrontError) {
        while queueHead < queue.count {
            let w = queue[queueHead]
            queueHead += 1
            if w.io.error == nil { w.io.error = error }
            finishChunk(w.io)
        }
        queue.removeAll()
        queueHead = 0
    }

    /// Fails everything outstanding with `error` and refuses further requests.
    private func breakDevice(_ error: BlkfrontError) {
        switch state {
        case .connected, .detaching: state = .broken(error)
        default: break
        }
        for q in queues {
            for e in q.shadow.removeAll() {
                if e.payload.io.error == nil { e.payload.io.error = error }
                finishChunk(e.payload.io)
            }
        }
        failQueued(error)
    }

    private func disconnect(_ reason: String) {
        breakDevice(.disconnected(device: label, reason: reason))
    }

    // MARK: waiting

    /// Sleeps in `waitAny` until `done()` or nothing can change any more; throws `timeout`.
    private func wait(timeout: Double, until done: () -> Bool) throws {
        let start = SystemTime.nanoseconds()
        let deadline = start + UInt64(max(0, timeout) * 1e9)
        let ev = domain.eventChannels
        if batching > 0, case .connected = state { publish() }  // waiting inside `batch`: nothing may stay unpublished
        while true {
            process()
            if done() { return }
            switch state {
            case .connected, .detaching: break
            default: return
            }
            guard unfinished > 0 else { return }
            if let s = checkPorts(), let q = queues.first(where: { !ev.isConnected($0.port) }) {
                disconnect("the backend closed event channel \(q.port) and is \(s)")
                continue
            }
            let now = SystemTime.nanoseconds()
            if now >= deadline { throw BlkfrontError.timeout(device: label, seconds: timeout, outstanding: unfinished) }
            // Slices of at most 100 ms, to notice a backend that goes away without a word.
            let slice = Int64(min(deadline - now, 100_000_000))
            if let p = ev.waitAny(timeoutNs: slice, spin: spin) {
                if !queues.contains(where: { $0.port == p }) { strayPorts.append(p) }
            } else if requestsInFlight > 0 {
                let s = xenbus.backendState()
                if s != .connected && s != .closing { disconnect("the backend is \(s)") }
            }
        }
    }

    /// Processes and sleeps until at least one of your requests has finished (or none is
    /// outstanding, or the device broke: its requests then finish with the error). Throws
    /// `timeout` after `timeout` seconds without one.
    public func waitForCompletions(timeout: Double) throws {
        try wait(timeout: timeout) { !completed.isEmpty }
    }

    /// Your finished requests, oldest first, removed from the device. With `wait`, sleeps first
    /// until at least one has finished when some are outstanding.
    public func completions(wait: Bool = false, timeout: Double? = nil) throws -> [BlkfrontCompletion] {
        if wait && completed.isEmpty { try waitForCompletions(timeout: timeout ?? ioTimeout) } else { process() }
        defer { completed.removeAll(keepingCapacity: true) }
        return completed
    }

    /// Returns and forgets `strayPorts`.
    public func takeStrayPorts() -> [EventChannels.Port] {
        defer { strayPorts.removeAll() }
        return strayPorts
    }

    private func waitInternal(_ serial: UInt64) throws -> [UInt8]? {
        try wait(timeout: ioTimeout) { internalResults[serial] != nil }
        guard let r = internalResults.removeValue(forKey: serial) else {
            throw BlkfrontError.disconnected(device: label, reason: "request lost")  // cannot happen: every IO finishes
        }
        return try r.get()
    }

    // MARK: synchronous calls (your asynchronous completions stay queued for `completions`)

    /// Reads `count` sectors from `sector`.
    public func read(sector: UInt64, count: Int) throws -> [UInt8] {
        try checkUsable()
        try checkRange(.read, sector: sector, count: count)
        let serial = enqueue(.read, sector: sector, count: count, tag: 0,
                             data: [UInt8](repeating: 0, count: count * Blkif.sectorSize), isInternal: true)
        return try waitInternal(serial) ?? []
    }

    /// Writes `data` (a non-zero multiple of 512 bytes) from `sector`.
    public func write(sector: UInt64, data: [UInt8]) throws {
        _ = try waitInternal(try submitWrite(sector: sector, bytes: data, tag: 0, isInternal: true))
    }

    public func write(sector: UInt64, data: UnsafeRawBufferPointer) throws {
        try write(sector: sector, data: [UInt8](data))
    }

    /// Waits for everything outstanding (its completions stay queued), then flushes.
    public func flush() throws {
        try checkUsable()
        guard canFlush else { throw BlkfrontError.unsupported(device: label, operation: "flush (no feature-flush-cache or feature-barrier)") }
        try wait(timeout: ioTimeout) { unfinished == 0 }
        try checkUsable()
        _ = try waitInternal(enqueue(.flush, sector: 0, count: 0, tag: 0, data: [], isInternal: true))
    }

    /// Discards `count` sectors from `sector`.
    public func discard(sector: UInt64, count: Int, secure: Bool = false) throws {
        _ = try waitInternal(try submitDiscard(sector: sector, count: count, secure: secure, tag: 0, isInternal: true))
    }

    // MARK: teardown

    /// Lets outstanding requests finish (up to `timeout` seconds; the rest fail with `closed`),
    /// then Closing, waits for the backend to close, Closed, waits for it to let go of the pages,
    /// ends every grant and closes the event channels (`XenbusFrontend.close`). Pages the backend
    /// still maps after the timeout are left granted (never reused). Idempotent.
    public func close(timeout: Double = 10) {
        if closing { return }
        closing = true
        xenbus.stopWatchingBackend()
        let deadline = XenbusDeadline(seconds: timeout)
        switch state {
        case .connected, .detaching: try? wait(timeout: deadline.left) { unfinished == 0 }
        default: break
        }
        breakDevice(.closed(device: label))
        state = .closed
        xenbus.close(deadline: deadline)
        for q in queues {
            q.slotPages = Array(repeating: [], count: q.slotPages.count)
            q.slotIndirect = Array(repeating: [], count: q.slotIndirect.count)
        }
    }
}

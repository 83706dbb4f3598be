import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

/// blkback: serves the vbds the toolstack assigns to this driver domain
/// (`/local/domain/SELF/backend/vbd/F/DEVID`). One thread per device does the xenbus handshake
/// (Linux's connect_ring: multi-queue, multi-page rings, persistent grants, indirect segments)
/// and watches the frontend. Each queue has its own I/O engine working straight in the
/// frontend's granted pages (kept mapped when both ends support `feature-persistent`). The
/// caller's thread becomes the event dispatcher: it takes every event of the domain and takes the
/// requests off that queue's ring into its engine itself (no hand-off on the way in); each queue
/// has a thread that answers completions and runs barriers. A frontend that puts garbage on a
/// ring is disconnected; the others keep being served.
///
/// Settings (the driver domain's command line, KEY=VALUE): `PROCVISOR_FORCE_NO_IOURING=1` forces
/// the thread pool; `direct-io=0` keeps the page cache (by default the image is used with O_DIRECT
/// when its file system allows); `max-queues=N` (`multi-queue-max-queues`, default the vCPUs).
public final class Blkback {
    let domain: Domain
    let log: (String) -> Void
    let environment: [String: String]
    private let lock = Lock()
    private lazy var devices = BackendDevices<BlkbackDevice>(
        domain: domain, type: "vbd", make: { [unowned self] f, d in BlkbackDevice(domain: domain, frontend: f, devid: d, owner: self) },
        start: { [domain] device in domain.startVCPU(-10) { _ in device.run() } }, stop: { $0.requestStop() })
    private var byPort: [EventChannels.Port: BlkbackQueue] = [:]
    private let dispatcherKick = Kick()

    public init(domain: Domain, environment: [String: String] = [:], log: @escaping (String) -> Void) {
        self.domain = domain
        self.environment = environment
        self.log = log
    }

    /// `submit=queue`: the queue thread takes the requests (the dispatcher only kicks it), so
    /// the thread that submits to io_uring is the one that waits for its completions.
    var queueThreadSubmits: Bool { environment["submit"] == "queue" }
    /// Whether a queue may run on one thread that sleeps in its io_uring, waiting for its
    /// completions and the domain's doorbell at once (the default; `dispatch=1` or `submit=queue`
    /// keep the event dispatcher).
    var ownedQueues: Bool { environment["dispatch"] != "1" && !queueThreadSubmits }
    /// `spin=N`: doorbell checks the dispatcher makes before it sleeps (0: sleep at once).
    var spin: Int { environment["spin"].flatMap(Int.init).map { max(0, $0) } ?? 0 }
    /// `poll-us=N`: microseconds a queue thread with I/O in flight keeps looking for completions
    /// before it sleeps (0: sleep at once). Unset, dispatched queues sleep at once and owned
    /// queues poll adaptively up to `AdaptivePoll.defaultMaxNs`.
    var pollNs: UInt64? { environment["poll-us"].flatMap(UInt64.init).map { min($0, 10_000) * 1000 } }

    /// Staging memory for large requests (`BounceBuffers`), all queues together: it is this
    /// process's own memory, out of the headroom the supervisor's memory limit leaves above the
    /// domain's RAM (64 MiB), so it is capped: `staging-mib=N`, 16 by default, 0 for none.
    private lazy var stagingBudget: Int = (environment["staging-mib"].flatMap(Int.init).map { max(0, min($0, 1024)) } ?? 16) << 20
    private var stagingUsed = 0

    /// Takes `bytes` of the staging budget; false when that would exceed it.
    func reserveStaging(_ bytes: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard stagingUsed + bytes <= stagingBudget else { return false }
        stagingUsed += bytes
        return true
    }

    func releaseStaging(_ bytes: Int) {
        lock.lock()
        stagingUsed -= bytes
        lock.unlock()
    }

    /// `multi-queue-max-queues`: one per vCPU of this driver domain (Linux's xenblk_max_queues
    /// is dom0's online CPUs), at most 16.
    var maxQueues: Int {
        if let v = environment["max-queues"].flatMap(Int.init), v >= 1 { return min(v, 16) }
        return max(1, min(16, Int(domain.startInfo.vcpus)))
    }

    /// Watches for devices and dispatches events forever.
    public func run() -> Never {
        do {
            try domain.store.watch("backend/vbd", token: "blkback:devices") { [unowned self] _ in devices.scan() }
        } catch {
            log("blkback: cannot watch backend/vbd: \(error)")
            domain.shutdown(.crash)
        }
        log("blkback: dom\(domain.domid) serving vbds")
        while true {
            lock.lock()
            let dispatching = !byPort.isEmpty
            lock.unlock()
            // Queues that wait on their own io_uring take their events themselves: without
            // others, this thread stays off the doorbell (it would wake with every event).
            guard dispatching else {
                dispatcherKick.wait(timeoutMs: 1000)
                continue
            }
            for port in domain.eventChannels.wait(timeoutNs: 1_000_000_000, spin: spin) {
                lock.lock()
                let q = byPort[port]
                lock.unlock()
                if queueThreadSubmits { q?.kick() } else { q?.serviceRing() }
            }
        }
    }

    /// A queue whose requests this thread takes (one without its own io_uring wait).
    func registered(_ q: BlkbackQueue, port: EventChannels.Port) {
        lock.lock(); byPort[port] = q; lock.unlock()
        dispatcherKick.raise()
    }

    /// Queues about to close their ports: their events stop coming here. Called before the
    /// ports are closed, and an entry goes only while it is still this queue's: once closed, a
    /// port number can be bound again at once by a device connecting meanwhile, and that
    /// device's queue must keep its entry.
    func unregister(_ queues: [BlkbackQueue]) {
        lock.lock()
        for q in queues {
            if let p = q.port, byPort[p] === q { byPort[p] = nil }
        }
        lock.unlock()
    }

    /// The device thread ended.
    func finished(_ d: BlkbackDevice) {
        devices.finished(frontend: d.frontend, devid: d.devid)
    }
}

/// Why a device stopped being served.
enum BlkbackStop: Error, CustomStringConvertible {
    case ring(queue: Int, RingError)
    case removed
    case frontendClosed
    case setup(String)

    var description: String {
        switch self {
        case let .ring(q, e): return "the frontend corrupted ring \(q) (\(e)); disconnected"
        case .removed: return "device removed by the toolstack"
        case .frontendClosed: return "the frontend closed the device"
        case let .setup(why): return why
        }
    }
}

/// A kick eventfd: the dispatcher (or anyone) wakes a thread that polls it.
///
/// Closing is safe against late raisers. A XenStore watch callback already on its way, or a
/// thread that has not seen its device finish, can still raise a kick after the owner closed
/// it; a write to the closed descriptor number would land in whatever file took that number
/// next. In a driver domain that is usually a grant page's memfd just received from the
/// supervisor: the frontend's page then starts with a 64-bit 1, and that is what reached the
/// disk. So `raise` and `close` take a lock, and a closed kick ignores raises. `drain` and
/// `wait` are for the owner's thread, which closes the kick only after its last wait.
final class Kick {
    let fd: FileDescriptor
    private let mutex = Lock()
    private var closed = false

    /// Non-blocking: a kick already consumed leaves nothing to wait for in `drain`.
    init() {
        fd = (try? FileDescriptor.eventfd()) ?? FileDescriptor(rawValue: -1)
        if fd.rawValue >= 0 { try? fd.setNonBlocking() }
    }

    deinit { close() }

    var valid: Bool { fd.rawValue >= 0 }

    func raise() {
        mutex.lock()
        if !closed && valid {
            var one: UInt64 = 1
            _ = Glibc.write(fd.rawValue, &one, 8)
        }
        mutex.unlock()
    }

    /// Closes the eventfd; later raises do nothing. Idempotent.
    func close() {
        mutex.lock()
        if !closed {
            closed = true
            if valid { fd.close() }
        }
        mutex.unlock()
    }

    /// Consumes a pending kick, if any (never blocks).
    func drain() {
        var v: UInt64 = 0
        _ = Glibc.read(fd.rawValue, &v, 8)
    }

    /// Sleeps until kicked, `other` is readable or `timeoutMs` passes; consumes the kick.
    func wait(timeoutMs: Int32, other: FileDescriptor? = nil) {
        var fds = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
        if let other { fds.append(pollfd(fd: other.rawValue, events: Int16(POLLIN), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), timeoutMs)
        var v: UInt64 = 0
        if fds[0].revents != 0 { _ = Glibc.read(fd.rawValue, &v, 8) }
    }
}

/// One vbd: its image, the handshake, its queues.
final class BlkbackDevice {
    let domain: Domain
    let frontend: UInt16
    let devid: UInt32
    unowned let owner: Blkback
    private let kick = Kick()
    /// Non-zero: every queue stops (set by the device thread, or by a queue whose ring is corrupt).
    var stop: UInt32 = 0
    private let failureLock = Lock()
    private var failure: BlkbackStop?
    private var queuesRunning: UInt32 = 0
    var dir: String { "backend/vbd/\(frontend)/\(devid)" }
    var label: String { "vbd \(frontend)/\(devid)" }

    /// `feature-max-indirect-segments` (Linux's MAX_INDIRECT_SEGMENTS).
    static let maxIndirectSegments = 256
    /// `max-ring-page-order` (XENBUS_MAX_RING_GRANT_ORDER).
    static let maxRingPageOrder = 4

    // Set up by `connect`.
    private(set) var disk: FileDescriptor?
    private(set) var sectors: UInt64 = 0
    private(set) var readOnly = false
    private(set) var persistent = false
    private(set) var direct = false
    private var queues: [BlkbackQueue] = []
    private var frontendDir = ""
    private var watchToken: String?

    init(domain: Domain, frontend: UInt16, devid: UInt32, owner: Blkback) {
        self.domain = domain
        self.frontend = frontend
        self.devid = devid
        self.owner = owner
    }

    /// Any thread: the device thread wakes, stops its queues and tears the device down.
    func requestStop() {
        SharedAtomic.store(&stop, 1)
        kick.raise()
    }

    /// A queue hit something fatal for the whole device (a corrupt ring).
    func fail(_ why: BlkbackStop) {
        failureLock.lock()
        if failure == nil { failure = why }
        failureLock.unlock()
        requestStop()
    }

    /// A queue thread ended.
    func queueEnded() {
        _ = SharedAtomic.fetchAdd(&queuesRunning, UInt32.max)  // -1
        kick.raise()
    }

    func run() {
        let xs = domain.store
        do {
            try connect()
            let engineName = queues.first?.engineName ?? "?"
            owner.log("blkback: \(label) connected (\(sectors) sectors, \(readOnly ? "ro" : "rw"), \(engineName), \(direct ? "direct I/O" : "buffered I/O"), \(queues.count) queue\(queues.count == 1 ? "" : "s") of \(queues.first?.slots ?? 0) slots, persistent grants \(persistent ? "on" : "off"))")
            SharedAtomic.store(&queuesRunning, UInt32(queues.count))
            for q in queues { domain.startVCPU(-11) { _ in q.run() } }
            try supervise()
        } catch let e as BlkbackStop {
            owner.log("blkback: \(label): \(e)")
        } catch {
            owner.log("blkback: \(label): \(error)")
        }
        // Every queue stops, then Closing, then Closed once everything is unmapped (Linux's
        // xen_blkif_disconnect order).
        SharedAtomic.store(&stop, 1)
        queues.forEach { $0.kick() }
        while SharedAtomic.load(&queuesRunning) != 0 { kick.wait(timeoutMs: 100) }
        if let t = watchToken { try? xs.unwatch(frontendDir + "/state", token: t) }
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closing.storeValue) }
        owner.unregister(queues)
        queues.forEach { $0.teardown() }
        queues = []
        disk?.close()
        disk = nil
        kick.close()
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closed.storeValue) }
        owner.finished(self)
    }

    /// While the queues serve: wakes on the frontend's state (a watch) and on stop requests.
    private func supervise() throws {
        while true {
            kick.wait(timeoutMs: 1000)
            failureLock.lock()
            let f = failure
            failureLock.unlock()
            if let f { throw f }
            if SharedAtomic.load(&stop) != 0 { throw BlkbackStop.removed }
            if SharedAtomic.load(&queuesRunning) == 0 { throw BlkbackStop.removed }
            guard read("frontend") != nil else { throw BlkbackStop.removed }
            let s = (try? domain.store.read(frontendDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .closed
            if s == .closing || s == .closed { throw BlkbackStop.frontendClosed }
        }
    }

    private func read(_ key: String) -> String? { try? domain.store.read(dir + "/" + key) }

    private func connect() throws {
        let xs = domain.store
        guard kick.valid else { throw BlkbackStop.setup("cannot create an eventfd") }
        guard let feDir = read("frontend") else { throw BlkbackStop.removed }
        frontendDir = feDir
        let fd = try domain.deviceFD(.vbd, frontend: frontend, devid: devid)
        disk = fd
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw BlkbackStop.setup("fstat of the image: \(Errno.current)") }
        let bytes = (st.st_mode & S_IFMT) == S_IFBLK ? UInt64(max(0, lseek(fd.rawValue, 0, SEEK_END))) : UInt64(st.st_size)
        sectors = bytes / 512
        readOnly = read("mode") == "r"
        direct = owner.environment["direct-io"] != "0" && Self.useDirectIO(fd)
        let discard = read("discard-enable") != "0" && !readOnly
        let maxQueues = owner.maxQueues
        // What Linux's blkback advertises.
        var keys: [(String, String)] = [
            ("feature-flush-cache", "1"), ("feature-barrier", "1"), ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "\(Self.maxIndirectSegments)"),
            ("multi-queue-max-queues", "\(maxQueues)"), ("max-ring-page-order", "\(Self.maxRingPageOrder)"),
            ("sectors", "\(sectors)"), ("sector-size", "512"), ("physical-sector-size", "512"),
            ("info", readOnly ? "\(Blkif.vdiskReadOnly)" : "0"),
        ]
        if discard {
            keys += [("feature-discard", "1"), ("discard-granularity", "4096"), ("discard-alignment", "0"), ("discard-secure", "0")]
        }
        for (k, v) in keys { try xs.write(dir + "/" + k, v) }
        let token = "blkback:\(frontend)/\(devid)"
        try? xs.watch(feDir + "/state", token: token) { [kick] _ in kick.raise() }
        watchToken = token
        try xs.write(dir + "/state", XenbusState.initWait.storeValue)
        // Wait for the frontend to publish its rings (Initialised) or be Connected.
        while true {
            if SharedAtomic.load(&stop) != 0 { throw BlkbackStop.removed }
            let s = (try? xs.read(feDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .unknown
            if s == .initialised || s == .connected { break }
            // A frontend directory that vanished (forced removal before it connected) reads as
            // Unknown: Linux's blkback unregisters then too.
            if s == .closing || s == .closed || s == .unknown { throw BlkbackStop.frontendClosed }
            kick.wait(timeoutMs: 100)
        }
        func feRead(_ key: String) -> String? { try? xs.read(feDir + "/" + key) }
        if let proto = feRead("protocol"), proto != "x86_64-abi" {
            throw BlkbackStop.setup("frontend protocol \(proto) is not supported (x86_64-abi only)")
        }
        persistent = feRead("feature-persistent") == "1"
        // connect_ring: queues, then ring pages (the frontend's numbers are checked, not trusted).
        var nq = 1
        if let text = feRead("multi-queue-num-queues") {
            guard let n = Int(text), n >= 1, n <= maxQueues else {
                throw BlkbackStop.setup("frontend \(feDir) asks for \(text) queues; multi-queue-max-queues is \(maxQueues)")
            }
            nq = n
        }
        var order: Int?
        if let text = feRead("ring-page-order") {
            guard let o = Int(text), o >= 0, o <= Self.maxRingPageOrder else {
                throw BlkbackStop.setup("frontend \(feDir) asks for ring-page-order \(text); max-ring-page-order is \(Self.maxRingPageOrder)")
            }
            order = o
        }
        for q in 0..<nq {
            let qdir = nq > 1 ? "\(feDir)/queue-\(q)" : feDir
            var refs: [GrantRef] = []
            if let order {
                for i in 0..<(1 << order) {
                    guard let t = try? xs.read("\(qdir)/ring-ref\(i)"), let r = GrantRef(t) else {
                        throw BlkbackStop.setup("frontend \(qdir) has no valid ring-ref\(i)")
                    }
                    refs.append(r)
                }
            } else {
                guard let t = try? xs.read("\(qdir)/ring-ref"), let r = GrantRef(t) else {
                    throw BlkbackStop.setup("frontend \(qdir) has no valid ring-ref")
                }
                refs.append(r)
            }
            guard let t = try? xs.read("\(qdir)/event-channel"), let remotePort = EventChannels.Port(t) else {
                throw BlkbackStop.setup("frontend \(qdir) has no valid event-channel")
            }
            let queue = BlkbackQueue(device: self, index: q, disk: fd)
            queues.append(queue)
            try queue.connect(refs: refs, remotePort: remotePort)
            if !queue.owned { owner.registered(queue, port: queue.port!) }
        }
        try xs.write(dir + "/state", XenbusState.connected.storeValue)
    }

    /// Turns on O_DIRECT when the image's file system takes it for 512-byte aligned transfers
    /// (what blkif segments are); tmpfs and some others refuse: the page cache is used then.
    static func useDirectIO(_ fd: FileDescriptor) -> Bool {
        guard (try? fd.setDirectIO()) != nil else { return false }
        var buffer: UnsafeMutableRawPointer?
        guard posix_memalign(&buffer, 4096, 8192) == 0, let buffer else { return false }
        defer { free(buffer) }
        // A sector at a sector offset inside a page, as a segment with first_sect 1 is.
        if pread(fd.rawValue, buffer + 512, 512, 512) >= 0 { return true }
        try? fd.setDirectIO(false)
        return false
    }
}

/// One queue of a vbd: its ring (one or more pages), port, I/O engine, grant mappings, and the
/// thread that serves it.
final class BlkbackQueue {
    unowned let device: BlkbackDevice
    let index: Int
    let disk: FileDescriptor
    private let kickEvent = Kick()
    private(set) var port: EventChannels.Port?
    private var engine: BlockIOEngine?
    private var ring: BackRing?
    private var ringMapping: GrantMappingRun?
    private var domain: Domain { device.domain }
    /// Persistent grants: gref → mapping, kept until disconnect. Linux keeps 1056 per ring;
    /// mapping costs a hypercall here and a mapped page costs nothing but address space, so the
    /// limit is higher (a queue of 1 MiB requests keeps all its pages mapped).
    private var persistentMaps: [GrantRef: PersistentPage] = [:]
    /// A persistent data page: its mapping, and where transfers address it (its alias in
    /// `fixedRegion`, index `alias`, when it has one; else the mapping, alias -1).
    private struct PersistentPage {
        let mapping: GrantMapping
        let io: UnsafeMutableRawPointer
        let alias: Int
    }
    /// Owned io_uring queues: the persistent data pages again, back to back, registered with the
    /// ring as one buffer (`fixedPages` of them so far), so transfers into them skip the kernel's
    /// pinning of every page of every transfer. On unless `fixed-buffers=0`.
    private var fixedRegion: AliasRegion?
    private var fixedPages = 0
    /// `fixedRegion.count` at the queue thread's previous look.
    private var fixedSeen = 0
    private var fixedFailed = false
    /// Registered buffers are allowed (`fixed-buffers=0` turns them off).
    private let fixedAllowed: Bool
    /// Indirect pages, mapped read-only (the frontend grants them so).
    private var persistentIndirect: [GrantRef: GrantMapping] = [:]
    static let maxPersistentGrants = 8192
    /// A request in flight: its id and op, mappings to drop after completion, and for one staged
    /// in `bounce`, its run there and (reads) where the bytes go when it completes.
    private struct Pending {
        let id: UInt64
        let op: UInt8
        var transient: [GrantMapping] = []
        var bounce: BounceBuffers.Run? = nil
        var readInto: [UnsafeMutableRawBufferPointer] = []
    }
    /// Requests in flight, by engine tag.
    private var inFlight: [UInt64: Pending] = [:]
    /// Staging for large requests (`BounceBuffers`), made at the first one while the driver
    /// domain's staging budget lasts (`staging-mib=`).
    private var bounce: BounceBuffers?
    private var bounceTried = false
    /// `bounce` is registered with the owned ring as buffer 1.
    private var bounceRegistered = false
    /// Requests of at least this many bytes are staged (`bounce-min=` KiB; 64 KiB).
    private let bounceMin: Int
    /// One queue's staging: four 1 MiB transfers, or 32 of Linux's 128 KiB requests.
    static let bounceBytes = 4 << 20
    /// Requests that went through `bounce`.
    private var staged = 0
    private var nextTag: UInt64 = 1
    /// Guards everything below `port` (the dispatcher takes requests, the queue thread completes them).
    private let mutex = Lock()
    /// Set by `teardown`: nothing is touched any more.
    private var closed = false
    /// A WRITE_BARRIER taken off the ring, waiting for the queue thread to run it.
    private var barrier: BlkifRequest.ReadWrite?
    /// Why `mappings` last returned nil: `gref N (GNTST_...)`.
    private var mapFailure = ""
    private(set) var slots = 0
    /// The queue's thread owns an io_uring and sleeps in it, on completions and on the domain's
    /// doorbell (IORING_OP_FUTEX_WAIT): it takes its requests itself, no dispatcher in between.
    private(set) var owned = false
    /// Requests handed to the disk per io_uring_enter (`submit-chunk=N`, owned queues; default 4),
    /// runs of requests that continue one another on the disk excepted (`SubmitChunker`).
    private var submitChunk = Int.max
    var engineName: String { engine?.name ?? "?" }
    private var label: String { device.label + (index > 0 ? " queue \(index)" : "") }

    init(device: BlkbackDevice, index: Int, disk: FileDescriptor) {
        self.device = device
        self.index = index
        self.disk = disk
        let env = device.owner.environment
        fixedAllowed = env["fixed-buffers"] != "0"
        bounceMin = (env["bounce-min"].flatMap(Int.init).map { max(4, $0) } ?? 64) << 10
    }

    func kick() { kickEvent.raise() }

    func connect(refs: [GrantRef], remotePort: EventChannels.Port) throws {
        guard kickEvent.valid else { throw BlkbackStop.setup("cannot create an eventfd") }
        let run: GrantMappingRun
        do {
            run = try domain.grantTable.mapRun(domid: device.frontend, refs: refs)
        } catch {
            throw BlkbackStop.setup("cannot map ring \(index) (\(refs.count) page\(refs.count == 1 ? "" : "s"), grants \(refs)): \(error)")
        }
        ringMapping = run
        let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size, pages: refs.count)
        ring = BackRing(page: run.base, layout: layout)
        slots = Int(layout.count)
        let depth = max(64, slots)
        let env = device.owner.environment
        let log: (String) -> Void = { [owner = device.owner, index] line in
            if index == 0 { owner.log("blkback: \(line)") }
        }
        if device.owner.ownedQueues && env[BlockIO.forceNoIOUringVariable] != "1",
           let uring = try? IOUringBlockIOEngine(disk: disk, queueDepth: depth, owned: true) {
            if uring.supportsFutexWait {
                submitChunk = env["submit-chunk"].flatMap(Int.init).map { max(1, $0) } ?? 4
                uring.submitChunk = submitChunk
                engine = uring
                owned = true
                if device.persistent && fixedAllowed {
                    fixedRegion = try? AliasRegion(capacity: Self.maxPersistentGrants)
                }
                log("block I/O: io_uring, queue depth \(depth)\(uring.fixedFile ? ", registered file" : ""); each queue's thread sleeps in its ring, on completions and on the doorbell (IORING_OP_FUTEX_WAIT)")
            } else {
                uring.close()
            }
        }
        if engine == nil { engine = BlockIO.makeEngine(disk: disk, queueDepth: depth, environment: env, log: log) }
        port = try domain.eventChannels.bindInterdomain(remote: device.frontend, remotePort: remotePort)
    }

    /// The queue thread: completions, barriers, and the ring once at the start (requests put
    /// there before the port was registered). Requests themselves are taken by the event
    /// dispatcher (`serviceRing`), so an IO costs no hand-off between threads on its way in.
    func run() {
        if owned, let uring = engine as? IOUringBlockIOEngine {
            runOwned(uring)
        } else {
            runDispatched()
        }
        device.queueEnded()
    }

    /// The queue's thread alone: takes requests, submits them, answers completions, and sleeps
    /// in one io_uring_enter until an I/O completes, the frontend rings or the device thread
    /// kicks. Closes the engine before it returns (the ring belongs to this thread).
    private func runOwned(_ uring: IOUringBlockIOEngine) {
        do {
            try uring.adopt()
        } catch {
            device.fail(.setup("\(label): cannot take over the io_uring: \(error)"))
            locked { uring.close() }
            return
        }
        let bell = domain.eventChannels.doorbell
        var poll = AdaptivePoll(maxNs: device.owner.pollNs ?? AdaptivePoll.defaultMaxNs)
        var lastAnswered: UInt64 = 0  // when completions were last answered (monotonic ns)
        while !stopped {
            serviceRing()
            refreshFixedBuffer(uring)
            if reapAndRespond() > 0 { lastAnswered = MonotonicClock.nanoseconds() }
            if locked({ barrier != nil }) {
                runBarrier()
                continue
            }
            if uring.kicked {
                uring.kicked = false
                kickEvent.drain()
            }
            uring.doorbellRang = false
            // Idle from here. With I/O in flight, or just after answering (the frontend sends
            // the next requests within microseconds), look a while before sleeping: this vCPU
            // would halt, and a halted vCPU takes tens of microseconds to wake.
            let idleSince = MonotonicClock.nanoseconds()
            if poll.windowNs > 0 && (idleSince < lastAnswered + poll.maxNs || locked({ !inFlight.isEmpty })) {
                let deadline = idleSince + poll.windowNs
                var now = idleSince
                var nextYield = now + AdaptivePoll.yieldEveryNs
                while now < deadline && !stopped && !uring.hasCompletions && !hasRequests {
                    SharedAtomic.relax()
                    now = MonotonicClock.nanoseconds()
                    if now >= nextYield {
                        sched_yield()  // a runnable frontend on this vCPU goes first
                        nextYield = now + AdaptivePoll.yieldEveryNs
                    }
                }
                if now < deadline { continue }
            }
            // Sleep, unless something arrived: counted as a sleeper first, so a frontend that
            // rings after the check below wakes the futex wait.
            SharedAtomic.fetchAdd(bell.sleepers, 1)
            let seen = SharedAtomic.load(bell.word)
            if !stopped && !hasRequests && !uring.hasCompletions {
                uring.armDoorbell(bell.word, expected: seen)
                uring.armKick(kickEvent.fd)
                uring.waitForEvent()
                poll.idled(MonotonicClock.nanoseconds() - idleSince)
            }
            SharedAtomic.fetchAdd(bell.sleepers, UInt32.max)  // -1
        }
        locked {
            uring.close()
            for (_, f) in inFlight where !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
            inFlight.removeAll()
        }
    }

    /// The queue thread (which alone may register with its ring): registers the aliased persistent
    /// pages as buffer 0 when there are more of them than it covers: at once while they keep
    /// doubling, else once the frontend's pool has stopped growing (no new page since the last
    /// look). Each registration pins the whole range again, so the pool is pinned about twice in
    /// all. A refusal (RLIMIT_MEMLOCK, say) is logged once; transfers then go without.
    private func refreshFixedBuffer(_ uring: IOUringBlockIOEngine) {
        locked {
            guard !closed, !fixedFailed, let region = fixedRegion else { return }
            let n = region.count
            defer { fixedSeen = n }
            guard n > fixedPages, n >= 2 * fixedPages || n == fixedSeen else { return }
            do {
                try uring.setFixedBuffer(0, UnsafeMutableRawBufferPointer(start: region.base, count: n * region.pageSize))
                fixedPages = n
            } catch {
                fixedFailed = true
                device.owner.log("blkback: \(label): persistent pages not registered with io_uring (\(error)); transfers pin them each time")
            }
        }
    }

    /// Requests on the ring not yet taken (a corrupt index counts: `serviceRing` reports it).
    private var hasRequests: Bool {
        locked {
            guard let ring, !closed else { return false }
            return ((try? ring.pendingRequests()) ?? 1) > 0
        }
    }

    /// Served with the event dispatcher: it takes the requests; this thread answers completions
    /// (woken by the engine's eventfd) and runs barriers.
    private func runDispatched() {
        serviceRing()
        let pollNs = device.owner.pollNs ?? 0
        while !stopped {
            if pollNs > 0 && locked({ !inFlight.isEmpty }) {
                // Completions expected soon: look for them a while rather than sleep (a sleeping
                // vCPU takes tens of microseconds to wake in a VM).
                let deadline = MonotonicClock.nanoseconds() + pollNs
                while MonotonicClock.nanoseconds() < deadline && !stopped {
                    if reapAndRespond() > 0 { break }
                    SharedAtomic.relax()
                }
            }
            kickEvent.wait(timeoutMs: 500, other: engine?.completionFD)
            reapAndRespond()
            if device.owner.queueThreadSubmits { serviceRing() }
            if locked({ barrier != nil }) {
                runBarrier()
                serviceRing()
            }
        }
    }

    private var stopped: Bool { SharedAtomic.load(&device.stop) != 0 }

    private func locked<R>(_ body: () -> R) -> R {
        mutex.lock()
        defer { mutex.unlock() }
        return body()
    }

    /// Takes every request on the ring and submits them to the engine as one batch; answers the
    /// refused ones. Called by the event dispatcher on every event of this queue's port (and by
    /// the queue thread); never waits for I/O. A WRITE_BARRIER stops the intake: the queue
    /// thread runs it once everything before it has completed, then takes the rest.
    func serviceRing() {
        mutex.lock()
        defer { mutex.unlock() }
        guard !closed, barrier == nil, !stopped, let ring, let engine else { return }
        var batch: [BlockIORequest] = []
        var responses: [BlkifResponse] = []
        var chunker = SubmitChunker(limit: submitChunk)
        do {
            intake: repeat {
                while let slot = try ring.takeRequest() {
                    let before = batch.count
                    if let b = handle(slot, into: &batch, responses: &responses) {
                        barrier = b
                        break intake
                    }
                    if batch.count > before, let r = batch.last, chunker.cutAfter(r.op, offset: r.offset, length: r.length) {
                        // The first requests of a burst reach the disk before the rest is decoded.
                        try engine.submit(batch)
                        batch.removeAll(keepingCapacity: true)
                    }
                }
            } while ring.finalCheckForRequests()
        } catch let e as RingError {
            device.fail(.ring(queue: index, e))
            return
        } catch {
            device.fail(.setup("\(label): the I/O engine refused a batch: \(error)"))
            return
        }
        if !batch.isEmpty {
            do {
                try engine.submit(batch)
            } catch {
                device.fail(.setup("\(label): the I/O engine refused a batch: \(error)"))
                return
            }
        }
        respond(&responses)
        if barrier != nil { kickEvent.raise() }
    }

    /// Answers what the engine has completed; returns how many.
    @discardableResult
    private func reapAndRespond() -> Int {
        locked {
            guard !closed, let engine else { return 0 }
            var responses = engine.reap(wait: false).map(complete)
            let n = responses.count
            respond(&responses)
            return n
        }
    }

    /// Puts responses on the ring and notifies (caller holds the lock).
    private func respond(_ responses: inout [BlkifResponse]) {
        guard !responses.isEmpty, let ring, let port else { return }
        for r in responses { r.encode(to: ring.nextResponse()) }
        responses.removeAll(keepingCapacity: true)
        if ring.pushResponses() { try? domain.eventChannels.send(port) }
    }

    /// Queue thread, lock not held: waits until nothing is in flight (Linux's drain_io), then
    /// flush, the write if the barrier has data, flush; answers the barrier once.
    private func runBarrier() {
        guard let rw = locked({ barrier }) else { return }
        func waitCompletions() {
            if owned, let uring = engine as? IOUringBlockIOEngine {
                uring.armKick(kickEvent.fd)
                uring.waitForEvent()
                if uring.kicked { uring.kicked = false; kickEvent.drain() }
            } else {
                kickEvent.wait(timeoutMs: 100, other: engine?.completionFD)
            }
        }
        while !stopped {
            reapAndRespond()
            if locked({ inFlight.isEmpty }) { break }
            waitCompletions()
        }
        /// One engine request, waited for; other completions are answered meanwhile.
        func step(_ make: (UInt64) -> BlockIORequest, transient: [GrantMapping] = []) -> Bool {
            let tag: UInt64? = locked {
                guard !closed, let engine else { return nil }
                let tag = nextTag
                nextTag &+= 1
                inFlight[tag] = Pending(id: rw.id, op: rw.operation.rawValue, transient: transient)
                do { try engine.submit([make(tag)]) } catch { inFlight[tag] = nil; return nil }
                return tag
            }
            guard let tag else { return false }
            var ok: Bool?
            while ok == nil && !stopped {
                locked {
                    guard !closed, let engine else { return }
                    var responses: [BlkifResponse] = []
                    for c in engine.reap(wait: false) {
                        let r = complete(c)
                        if c.tag == tag { ok = r.status == .okay } else { responses.append(r) }
                    }
                    respond(&responses)
                }
                if ok == nil { waitCompletions() }
            }
            return ok ?? false
        }
        var status = BlkifStatus.okay
        if stopped { return }
        if !step({ .flush(tag: $0) }) { status = .error }
        if status == .okay && !rw.segments.isEmpty {
            var transient: [GrantMapping] = []
            if let (iov, fixed) = locked({ buffers(rw.segments, transient: &transient) }) {
                if !step({ .write(offset: rw.sectorNumber * 512, from: iov, tag: $0, fixedBuffer: fixed ? 0 : nil) }, transient: transient) {
                    status = .error
                }
            } else {
                device.owner.log("blkback: \(label): request \(rw.id) (BLKIF_OP_WRITE_BARRIER): \(mapFailure) is not granted to this backend")
                status = .error
            }
            if status == .okay && !step({ .flush(tag: $0) }) { status = .error }
        }
        locked {
            var responses = [BlkifResponse(id: rw.id, operation: rw.operation.rawValue, status: status)]
            respond(&responses)
            barrier = nil
        }
    }

    /// Validates one request and turns it into an engine request, or an immediate response.
    /// Returns a barrier with data or a barrier alone, which the caller runs after draining.
    private func handle(_ slot: UnsafeRawPointer, into batch: inout [BlockIORequest],
                        responses: inout [BlkifResponse]) -> BlkifRequest.ReadWrite? {
        let req: BlkifRequest
        do {
            req = try BlkifRequest.decode(slot: slot, maxIndirectSegments: BlkbackDevice.maxIndirectSegments)
        } catch let e as BlkifRequestError {
            device.owner.log("blkback: \(label): \(e)")
            responses.append(e.response)
            return nil
        } catch {
            return nil
        }
        func fail(_ status: BlkifStatus, _ why: String, op: UInt8? = nil) {
            device.owner.log("blkback: \(label): request \(req.id) (\(req.operation.xenName)): \(why)")
            responses.append(BlkifResponse(id: req.id, operation: op ?? req.operation.rawValue, status: status))
        }
        let tag = nextTag
        nextTag &+= 1
        var op: BlkifOp
        var sectorNumber: UInt64
        var segments: [BlkifSegment]
        switch req {
        case let .readWrite(rw):
            if rw.operation == .writeBarrier {
                if device.readOnly && !rw.segments.isEmpty { fail(.error, "write to a read-only disk"); return nil }
                return rw
            }
            if rw.operation == .flushDiskcache {
                inFlight[tag] = Pending(id: rw.id, op: rw.operation.rawValue)
                batch.append(.flush(tag: tag))
                return nil
            }
            op = rw.operation
            sectorNumber = rw.sectorNumber
            segments = rw.segments
        case let .indirect(ind):
            guard ind.indirectOp == .read || ind.indirectOp == .write else {
                fail(.error, "indirect_op \(ind.indirectOp.xenName) is not a read or a write", op: ind.indirectOp.rawValue)
                return nil
            }
            var transient: [GrantMapping] = []
            guard let pages = mappings(ind.indirectGrefs.prefix(ind.pageCount).map { $0 }, readonly: true, transient: &transient) else {
                fail(.error, "indirect page \(mapFailure) is not granted to this backend", op: ind.indirectOp.rawValue)
                return nil
            }
            do {
                segments = try ind.segments(pages: pages.map { UnsafeRawPointer($0.base) })
            } catch let e as BlkifRequestError {
                if !transient.isEmpty { _ = domain.grantTable.unmap(transient) }
                device.owner.log("blkback: \(label): \(e)")
                responses.append(e.response)
                return nil
            } catch {
                return nil
            }
            if !transient.isEmpty { _ = domain.grantTable.unmap(transient) }
            op = ind.indirectOp
            sectorNumber = ind.sectorNumber
        case let .discard(d):
            if device.readOnly { fail(.error, "discard on a read-only disk"); return nil }
            guard d.sectorNumber <= device.sectors, d.nrSectors <= device.sectors - d.sectorNumber else {
                fail(.error, "discard \(d.sectorNumber)+\(d.nrSectors) past the end of the disk")
                return nil
            }
            inFlight[tag] = Pending(id: d.id, op: BlkifOp.discard.rawValue)
            batch.append(.discard(offset: d.sectorNumber * 512, length: d.nrSectors * 512, tag: tag))
            return nil
        }
        // An indirect request is answered with its indirect_op, as Linux's blkback does (and
        // Linux's blkfront checks).
        let wireOp = op.rawValue
        let writing = op == .write
        if writing && device.readOnly { fail(.error, "write to a read-only disk", op: wireOp); return nil }
        let count = segments.reduce(UInt64(0)) { $0 + UInt64($1.sectorCount) }
        guard sectorNumber <= device.sectors, count <= device.sectors - sectorNumber else {
            fail(.error, "sectors \(sectorNumber)+\(count) past the end of the disk (\(device.sectors) sectors)", op: wireOp)
            return nil
        }
        if segments.isEmpty {
            // A read or write of nothing: nothing to do.
            responses.append(BlkifResponse(id: req.id, operation: wireOp, status: .okay))
            return nil
        }
        var transient: [GrantMapping] = []
        guard let (iov, fixed) = buffers(segments, transient: &transient) else {
            fail(.error, "\(mapFailure) is not granted to this backend", op: wireOp)
            return nil
        }
        let offset = sectorNumber * 512
        let total = Int(count) * 512
        if let (buffer, run, index) = staging(total) {
            // One contiguous stretch for the disk; the grant pages' bytes copied in now
            // (writes) or out at completion (reads).
            if writing { BounceBuffers.gather(iov, into: buffer) }
            inFlight[tag] = Pending(id: req.id, op: wireOp, transient: transient, bounce: run, readInto: writing ? [] : iov)
            let one = [UnsafeMutableRawBufferPointer(start: buffer, count: total)]
            batch.append(writing ? .write(offset: offset, from: one, tag: tag, fixedBuffer: index)
                                 : .read(offset: offset, into: one, tag: tag, fixedBuffer: index))
            return nil
        }
        inFlight[tag] = Pending(id: req.id, op: wireOp, transient: transient)
        let registered = fixed ? 0 : nil
        batch.append(writing ? .write(offset: offset, from: iov, tag: tag, fixedBuffer: registered)
                             : .read(offset: offset, into: iov, tag: tag, fixedBuffer: registered))
        return nil
    }

    /// A stretch of `bounce` for a request of `total` bytes (and its registered buffer index),
    /// when it is large enough to be staged and one is free. Makes the region at the first
    /// such request; an owned ring registers it then (this is its thread).
    private func staging(_ total: Int) -> (UnsafeMutableRawPointer, BounceBuffers.Run, Int?)? {
        guard total >= bounceMin, total <= Self.bounceBytes else { return nil }
        if bounce == nil {
            guard !bounceTried else { return nil }
            bounceTried = true
            // Without budget (all taken by other queues, or staging-mib=0) large requests go to
            // the grant pages directly, as they did before staging.
            guard device.owner.reserveStaging(Self.bounceBytes) else { return nil }
            guard let b = BounceBuffers(bytes: Self.bounceBytes) else {
                device.owner.releaseStaging(Self.bounceBytes)
                device.owner.log("blkback: \(label): no memory for staging large transfers; they go to the grant pages directly")
                return nil
            }
            bounce = b
            if owned, fixedAllowed, let uring = engine as? IOUringBlockIOEngine {
                do {
                    try uring.setFixedBuffer(1, b.region)
                    bounceRegistered = true
                } catch {
                    device.owner.log("blkback: \(label): staging buffer not registered with io_uring (\(error))")
                }
            }
        }
        guard let b = bounce, let run = b.take(total) else { return nil }
        staged += 1
        return (b.address(run), run, bounceRegistered ? 1 : nil)
    }

    /// The segments' bytes in the frontend's pages, and whether they all lie in the registered
    /// buffer; nil (nothing left mapped) when a gref cannot be mapped.
    private func buffers(_ segments: [BlkifSegment], transient: inout [GrantMapping]) -> (iov: [UnsafeMutableRawBufferPointer], fixed: Bool)? {
        // The usual case once a frontend's pages are known: every one persistently mapped.
        var iov: [UnsafeMutableRawBufferPointer] = []
        iov.reserveCapacity(segments.count)
        var fixed = fixedPages > 0
        for seg in segments {
            guard let p = persistentMaps[seg.gref] else { break }
            if p.alias < 0 || p.alias >= fixedPages { fixed = false }
            iov.append(UnsafeMutableRawBufferPointer(start: p.io + seg.byteOffset, count: seg.byteCount))
        }
        if iov.count == segments.count { return (iov, fixed) }
        guard let maps = mappings(segments.map(\.gref), readonly: false, transient: &transient) else { return nil }
        return (zip(segments, maps).map { seg, m in UnsafeMutableRawBufferPointer(start: m.base + seg.byteOffset, count: seg.byteCount) }, false)
    }

    /// The frontend's pages for `grefs`: persistent mappings when negotiated (and room is left),
    /// else mapped for this request only (appended to `transient`). New ones are mapped 16 per
    /// hypercall. Nil when any cannot be mapped (the request's transient ones are unmapped).
    private func mappings(_ grefs: [GrantRef], readonly: Bool, transient: inout [GrantMapping]) -> [GrantMapping]? {
        /// This request's transient mappings (the persistent ones are looked up below).
        var known: [GrantRef: GrantMapping] = [:]
        var missing: [GrantRef] = []
        for g in grefs where (readonly ? persistentIndirect[g] : persistentMaps[g]?.mapping) == nil && !missing.contains(g) { missing.append(g) }
        let firstTransient = transient.count
        for start in stride(from: 0, to: missing.count, by: 16) {
            let chunk = missing[start..<min(missing.count, start + 16)]
            let results = domain.grantTable.map(chunk.map { (device.frontend, $0, readonly) })
            var failed = false
            for (g, r) in zip(chunk, results) {
                guard case let .success(m) = r else {
                    if !failed, case let .failure(e) = r { mapFailure = "gref \(g) (\(e))" }
                    failed = true
                    continue
                }
                if device.persistent && persistentMaps.count + persistentIndirect.count < Self.maxPersistentGrants {
                    if readonly {
                        persistentIndirect[g] = m
                    } else if let region = fixedRegion, let a = region.append(m.base) {
                        persistentMaps[g] = PersistentPage(mapping: m, io: region.address(a), alias: a)
                    } else {
                        persistentMaps[g] = PersistentPage(mapping: m, io: m.base, alias: -1)
                    }
                } else {
                    transient.append(m)
                    known[g] = m
                }
            }
            if failed {
                let mine = Array(transient[firstTransient...])
                if !mine.isEmpty { _ = domain.grantTable.unmap(mine) }
                transient.removeSubrange(firstTransient...)
                return nil
            }
        }
        var out: [GrantMapping] = []
        out.reserveCapacity(grefs.count)
        for g in grefs {
            guard let m = (readonly ? persistentIndirect[g] : persistentMaps[g]?.mapping) ?? known[g] else { return nil }
            out.append(m)
        }
        return out
    }

    private func complete(_ c: BlockIOCompletion) -> BlkifResponse {
        guard let f = inFlight.removeValue(forKey: c.tag) else { return BlkifResponse(id: 0, operation: 0, status: .error) }
        if let run = f.bounce, let b = bounce {
            if case .success = c.result, !f.readInto.isEmpty { BounceBuffers.scatter(b.address(run), to: f.readInto) }
            b.give(run)
        }
        if !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
        switch c.result {
        case .success:
            return BlkifResponse(id: f.id, operation: f.op, status: .okay)
        case let .failure(e):
            device.owner.log("blkback: \(label): request \(f.id) failed: \(e)")
            return BlkifResponse(id: f.id, operation: f.op, status: .error)
        }
    }

    /// After the thread has ended: the engine (in-flight I/O finishes or is cancelled into the
    /// pages first), the grants, the ring, the port.
    func teardown() {
        mutex.lock()
        defer { mutex.unlock() }
        closed = true
        if owned, let uring = engine as? IOUringBlockIOEngine, uring.transfers > 0 {
            device.owner.log("blkback: \(label): \(uring.transfers) transfers, \(uring.fixedTransfers) on registered buffers, \(staged) staged")
        } else if staged > 0 {
            device.owner.log("blkback: \(label): \(staged) staged")
        }
        if let e = engine {
            e.close()
            for (_, f) in inFlight where !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
            inFlight.removeAll()
        }
        engine = nil
        if bounce != nil {
            bounce = nil
            device.owner.releaseStaging(Self.bounceBytes)
        }
        // The aliases first: unmapping a grant that is still mapped somewhere is refused.
        fixedRegion?.release()
        fixedRegion = nil
        let persistent = persistentMaps.values.map(\.mapping) + Array(persistentIndirect.values)
        if !persistent.isEmpty { _ = domain.grantTable.unmap(persistent) }
        persistentMaps.removeAll()
        persistentIndirect.removeAll()
        if let m = ringMapping { _ = domain.grantTable.unmap(m) }
        ringMapping = nil
        ring = nil
        if let p = port { try? domain.eventChannels.close(p) }
        kickEvent.close()
    }
}

/// How long an owned queue thread polls before it sleeps: Linux's cpuidle-haltpoll rule, in the
/// driver domain. The window grows (doubling from `growStartNs`) while idle periods end within
/// `maxNs`, where polling would have caught the wake-up, and halves, to nothing below
/// `growStartNs`, while they last longer, where polling only burns the vCPU. So a disk that
/// answers within tens of microseconds, and a frontend that sends again at once, are polled for;
/// slow completions and an idle frontend are slept on.
struct AdaptivePoll {
    /// Cpuidle-haltpoll's default `guest_halt_poll_ns`.
    static let defaultMaxNs: UInt64 = 200_000
    static let growStartNs: UInt64 = 50_000
    static let yieldEveryNs: UInt64 = 10_000
    let maxNs: UInt64
    private(set) var windowNs: UInt64

    init(maxNs: UInt64) {
        self.maxNs = maxNs
        windowNs = min(maxNs, Self.growStartNs)
    }

    /// An idle period (poll and sleep) ended after `ns`.
    mutating func idled(_ ns: UInt64) {
        if ns > maxNs {
            windowNs /= 2
            if windowNs < Self.growStartNs { windowNs = 0 }
        } else if ns > windowNs {
            windowNs = min(maxNs, max(windowNs * 2, Self.growStartNs))
        }
    }
}

import DomainRuntime
import LinuxHost
import ProcvisorABI

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

/// One vbd: its image, the handshake, its queues.
final class BlkbackDevice {
    let domain: Domain
    let frontend: UInt16
    let devid: UInt32
    unowned let owner: Blkback
    private let kick = Kick()
    /// Non-zero: every queue stops (set by the device thread, or by a queue whose ring is corrupt).
    @exclusivity(unchecked) var stop: UInt32 = 0
    private let failureLock = Lock()
    @exclusivity(unchecked) private var failure: BlkbackStop?
    @exclusivity(unchecked) private var queuesRunning: UInt32 = 0
    var dir: String { "backend/vbd/\(frontend)/\(devid)" }
    var label: String { "vbd \(frontend)/\(devid)" }

    /// `feature-max-indirect-segments` (Linux's MAX_INDIRECT_SEGMENTS).
    static let maxIndirectSegments = 256
    /// `max-ring-page-order` (XENBUS_MAX_RING_GRANT_ORDER).
    static let maxRingPageOrder = 4

    // Set up by `connect`.
    @exclusivity(unchecked) private(set) var disk: FileDescriptor?
    @exclusivity(unchecked) private(set) var sectors: UInt64 = 0
    @exclusivity(unchecked) private(set) var readOnly = false
    @exclusivity(unchecked) private(set) var persistent = false
    @exclusivity(unchecked) private(set) var direct = false
    @exclusivity(unchecked) private var queues: [BlkbackQueue] = []
    @exclusivity(unchecked) private var frontendDir = ""
    @exclusivity(unchecked) private var watchToken: String?
    /// Taken over from an earlier incarnation of this driver domain rather than connected afresh.
    @exclusivity(unchecked) private var resumed = false

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
            owner.log("blkback: \(label) \(resumed ? "resumed" : "connected") (\(sectors) sectors, \(readOnly ? "ro" : "rw"), \(engineName), \(direct ? "direct I/O" : "buffered I/O"), \(queues.count) queue\(queues.count == 1 ? "" : "s") of \(queues.first?.slots ?? 0) slots, persistent grants \(persistent ? "on" : "off"))")
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
        var published: BlkbackCounters?
        while true {
            kick.wait(timeoutMs: 1000)
            publishStatistics(&published)
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

    /// The queues' counts summed into `statistics` under the backend directory (what `xl top`
    /// shows), when they changed since the last time: at most once a second.
    private func publishStatistics(_ published: inout BlkbackCounters?) {
        let total = queues.reduce(BlkbackCounters()) { sum, q in sum + BlkbackCounters.snapshot(&q.counters) }
        guard total != published else { return }
        // A failure means the directory is going (the device is being removed): the next look stops.
        if (try? domain.store.write(dir + "/statistics", total.text)) != nil { published = total }
    }

    private func connect() throws {
        let xs = domain.store
        guard kick.valid else { throw BlkbackStop.setup("cannot create an eventfd") }
        guard let feDir = read("frontend") else { throw BlkbackStop.removed }
        frontendDir = feDir
        let fd = try domain.deviceFD(.vbd, frontend: frontend, devid: devid)
        disk = fd
        let status: FileStatus
        do { status = try FileStatus(fd) } catch let e as SystemError { throw BlkbackStop.setup("fstat of the image: \(e.errno)") }
        // A block device's size is where its end is (fstat says 0); a failed seek counts as empty.
        let bytes = status.isBlockDevice ? UInt64((try? fd.seekToEnd()) ?? 0) : UInt64(status.size)
        sectors = bytes / 512
        readOnly = read("mode") == "r"
        direct = owner.settings.directIO && Self.useDirectIO(fd)
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
        let token = "blkback:\(frontend)/\(devid)"
        try? xs.watch(feDir + "/state", token: token) { [kick] _ in kick.raise() }
        watchToken = token
        // Connected already, by an earlier incarnation of this driver domain that was killed and
        // restarted in place: the frontend kept its rings, grants and port, and must see no change.
        // The nodes it read at its connect are there, written by that incarnation; only the size
        // can have changed while no backend ran (an image resized meanwhile), and Linux's blkback
        // writes `sectors` again on a resize. Writing the rest again would cost a round trip each
        // while the frontend waits.
        if read("state").flatMap(XenbusState.init(storeValue:)) == .connected,
           let s = (try? xs.read(feDir + "/state")).flatMap(XenbusState.init(storeValue:)), s == .connected || s == .initialised {
            if read("sectors") != "\(sectors)" { try xs.write(dir + "/sectors", "\(sectors)") }
            if try resume(feDir, disk: fd) { return }
        }
        for (k, v) in keys { try xs.write(dir + "/" + k, v) }
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
        for (q, r) in try frontendRings(feDir).enumerated() {
            let queue = BlkbackQueue(device: self, index: q, disk: fd)
            queues.append(queue)
            try queue.attach(refs: r.refs, resuming: false)
            try queue.connect(remotePort: r.port)
            if !queue.owned { owner.registered(queue, port: queue.port!) }
        }
        try xs.write(dir + "/state", XenbusState.connected.storeValue)
    }

    /// Takes the device over from an earlier incarnation of this driver domain (killed and
    /// restarted in place, both ends still Connected): maps the same rings, checks every queue's
    /// in-flight log against its ring, and only when all are trusted binds the ports again and
    /// finishes what the earlier incarnation left (`BlkbackQueue.connect`); `state` stays
    /// Connected. False, with nothing left mapped and the reason logged, when some queue cannot
    /// resume: the caller then connects afresh.
    private func resume(_ feDir: String, disk fd: FileDescriptor) throws -> Bool {
        var attached: [BlkbackQueue] = []
        let rings: [(refs: [GrantRef], port: EventChannels.Port)]
        do {
            rings = try frontendRings(feDir)
            for (q, r) in rings.enumerated() {
                let queue = BlkbackQueue(device: self, index: q, disk: fd)
                attached.append(queue)
                try queue.attach(refs: r.refs, resuming: true)
            }
        } catch {
            owner.log("blkback: \(label): cannot resume after a restart of this driver domain (\(error)); connecting afresh, requests in flight may be lost")
            attached.forEach { $0.teardown() }
            return false
        }
        queues = attached
        for (queue, r) in zip(queues, rings) {
            try queue.connect(remotePort: r.port)
            if !queue.owned { owner.registered(queue, port: queue.port!) }
        }
        resumed = true
        return true
    }

    /// The frontend's rings, as Linux's connect_ring reads them: `protocol`, `feature-persistent`,
    /// then per queue (`multi-queue-num-queues`, under `queue-N/` when several) the ring's grants
    /// (`ring-page-order`) and its `event-channel`. The frontend's numbers are checked, not trusted.
    private func frontendRings(_ feDir: String) throws -> [(refs: [GrantRef], port: EventChannels.Port)] {
        let xs = domain.store
        let maxQueues = owner.maxQueues
        func feRead(_ key: String) -> String? { try? xs.read(feDir + "/" + key) }
        if let proto = feRead("protocol"), proto != "x86_64-abi" {
            throw BlkbackStop.setup("frontend protocol \(proto) is not supported (x86_64-abi only)")
        }
        persistent = feRead("feature-persistent") == "1"
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
        var rings: [(refs: [GrantRef], port: EventChannels.Port)] = []
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
            rings.append((refs, remotePort))
        }
        return rings
    }

    /// Turns on O_DIRECT when the image's file system takes it for 512-byte aligned transfers
    /// (what blkif segments are); tmpfs and some others refuse: the page cache is used then.
    static func useDirectIO(_ fd: FileDescriptor) -> Bool {
        guard (try? fd.setDirectIO()) != nil else { return false }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        // A sector at a sector offset inside a page, as a segment with first_sect 1 is.
        if (try? fd.read(into: UnsafeMutableRawBufferPointer(start: buffer + 512, count: 512), at: 512)) != nil { return true }
        try? fd.setDirectIO(false)
        return false
    }
}

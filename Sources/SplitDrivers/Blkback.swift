import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

/// blkback: serves the vbds the toolstack assigns to this driver domain
/// (`/local/domain/SELF/backend/vbd/F/DEVID`). One thread per device does the xenbus handshake
/// and then serves the frontend's ring with the I/O engine, straight into the frontend's granted
/// pages (kept mapped when both ends support `feature-persistent`). The caller's thread becomes
/// the event dispatcher: it takes every event of the domain and kicks the device it belongs to.
/// A frontend that puts garbage on its ring is disconnected; the others keep being served.
public final class Blkback {
    let domain: Domain
    let log: (String) -> Void
    /// Settings from the command line (`PROCVISOR_FORCE_NO_IOURING=1` forces the thread pool).
    let environment: [String: String]
    private var lock = pthread_mutex_t()
    /// One scan at a time (the watch thread and finishing device threads both scan), so a device
    /// directory never gets two device threads.
    private var scanLock = pthread_mutex_t()
    private var devices: [String: BlkbackDevice] = [:]
    private var byPort: [EventChannels.Port: BlkbackDevice] = [:]

    public init(domain: Domain, environment: [String: String] = [:], log: @escaping (String) -> Void) {
        self.domain = domain
        self.environment = environment
        self.log = log
        pthread_mutex_init(&lock, nil)
        pthread_mutex_init(&scanLock, nil)
    }

    /// Watches for devices and dispatches events forever.
    public func run() -> Never {
        do {
            try domain.store.watch("backend/vbd", token: "blkback:devices") { [unowned self] _ in scan() }
        } catch {
            log("blkback: cannot watch backend/vbd: \(error)")
            domain.shutdown(.crash)
        }
        log("blkback: dom\(domain.domid) serving vbds")
        while true {
            for port in domain.eventChannels.wait() {
                pthread_mutex_lock(&lock)
                let d = byPort[port]
                pthread_mutex_unlock(&lock)
                d?.kick()
            }
        }
    }

    /// New device directories get a device thread; vanished ones are told to stop.
    func scan() {
        pthread_mutex_lock(&scanLock)
        defer { pthread_mutex_unlock(&scanLock) }
        var present = Set<String>()
        for fe in (try? domain.store.directory("backend/vbd")) ?? [] {
            guard let f = UInt16(fe) else { continue }
            for dev in (try? domain.store.directory("backend/vbd/\(fe)")) ?? [] {
                guard let d = UInt32(dev) else { continue }
                let key = "\(f)/\(d)"
                present.insert(key)
                pthread_mutex_lock(&lock)
                let existing = devices[key]
                pthread_mutex_unlock(&lock)
                if let existing {
                    // A device that was disconnected is served again only once its frontend starts
                    // over (back to Initialising), as Linux's blkback reconnects.
                    guard existing.finished, let fe = try? domain.store.read("backend/vbd/\(fe)/\(dev)/frontend"),
                          (try? domain.store.read(fe + "/state")) == XenbusState.initialising.storeValue else { continue }
                }
                let device = BlkbackDevice(domain: domain, frontend: f, devid: d, owner: self)
                pthread_mutex_lock(&lock)
                devices[key] = device
                pthread_mutex_unlock(&lock)
                domain.startVCPU(-10) { _ in device.run() }
            }
        }
        pthread_mutex_lock(&lock)
        let gone = devices.filter { !present.contains($0.key) }.map(\.value)
        for key in devices.keys where !present.contains(key) && devices[key]?.finished == true { devices[key] = nil }
        pthread_mutex_unlock(&lock)
        gone.forEach { $0.requestStop() }
    }

    func registered(_ d: BlkbackDevice, port: EventChannels.Port) {
        pthread_mutex_lock(&lock); byPort[port] = d; pthread_mutex_unlock(&lock)
    }

    /// The device thread ended: it stays known (so a disconnected frontend is not reconnected
    /// behind its back) until its directory goes or its frontend starts over.
    func finished(_ d: BlkbackDevice) {
        pthread_mutex_lock(&lock)
        if let p = d.port { byPort[p] = nil }
        d.finished = true
        pthread_mutex_unlock(&lock)
        // Scanned from the watch thread, not this one: the scan lock may be held by a scan that
        // is waiting for this device's directory to settle.
        domain.store.onWatchThread { [unowned self] in scan() }
    }
}

/// Why a device stopped being served.
enum BlkbackStop: Error, CustomStringConvertible {
    case ring(RingError)
    case removed
    case frontendClosed
    case setup(String)

    var description: String {
        switch self {
        case let .ring(e): return "the frontend corrupted its ring (\(e)); disconnected"
        case .removed: return "device removed by the toolstack"
        case .frontendClosed: return "the frontend closed the device"
        case let .setup(why): return why
        }
    }
}

/// One vbd: its image, ring, port, grant mappings and I/O engine.
final class BlkbackDevice {
    let domain: Domain
    let frontend: UInt16
    let devid: UInt32
    unowned let owner: Blkback
    private(set) var port: EventChannels.Port?
    /// Set (under the Blkback lock) once the device thread has ended.
    var finished = false
    private let kickFD: FileDescriptor
    private var stop: UInt32 = 0
    var dir: String { "backend/vbd/\(frontend)/\(devid)" }
    var label: String { "vbd \(frontend)/\(devid)" }

    // Set up by `connect`.
    private var disk: FileDescriptor?
    private var engine: BlockIOEngine?
    private var ring: BackRing?
    private var ringMapping: GrantMapping?
    private var sectors: UInt64 = 0
    private var readOnly = false
    private var persistent = false
    /// Persistent grants: gref → mapping, kept until disconnect (Linux's max_pgrants).
    private var persistentMaps: [GrantRef: GrantMapping] = [:]
    static let maxPersistentGrants = 1056
    /// Requests in flight: engine tag → (id, op, mappings to drop after completion).
    private var inFlight: [UInt64: (id: UInt64, op: UInt8, transient: [GrantMapping])] = [:]
    private var nextTag: UInt64 = 1

    init(domain: Domain, frontend: UInt16, devid: UInt32, owner: Blkback) {
        self.domain = domain
        self.frontend = frontend
        self.devid = devid
        self.owner = owner
        kickFD = (try? FileDescriptor.eventfd()) ?? FileDescriptor(rawValue: -1)
    }

    func kick() {
        var one: UInt64 = 1
        _ = Glibc.write(kickFD.rawValue, &one, 8)
    }

    func requestStop() {
        SharedAtomic.store(&stop, 1)
        kick()
    }

    func run() {
        let xs = domain.store
        do {
            try connect()
            owner.log("blkback: \(label) connected (\(sectors) sectors, \(readOnly ? "ro" : "rw"), \(engine?.name ?? "?"), persistent grants \(persistent ? "on" : "off"))")
            try serve()
        } catch let e as BlkbackStop {
            owner.log("blkback: \(label): \(e)")
        } catch {
            owner.log("blkback: \(label): \(error)")
        }
        // Closing, then Closed once everything is unmapped (Linux's xen_blkif_disconnect order).
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closing.storeValue) }
        teardown()
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closed.storeValue) }
        owner.finished(self)
    }

    private func read(_ key: String) -> String? { try? domain.store.read(dir + "/" + key) }

    private func connect() throws {
        let xs = domain.store
        guard kickFD.rawValue >= 0 else { throw BlkbackStop.setup("cannot create an eventfd") }
        guard let feDir = read("frontend") else { throw BlkbackStop.removed }
        let fd = try domain.deviceFD(.vbd, frontend: frontend, devid: devid)
        disk = fd
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw BlkbackStop.setup("fstat of the image: \(Errno.current)") }
        let bytes = (st.st_mode & S_IFMT) == S_IFBLK ? UInt64(max(0, lseek(fd.rawValue, 0, SEEK_END))) : UInt64(st.st_size)
        sectors = bytes / 512
        readOnly = read("mode") == "r"
        let discard = read("discard-enable") != "0" && !readOnly
        engine = BlockIO.makeEngine(disk: fd, queueDepth: 64, environment: owner.environment) { [owner] line in owner.log("blkback: \(line)") }
        // What Linux's blkback advertises.
        var keys: [(String, String)] = [
            ("feature-flush-cache", "1"), ("feature-barrier", "1"), ("feature-persistent", "1"),
            ("sectors", "\(sectors)"), ("sector-size", "512"), ("physical-sector-size", "512"),
            ("info", readOnly ? "\(Blkif.vdiskReadOnly)" : "0"), ("max-ring-page-order", "0"),
        ]
        if discard {
            keys += [("feature-discard", "1"), ("discard-granularity", "4096"), ("discard-alignment", "0"), ("discard-secure", "0")]
        }
        for (k, v) in keys { try xs.write(dir + "/" + k, v) }
        try xs.write(dir + "/state", XenbusState.initWait.storeValue)
        // Wait for the frontend to publish its ring (Initialised) or be Connected.
        while true {
            if SharedAtomic.load(&stop) != 0 { throw BlkbackStop.removed }
            let s = (try? xs.read(feDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .unknown
            if s == .initialised || s == .connected { break }
            if s == .closing || s == .closed { throw BlkbackStop.frontendClosed }
            waitKick(timeoutMs: 100)
        }
        guard let refText = try? xs.read(feDir + "/ring-ref"), let ref = GrantRef(refText) else {
            throw BlkbackStop.setup("frontend \(feDir) has no valid ring-ref")
        }
        guard let portText = try? xs.read(feDir + "/event-channel"), let remotePort = EventChannels.Port(portText) else {
            throw BlkbackStop.setup("frontend \(feDir) has no valid event-channel")
        }
        if let proto = try? xs.read(feDir + "/protocol"), proto != "x86_64-abi" {
            throw BlkbackStop.setup("frontend protocol \(proto) is not supported (x86_64-abi only)")
        }
        persistent = (try? xs.read(feDir + "/feature-persistent")) == "1"
        let m = try domain.grantTable.map(domid: frontend, ref: ref)
        ringMapping = m
        ring = BackRing(page: m.base, layout: RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size))
        let p = try domain.eventChannels.bindInterdomain(remote: frontend, remotePort: remotePort)
        port = p
        owner.registered(self, port: p)
        try xs.write(dir + "/state", XenbusState.connected.storeValue)
    }

    private func waitKick(timeoutMs: Int32) {
        var fds = [pollfd(fd: kickFD.rawValue, events: Int16(POLLIN), revents: 0)]
        if let e = engine { fds.append(pollfd(fd: e.completionFD.rawValue, events: Int16(POLLIN), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), timeoutMs)
        var v: UInt64 = 0
        if fds[0].revents != 0 { _ = Glibc.read(kickFD.rawValue, &v, 8) }
    }

    private func serve() throws {
        guard let ring, let engine, let port else { return }
        var lastStateCheck = MonotonicClock.nanoseconds()
        while true {
            if SharedAtomic.load(&stop) != 0 { throw BlkbackStop.removed }
            // Requests: everything on the ring, submitted as one batch.
            var batch: [BlockIORequest] = []
            var responses: [BlkifResponse] = []
            do {
                repeat {
                    while let slot = try ring.takeRequest() {
                        handle(slot, into: &batch, responses: &responses)
                    }
                } while ring.finalCheckForRequests()
            } catch let e as RingError {
                throw BlkbackStop.ring(e)
            }
            if !batch.isEmpty { try engine.submit(batch) }
            // Completions.
            for c in engine.reap(wait: false) { responses.append(complete(c)) }
            if !responses.isEmpty {
                for r in responses { r.encode(to: ring.nextResponse()) }
                if ring.pushResponses() { try? domain.eventChannels.send(port) }
            }
            if batch.isEmpty && responses.isEmpty {
                waitKick(timeoutMs: 500)
                let now = MonotonicClock.nanoseconds()
                if now - lastStateCheck > 500_000_000 {
                    lastStateCheck = now
                    guard let feDir = read("frontend") else { throw BlkbackStop.removed }
                    let s = (try? domain.store.read(feDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .closed
                    if s == .closing || s == .closed { throw BlkbackStop.frontendClosed }
                }
            }
        }
    }

    /// Validates one request and turns it into an engine request, or an immediate response.
    private func handle(_ slot: UnsafeRawPointer, into batch: inout [BlockIORequest], responses: inout [BlkifResponse]) {
        let req: BlkifRequest
        do {
            req = try BlkifRequest.decode(slot: slot, maxIndirectSegments: 0)
        } catch let e as BlkifRequestError {
            owner.log("blkback: \(label): \(e)")
            responses.append(e.response)
            return
        } catch {
            return
        }
        func fail(_ status: BlkifStatus, _ why: String) {
            owner.log("blkback: \(label): request \(req.id) (\(req.operation.xenName)): \(why)")
            responses.append(BlkifResponse(id: req.id, operation: req.operation.rawValue, status: status))
        }
        let tag = nextTag
        nextTag &+= 1
        switch req {
        case let .readWrite(rw):
            // FLUSH_DISKCACHE, and a barrier without data, only flush (a barrier with data is
            // written like a write: completions are not ordered, Linux's blkback drains first).
            if rw.operation == .flushDiskcache || rw.segments.isEmpty {
                inFlight[tag] = (rw.id, rw.operation.rawValue, [])
                batch.append(.flush(tag: tag))
                return
            }
            let writing = rw.operation == .write || rw.operation == .writeBarrier
            if writing && readOnly { return fail(.error, "write to a read-only disk") }
            let count = rw.segments.reduce(UInt64(0)) { $0 + UInt64($1.sectorCount) }
            guard rw.sectorNumber <= sectors, count <= sectors - rw.sectorNumber else {
                return fail(.error, "sectors \(rw.sectorNumber)+\(count) past the end of the disk (\(sectors) sectors)")
            }
            var iov: [UnsafeMutableRawBufferPointer] = []
            var transient: [GrantMapping] = []
            for seg in rw.segments {
                guard let m = mapping(for: seg.gref, transient: &transient) else {
                    domain.grantTable.unmap(transient).forEach { _ in }
                    return fail(.error, "gref \(seg.gref) is not granted to this backend")
                }
                iov.append(UnsafeMutableRawBufferPointer(start: m.base + seg.byteOffset, count: seg.byteCount))
            }
            inFlight[tag] = (rw.id, rw.operation.rawValue, transient)
            let offset = rw.sectorNumber * 512
            batch.append(writing ? .write(offset: offset, from: iov, tag: tag) : .read(offset: offset, into: iov, tag: tag))
        case let .discard(d):
            if readOnly { return fail(.error, "discard on a read-only disk") }
            guard d.sectorNumber <= sectors, d.nrSectors <= sectors - d.sectorNumber else {
                return fail(.error, "discard \(d.sectorNumber)+\(d.nrSectors) past the end of the disk")
            }
            inFlight[tag] = (d.id, BlkifOp.discard.rawValue, [])
            batch.append(.discard(offset: d.sectorNumber * 512, length: d.nrSectors * 512, tag: tag))
        case .indirect:
            fail(.eopnotsupp, "indirect requests are not advertised")
        }
    }

    /// The frontend's page for `gref`: a persistent mapping when negotiated (and room is left),
    /// else one mapped for this request only.
    private func mapping(for gref: GrantRef, transient: inout [GrantMapping]) -> GrantMapping? {
        if let m = persistentMaps[gref] { return m }
        guard let m = try? domain.grantTable.map(domid: frontend, ref: gref) else { return nil }
        if persistent && persistentMaps.count < Self.maxPersistentGrants {
            persistentMaps[gref] = m
        } else {
            transient.append(m)
        }
        return m
    }

    private func complete(_ c: BlockIOCompletion) -> BlkifResponse {
        guard let f = inFlight.removeValue(forKey: c.tag) else { return BlkifResponse(id: 0, operation: 0, status: .error) }
        if !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
        switch c.result {
        case .success:
            return BlkifResponse(id: f.id, operation: f.op, status: .okay)
        case let .failure(e):
            owner.log("blkback: \(label): request \(f.id) failed: \(e)")
            return BlkifResponse(id: f.id, operation: f.op, status: .error)
        }
    }

    private func teardown() {
        if let e = engine {
            e.close()
            for (_, f) in inFlight where !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
            inFlight.removeAll()
        }
        engine = nil
        if !persistentMaps.isEmpty { _ = domain.grantTable.unmap(Array(persistentMaps.values)) }
        persistentMaps.removeAll()
        if let m = ringMapping { _ = domain.grantTable.unmap([m]) }
        ringMapping = nil
        ring = nil
        if let p = port { try? domain.eventChannels.close(p) }
        disk?.close()
        disk = nil
        kickFD.close()
    }
}

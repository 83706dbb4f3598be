import DomainRuntime
import LinuxHost
import ProcvisorABI

/// Counters of one vif (switch thread writes them under the netback lock).
struct NetbackVifStats: Equatable {
    var txFrames = 0
    var txBytes = 0
    var rxFrames = 0
    var rxBytes = 0
    /// Malformed tx packets answered NETIF_RSP_ERROR.
    var txErrors = 0
    var rxErrors = 0
    /// Frames for this vif dropped because its rx ring had no pages and the backlog was full.
    var rxDropped = 0
    var spoofDropped = 0
    var filterDropped = 0
    var floodDropped = 0
    /// Times the vif's tx waited for `rate=` credit.
    var rateHeld = 0
    /// Frames that were not Ethernet at all.
    var dropped = 0

    /// The `statistics` node: `key value` pairs.
    var text: String {
        "tx-frames \(txFrames) tx-bytes \(txBytes) rx-frames \(rxFrames) rx-bytes \(rxBytes) tx-errors \(txErrors) "
            + "rx-errors \(rxErrors) rx-dropped \(rxDropped) spoof-dropped \(spoofDropped) filter-dropped \(filterDropped) "
            + "flood-dropped \(floodDropped) rate-held \(rateHeld) bad-frames \(dropped)"
    }
}

/// One vif: the handshake, its queues, its place on a bridge.
final class NetbackVif {
    unowned let owner: Netback
    let frontend: UInt16
    let devid: UInt32
    var domain: Domain { owner.domain }
    @exclusivity(unchecked) private(set) var name: String
    private let kick = Kick()
    @exclusivity(unchecked) private var stop: UInt32 = 0
    private let stopLock = Lock()
    @exclusivity(unchecked) private var stopReason: String?
    var dir: String { "backend/vif/\(frontend)/\(devid)" }

    // Set by connect.
    @exclusivity(unchecked) private(set) var mac = MACAddress(value: 0)
    @exclusivity(unchecked) private(set) var antiSpoof = AntiSpoof(mac: MACAddress(value: 0))
    @exclusivity(unchecked) var credit: CreditScheduler?
    @exclusivity(unchecked) var creditBlockedUntil: UInt64?
    @exclusivity(unchecked) var floodLimiter: FrameRateLimiter
    @exclusivity(unchecked) private(set) var bridgeName = "xenbr0"
    /// The toolstack let this vif share its MAC with the suspended source of a migration.
    @exclusivity(unchecked) private(set) var macTakeover = false
    /// The frontend takes multi-slot rx frames (`feature-sg`).
    @exclusivity(unchecked) private(set) var sg = false
    @exclusivity(unchecked) var bridge: NetBridge?
    @exclusivity(unchecked) var bridgePort = 0
    @exclusivity(unchecked) private(set) var queues: [NetbackQueue] = []
    /// Frames waiting for rx pages: bytes and queue index.
    @exclusivity(unchecked) var backlog: [([UInt8], Int)] = []
    /// The counters (the switch's, under the netback lock). They are saved in the vif's
    /// in-flight log at the end of every pass that touched the vif (`saveStats`), so they
    /// outlast a restart of netback, but for the last pass before it.
    @exclusivity(unchecked) var stats = NetbackVifStats()
    /// The in-flight page (`NetbackVifLog`) and its mapping; nil when the supervisor gave none.
    @exclusivity(unchecked) private(set) var inflight: NetbackVifLog?
    @exclusivity(unchecked) private var inflightMemory: [SharedMapping] = []
    /// Set when this incarnation took the vif over from a dead one (logged once connected).
    @exclusivity(unchecked) private var takeover: NetbackVifTakeover?
    @exclusivity(unchecked) private var frontendDir = ""
    @exclusivity(unchecked) private var watchToken: String?

    init(owner: Netback, frontend: UInt16, devid: UInt32) {
        self.owner = owner
        self.frontend = frontend
        self.devid = devid
        name = "vif\(frontend).\(devid)"
        floodLimiter = FrameRateLimiter(framesPerSecond: UInt64(owner.settings.broadcastPPS), burst: UInt64(owner.settings.broadcastPPS / 10 + 64),
                                        now: MonotonicClock.nanoseconds())
    }

    deinit {
        inflightMemory.forEach { $0.unmap() }
    }

    /// Saves the counters in the in-flight log (switch thread, end of a pass).
    func saveStats() { inflight?.stats.pointee = stats }

    /// The backlog changed: its length goes to the in-flight page (frames a restart loses).
    func noteBacklog() { inflight?.backlog.pointee = backlog.count }

    /// Any thread: the device thread wakes and tears the vif down (`why` is logged).
    func requestStop(_ why: String?) {
        stopLock.lock()
        if stopReason == nil { stopReason = why }
        stopLock.unlock()
        SharedAtomic.store(&stop, 1)
        kick.raise()
    }

    private var stopping: Bool { SharedAtomic.load(&stop) != 0 }

    /// The rx queue for a frame: by its IPv4 addresses and ports, so one flow stays in order.
    func queueIndex(for info: FrameInfo) -> Int {
        var h = info.src.value &* 0x9E37_79B9_7F4A_7C15 ^ info.dst.value
        if let ip = info.ipv4 {
            h ^= UInt64(ip.source.value) << 32 | UInt64(ip.destination.value)
            h ^= UInt64(ip.sourcePort ?? 0) << 16 | UInt64(ip.destinationPort ?? 0)
        }
        h = (h ^ (h >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return Int((h >> 32) % UInt64(queues.count))
    }

    func run() {
        var registered = false
        do {
            try connect()
            if let refusal = owner.register(self) { throw NetbackSetupError(refusal) }
            registered = true
            if let b = bridge { owner.attachUplink(b, via: self) }
            try domain.store.write(dir + "/state", XenbusState.connected.storeValue)
            if let t = takeover { owner.log("netback: \(name) resumed from the previous incarnation: \(t)") }
            owner.log("netback: \(name) connected: mac \(mac), bridge \(bridgeName), \(queues.count) queue\(queues.count == 1 ? "" : "s")"
                + "\(queues.first.map { $0.txPort != $0.rxPort } == true ? ", split event channels" : "")"
                + "\(antiSpoof.allowedIPs.isEmpty ? "" : ", ip \(antiSpoof.allowedIPs.map(\.description).joined(separator: " "))")"
                + "\(credit.map { ", rate \($0.bytesPerInterval) bytes per \($0.intervalMicroseconds) us" } ?? "")")
            try supervise()
        } catch {
            owner.log("netback: \(name): \(error)")
        }
        stopLock.lock()
        if let why = stopReason { owner.log("netback: \(name): \(why)") }
        stopLock.unlock()
        if registered { owner.unregister(self) }
        let xs = domain.store
        if let t = watchToken { try? xs.unwatch(frontendDir + "/state", token: t) }
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closing.storeValue) }
        publishStatistics()
        queues.forEach { $0.teardown() }
        queues = []
        kick.close()
        if (try? xs.read(dir + "/state")) != nil { try? xs.write(dir + "/state", XenbusState.closed.storeValue) }
        owner.log("netback: \(name) disconnected (\(stats.text))")
        owner.finished(self)
    }

    @exclusivity(unchecked) private var lastPublished = ""

    /// Writes `statistics` under the backend directory when the counters changed.
    private func publishStatistics() {
        owner.lock.lock()
        let text = stats.text
        saveStats()  // counters of vifs no pass touched lately (drops) too
        owner.lock.unlock()
        if text != lastPublished, (try? domain.store.read(dir + "/state")) != nil {
            lastPublished = text
            try? domain.store.write(dir + "/statistics", text)
        }
    }

    private func supervise() throws {
        while true {
            kick.wait(timeoutMs: 500)
            publishStatistics()
            if stopping { return }
            guard (try? domain.store.read(dir + "/frontend")) != nil else { throw NetbackSetupError("device removed by the toolstack") }
            let s = (try? domain.store.read(frontendDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .closed
            if s == .closing || s == .closed || s == .unknown { throw NetbackSetupError("the frontend closed the device") }
        }
    }

    private func read(_ key: String) -> String? { try? domain.store.read(dir + "/" + key) }

    private func connect() throws {
        let xs = domain.store
        guard kick.valid else { throw NetbackSetupError("cannot create an eventfd") }
        guard let feDir = read("frontend") else { throw NetbackSetupError("device removed by the toolstack") }
        frontendDir = feDir
        if let n = read("vifname"), !n.isEmpty { name = n }
        guard let macText = read("mac"), let m = MACAddress(macText), !m.isMulticast, !m.isZero else {
            throw NetbackSetupError("backend mac \"\(read("mac") ?? "")\" is not a unicast MAC address")
        }
        mac = m
        do {
            antiSpoof = try read("ip").map { try AntiSpoof(mac: m, ip: $0) } ?? AntiSpoof(mac: m)
            if let r = read("rate") { credit = try CreditScheduler(rate: r, now: MonotonicClock.nanoseconds()) }
        } catch {
            throw NetbackSetupError("\(error)")
        }
        if credit?.isUnlimited == true { credit = nil }
        bridgeName = read("bridge").flatMap { $0.isEmpty ? nil : $0 } ?? "xenbr0"
        macTakeover = read("mac-takeover") == "1"
        let maxQueues = owner.maxQueues
        // Queue 0's in-flight log (`NetbackQueueLog`), and whether a dead incarnation left this
        // vif connected: then the frontend's rings are taken over as they are (no new handshake;
        // the frontend stays Connected throughout and notices nothing beyond a pause).
        var incarnations = 0
        if let (memory, n) = queueLog(0) {
            inflightMemory = [memory]
            inflight = NetbackVifLog(base: memory.base)
            incarnations = n
        }
        func state(_ path: String) -> XenbusState? { (try? xs.read(path)).flatMap { XenbusState(storeValue: $0) } }
        let resuming = incarnations > 0 && inflight?.isValid == true && state(dir + "/state") == .connected
            && state(feDir + "/state") == .connected
        let token = "netback:\(frontend)/\(devid)"
        try? xs.watch(feDir + "/state", token: token) { [kick] _ in kick.raise() }
        watchToken = token
        if !resuming { try handshake(maxQueues: maxQueues) }
        try attachQueues(maxQueues: maxQueues, resuming: resuming)
    }

    /// Offers the features and waits for the frontend to publish its rings (InitWait → Initialised).
    private func handshake(maxQueues: Int) throws {
        let xs = domain.store, feDir = frontendDir
        for (k, v) in [("feature-sg", "1"), ("feature-gso-tcpv4", "0"), ("feature-gso-tcpv6", "0"), ("feature-rx-copy", "1"),
                       ("feature-rx-flip", "0"), ("feature-multicast-control", "0"), ("feature-split-event-channels", "1"),
                       ("feature-ipv6-csum-offload", "0"), ("multi-queue-max-queues", "\(maxQueues)")] {
            try xs.write(dir + "/" + k, v)
        }
        try xs.write(dir + "/state", XenbusState.initWait.storeValue)
        while true {
            if stopping { throw NetbackSetupError("device removed by the toolstack") }
            let s = (try? xs.read(feDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .unknown
            if s == .initialised || s == .connected { break }
            if s == .closing || s == .closed || s == .unknown { throw NetbackSetupError("the frontend closed the device") }
            kick.wait(timeoutMs: 100)
        }
    }

    /// Maps each queue's rings and binds its ports as the frontend published them. Resuming, the
    /// rings are taken where the previous incarnation's published responses end, and the page
    /// says what that took back and lost; otherwise the page starts over.
    private func attachQueues(maxQueues: Int, resuming: Bool) throws {
        let xs = domain.store, feDir = frontendDir
        func fe(_ key: String) -> String? { try? xs.read(feDir + "/" + key) }
        guard fe("request-rx-copy") == "1" else {
            throw NetbackSetupError("frontend \(feDir) does not set request-rx-copy (page flipping is not supported)")
        }
        guard fe("feature-rx-notify") == "1" else {
            throw NetbackSetupError("frontend \(feDir) does not set feature-rx-notify, which is mandatory")
        }
        sg = fe("feature-sg") == "1"
        var nq = 1
        if let t = fe("multi-queue-num-queues") {
            guard let n = Int(t), n >= 1, n <= maxQueues else {
                throw NetbackSetupError("frontend \(feDir) asks for \(t) queues; multi-queue-max-queues is \(maxQueues)")
            }
            nq = n
        }
        for qi in 0..<nq {
            let qdir = nq > 1 ? "\(feDir)/queue-\(qi)" : feDir
            func number<T: LosslessStringConvertible>(_ key: String, _: T.Type) throws -> T {
                guard let t = try? xs.read("\(qdir)/\(key)"), let v = T(t) else {
                    throw NetbackSetupError("frontend \(qdir) has no valid \(key)")
                }
                return v
            }
            let txRef: GrantRef = try number("tx-ring-ref", GrantRef.self)
            let rxRef: GrantRef = try number("rx-ring-ref", GrantRef.self)
            let txRemote: EventChannels.Port, rxRemote: EventChannels.Port
            if (try? xs.read("\(qdir)/event-channel-tx")) != nil {
                txRemote = try number("event-channel-tx", EventChannels.Port.self)
                rxRemote = try number("event-channel-rx", EventChannels.Port.self)
            } else {
                txRemote = try number("event-channel", EventChannels.Port.self)
                rxRemote = txRemote
            }
            let q = try NetbackQueue(vif: self, index: qi, txRef: txRef, rxRef: rxRef, txRemote: txRemote, rxRemote: rxRemote)
            queues.append(q)
        }
        guard let record = inflight else { return }
        // Every queue's log (queue 0's is mapped already); without them all, none is kept.
        var logs: [NetbackQueueLog] = []
        for q in queues {
            guard NetbackQueueLog.fits(tx: q.tx, rx: q.rx) else { break }
            if q.index > 0 {
                guard let (memory, _) = queueLog(q.index) else { break }
                inflightMemory.append(memory)
            }
            logs.append(NetbackQueueLog(base: inflightMemory[q.index].base, tx: q.tx, rx: q.rx))
        }
        guard logs.count == queues.count else {
            inflight = nil
            if resuming { throw NetbackSetupError("cannot take the vif over: an in-flight log is missing") }
            owner.log("netback: \(name): not every queue has an in-flight log; requests in flight are lost if this driver domain is restarted")
            return
        }
        if resuming {
            guard record.queues == queues.count else {
                throw NetbackSetupError("cannot take the vif over: its log has \(record.queues) queues, the frontend \(queues.count)")
            }
            var t = NetbackVifTakeover(rxFramesLost: record.backlog.pointee)
            for (q, log) in zip(queues, logs) {
                guard let (tx, rx) = log.restore(tx: q.tx, rx: q.rx) else {
                    throw NetbackSetupError("cannot take the vif over: queue \(q.index)'s rings are impossible with its log "
                                            + "(tx req_prod \(q.tx.reqProd) rsp_prod \(q.tx.rspProd) taken \(UInt32(truncatingIfNeeded: log.words[0])); "
                                            + "rx req_prod \(q.rx.reqProd) rsp_prod \(q.rx.rspProd) taken \(UInt32(truncatingIfNeeded: log.words[3])))")
                }
                t.txRequestsAgain += tx
                t.rxRequestsAgain += rx
                // Frames put in rx pages whose answers were never published did not arrive (the
                // saved counters stop at the last publication, so they are not in them).
                t.rxFramesLost += log.words[1]
                log.words[1] = 0
                log.words[2] = 0
            }
            record.stats.pointee.rxDropped += t.rxFramesLost
            record.backlog.pointee = 0
            takeover = t
        } else {
            record.format(queues: queues.count)
            for (q, log) in zip(queues, logs) { log.format(tx: q.tx, rx: q.rx) }
        }
        stats = record.stats.pointee
        for (q, log) in zip(queues, logs) { q.inflight = log }
    }

    /// Queue `q`'s in-flight log from the supervisor and how many incarnations had it before;
    /// nil (logged) when it gives none.
    private func queueLog(_ q: Int) -> (SharedMapping, Int)? {
        do {
            return try domain.inflightLog(.vif, frontend: frontend, devid: devid, queue: q, bytes: NetbackQueueLog.bytes)
        } catch {
            owner.log("netback: \(name): no in-flight log for queue \(q) (\(error)); requests in flight are lost if this driver domain is restarted")
            return nil
        }
    }
}

struct NetbackSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A vif's port on its bridge: frames for it go to netback's delivery (rx ring or backlog).
final class NetbackVifPort: NetBridgePortProtocol {
    let id: Int
    let vif: NetbackVif
    unowned let owner: Netback

    init(id: Int, vif: NetbackVif, owner: Netback) {
        self.id = id
        self.vif = vif
        self.owner = owner
    }

    func deliver(_ frame: UnsafeRawBufferPointer, info: FrameInfo) { owner.deliver(frame, to: vif, info: info) }
}

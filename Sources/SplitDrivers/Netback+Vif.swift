import DomainRuntime
import Glibc
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
    private(set) var name: String
    private let kick = Kick()
    private var stop: UInt32 = 0
    private let stopLock = Lock()
    private var stopReason: String?
    var dir: String { "backend/vif/\(frontend)/\(devid)" }

    // Set by connect.
    private(set) var mac = MACAddress(value: 0)
    private(set) var antiSpoof = AntiSpoof(mac: MACAddress(value: 0))
    var credit: CreditScheduler?
    var creditBlockedUntil: UInt64?
    var floodLimiter: FrameRateLimiter
    private(set) var bridgeName = "xenbr0"
    /// The frontend takes multi-slot rx frames (`feature-sg`).
    private(set) var sg = false
    var bridge: NetBridge?
    var bridgePort = 0
    private(set) var queues: [NetbackQueue] = []
    /// Frames waiting for rx pages: bytes and queue index.
    var backlog: [([UInt8], Int)] = []
    var stats = NetbackVifStats()
    private var frontendDir = ""
    private var watchToken: String?

    init(owner: Netback, frontend: UInt16, devid: UInt32) {
        self.owner = owner
        self.frontend = frontend
        self.devid = devid
        name = "vif\(frontend).\(devid)"
        floodLimiter = FrameRateLimiter(framesPerSecond: UInt64(owner.broadcastPPS), burst: UInt64(owner.broadcastPPS / 10 + 64),
                                        now: MonotonicClock.nanoseconds())
    }

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

    private var lastPublished = ""

    /// Writes `statistics` under the backend directory when the counters changed.
    private func publishStatistics() {
        owner.lock.lock()
        let text = stats.text
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
        let maxQueues = owner.maxQueues
        for (k, v) in [("feature-sg", "1"), ("feature-gso-tcpv4", "0"), ("feature-gso-tcpv6", "0"), ("feature-rx-copy", "1"),
                       ("feature-rx-flip", "0"), ("feature-multicast-control", "0"), ("feature-split-event-channels", "1"),
                       ("feature-ipv6-csum-offload", "0"), ("multi-queue-max-queues", "\(maxQueues)")] {
            try xs.write(dir + "/" + k, v)
        }
        let token = "netback:\(frontend)/\(devid)"
        try? xs.watch(feDir + "/state", token: token) { [kick] _ in kick.raise() }
        watchToken = token
        try xs.write(dir + "/state", XenbusState.initWait.storeValue)
        while true {
            if stopping { throw NetbackSetupError("device removed by the toolstack") }
            let s = (try? xs.read(feDir + "/state")).flatMap { XenbusState(storeValue: $0) } ?? .unknown
            if s == .initialised || s == .connected { break }
            if s == .closing || s == .closed || s == .unknown { throw NetbackSetupError("the frontend closed the device") }
            kick.wait(timeoutMs: 100)
        }
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
            func number<T: FixedWidthInteger>(_ key: String, _: T.Type) throws -> T {
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
    }
}

struct NetbackSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// One queue of a vif: its two rings, ports and the frontend's pages it keeps mapped.
final class NetbackQueue {
    unowned let vif: NetbackVif
    let index: Int
    let tx: BackRing
    let rx: BackRing
    let txPort: EventChannels.Port
    let rxPort: EventChannels.Port
    private let txRing: GrantMapping
    private let rxRing: GrantMapping
    /// Kept mappings of the frontend's buffers: tx pages read-only, rx pages writable.
    private var txCache: [GrantRef: GrantMapping] = [:]
    private var rxCache: [GrantRef: GrantMapping] = [:]
    /// A frontend cycling through more grants than this starts its cache over.
    static let cacheLimit = 2048
    var lastMapFailure = ""
    // Switch state (under the Netback lock).
    var txWork = false
    var rxWork = false
    var dead = false
    var isTouched = false
    var txResponsesPending = false
    var rxResponsesPending = false
    private var domain: Domain { vif.domain }

    deinit {
        txFast.deallocate()
        rxFast.deallocate()
    }

    init(vif: NetbackVif, index: Int, txRef: GrantRef, rxRef: GrantRef, txRemote: EventChannels.Port, rxRemote: EventChannels.Port) throws {
        self.vif = vif
        self.index = index
        txFast.initialize(repeating: nil, count: Self.fastRefs)
        rxFast.initialize(repeating: nil, count: Self.fastRefs)
        let gt = vif.domain.grantTable, ev = vif.domain.eventChannels
        let fe = vif.frontend
        let maps = gt.map([(fe, txRef, false), (fe, rxRef, false)])
        guard case let .success(t) = maps[0], case let .success(r) = maps[1] else {
            let bad = maps.enumerated().first { if case .failure = $0.element { return true } else { return false } }
            var why = "?"
            if let bad, case let .failure(e) = bad.element { why = "\(e)" }
            for case let .success(m) in maps { try? gt.unmap(m) }
            throw NetbackSetupError("queue \(index): cannot map \(bad?.offset == 0 ? "tx-ring-ref \(txRef)" : "rx-ring-ref \(rxRef)"): \(why)")
        }
        txRing = t
        rxRing = r
        tx = BackRing(page: t.base, layout: RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize))
        rx = BackRing(page: r.base, layout: RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize))
        do {
            txPort = try ev.bindInterdomain(remote: fe, remotePort: txRemote)
        } catch {
            _ = gt.unmap([t, r])
            throw NetbackSetupError("queue \(index): cannot bind event channel \(txRemote): \(error)")
        }
        if rxRemote == txRemote {
            rxPort = txPort
        } else {
            do {
                rxPort = try ev.bindInterdomain(remote: fe, remotePort: rxRemote)
            } catch {
                try? ev.close(txPort)
                _ = gt.unmap([t, r])
                throw NetbackSetupError("queue \(index): cannot bind event channel \(rxRemote): \(error)")
            }
        }
    }

    /// Direct lookup for the low grant references (where a frontend's buffers are): gref → base.
    static let fastRefs = 8192
    private let txFast = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: NetbackQueue.fastRefs)
    private let rxFast = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: NetbackQueue.fastRefs)

    /// The frontend's tx page `gref`, mapped read-only (kept); nil when it cannot be mapped.
    @inline(__always)
    func txPage(_ gref: GrantRef, vif: NetbackVif) -> UnsafeMutableRawPointer? {
        if Int(gref) < Self.fastRefs, let p = txFast[Int(gref)] { return p }
        if let m = txCache[gref] { return m.base }
        return map(gref, readonly: true, cache: &txCache, fast: txFast)
    }

    /// The frontend's rx page `gref`, mapped writable (kept).
    @inline(__always)
    func rxPage(_ gref: GrantRef, vif: NetbackVif) -> UnsafeMutableRawPointer? {
        if Int(gref) < Self.fastRefs, let p = rxFast[Int(gref)] { return p }
        if let m = rxCache[gref] { return m.base }
        return map(gref, readonly: false, cache: &rxCache, fast: rxFast)
    }

    private func map(_ gref: GrantRef, readonly: Bool, cache: inout [GrantRef: GrantMapping],
                     fast: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> UnsafeMutableRawPointer? {
        let gt = domain.grantTable
        if cache.count >= Self.cacheLimit {
            _ = gt.unmap(Array(cache.values))
            cache.removeAll(keepingCapacity: true)
            fast.update(repeating: nil, count: Self.fastRefs)
        }
        switch gt.map([(vif.frontend, gref, readonly)])[0] {
        case let .success(m):
            cache[gref] = m
            if Int(gref) < Self.fastRefs { fast[Int(gref)] = m.base }
            return m.base
        case let .failure(e):
            lastMapFailure = "\(e)"
            return nil
        }
    }

    /// Unmaps everything and closes the ports (after the switch let go of the queue).
    func teardown() {
        let gt = domain.grantTable, ev = domain.eventChannels
        _ = gt.unmap(Array(txCache.values) + Array(rxCache.values) + [txRing, rxRing])
        txCache.removeAll()
        rxCache.removeAll()
        txFast.update(repeating: nil, count: Self.fastRefs)
        rxFast.update(repeating: nil, count: Self.fastRefs)
        try? ev.close(txPort)
        if rxPort != txPort { try? ev.close(rxPort) }
    }
}

import DomainRuntime
import LinuxHost
import ProcvisorABI

/// netback: serves the vifs the toolstack assigns to this driver domain
/// (`/local/domain/SELF/backend/vif/F/DEVID`) and switches their frames on learning L2 bridges,
/// one per `bridge=` name, each with an optional tap uplink the supervisor hands over.
///
/// Threads: one per vif does the xenbus handshake (Linux's connect: rings, event channels,
/// queues) and watches the frontend; the caller's thread becomes the switch: it takes every
/// event of the domain and moves frames. The switch serves the vifs' tx rings round robin, at
/// most `budget` packets from each per pass, so a busy guest cannot starve the others; each
/// frame is checked (anti-spoofing, the bridge's filter rules, the vif's `rate=` credit),
/// learned, and copied straight from the sender's granted page into the receiver's (grants are
/// mapped once and kept: no system call per packet). Responses and notifications go out once per
/// pass. A frame for a vif whose rx ring is empty waits in a short backlog and is dropped when
/// that is full: a guest that never refills its ring loses its own frames, nobody else's. Each
/// bridge's uplink thread moves frames between its tap and the switch with io_uring (or plain
/// read/write when io_uring is refused).
///
/// Settings: `NetbackSettings`, read from the driver domain's command line (KEY=VALUE) by
/// `DriverSettings.netback`.
public final class Netback {
    let domain: Domain
    let log: (String) -> Void
    let settings: NetbackSettings
    /// Guards the switch state: vifs, bridges, ports. The switch holds it for a pass.
    let lock = Lock()
    private lazy var devices = BackendDevices<NetbackVif>(
        domain: domain, type: "vif", make: { [unowned self] f, d in NetbackVif(owner: self, frontend: f, devid: d) },
        start: { [domain] vif in domain.startVCPU(-10) { _ in vif.run() } }, stop: { $0.requestStop(nil) })
    @exclusivity(unchecked) private var byPort: [EventChannels.Port: (vif: NetbackVif, queue: Int)] = [:]
    @exclusivity(unchecked) var bridges: [String: NetBridge] = [:]
    /// Vif queues in service order.
    @exclusivity(unchecked) private var queues: [NetbackQueue] = []
    @exclusivity(unchecked) private var nextStart = 0
    @exclusivity(unchecked) private var nextPortID = 1
    /// The port uplink threads signal when frames came in from a tap.
    @exclusivity(unchecked) private(set) var wakePort: EventChannels.Port = 0
    /// Queues (or uplinks) whose responses/rx must be pushed at the end of this pass.
    @exclusivity(unchecked) private var touched: [NetbackQueue] = []
    @exclusivity(unchecked) private var uplinksToKick: [NetUplink] = []
    /// Where a multi-slot frame is gathered.
    private let scratch = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 64)
    @exclusivity(unchecked) private var lastLog: [String: UInt64] = [:]
    @exclusivity(unchecked) private(set) var filterText: [String: String] = [:]

    public init(domain: Domain, settings: NetbackSettings = NetbackSettings(), log: @escaping (String) -> Void) {
        self.domain = domain
        self.settings = settings
        self.log = log
        budget = settings.budget
    }

    /// Packets taken from each vif (and uplink) per pass (`budget=N`).
    let budget: Int
    /// `multi-queue-max-queues` offered to each vif.
    var maxQueues: Int { settings.maxQueues(vcpus: Int(domain.startInfo.vcpus)) }

    /// Logs `line`, at most once a second per `key` (a hostile guest must not flood the log).
    func logLimited(_ key: String, _ line: @autoclosure () -> String) {
        let now = MonotonicClock.nanoseconds()
        if let last = lastLog[key], now - last < 1_000_000_000 { return }
        lastLog[key] = now
        log(line())
    }

    /// Watches for vifs and filter rules and switches frames forever.
    public func run() -> Never {
        do {
            wakePort = try domain.eventChannels.bindIPI()
            try domain.store.watch("backend/vif", token: "netback:devices") { [unowned self] _ in devices.scan() }
            try domain.store.watch("netfilter", token: "netback:filters") { [unowned self] _ in reloadFilters() }
        } catch {
            log("netback: cannot start: \(error)")
            domain.shutdown(.crash)
        }
        log("netback: dom\(domain.domid) serving vifs (\(maxQueues) queue\(maxQueues == 1 ? "" : "s") per vif at most)")
        let ev = domain.eventChannels
        var timeout: Int64 = -1
        while true {
            let ports = ev.wait(timeoutNs: timeout, spin: settings.spin)
            lock.lock()
            for p in ports {
                if p == wakePort {
                    for b in bridges.values { b.uplink?.inboundPending = true }
                } else if let (vif, qi) = byPort[p], qi < vif.queues.count {
                    let q = vif.queues[qi]
                    if q.txPort == p { q.txWork = true }
                    if q.rxPort == p { q.rxWork = true }
                }
            }
            timeout = switchFrames()
            lock.unlock()
        }
    }

    // MARK: the switch

    /// Passes over every vif queue and uplink until none has work (or all that remain are
    /// held by their rate); returns how long the caller may sleep (-1: until an event).
    private func switchFrames() -> Int64 {
        let now0 = MonotonicClock.nanoseconds()
        var wakeAt: UInt64 = .max
        while true {
            var progress = false
            let n = queues.count
            let now = MonotonicClock.nanoseconds()
            if n > 0 {
                let start = nextStart % n
                for i in 0..<n {
                    let q = queues[(start + i) % n]
                    if q.dead { continue }
                    if q.rxWork || !q.vif.backlog.isEmpty { deliverBacklog(q.vif) }
                    guard q.txWork else { continue }
                    if let t = q.vif.creditBlockedUntil, t > now {
                        wakeAt = min(wakeAt, t)
                        continue
                    }
                    q.vif.creditBlockedUntil = nil
                    let done = serviceTx(q, now: now)
                    if q.dead { continue }
                    if done == budget {
                        progress = true
                    } else if q.vif.creditBlockedUntil != nil {
                        wakeAt = min(wakeAt, q.vif.creditBlockedUntil!)
                    } else if !q.tx.finalCheckForRequests() {
                        q.txWork = false
                    } else {
                        progress = true
                    }
                }
                nextStart = start + 1
            }
            for b in bridges.values {
                guard let up = b.uplink, up.inboundPending else { continue }
                if takeUplinkFrames(b, up) == budget { progress = true }
            }
            pushTouched()
            if !progress { break }
        }
        for q in queues where !q.dead && q.rxWork {
            // The frontend posted rx pages: what waited has been delivered; arm rx req_event again.
            if q.vif.backlog.isEmpty || !q.rx.finalCheckForRequests() { q.rxWork = false }
        }
        if queues.contains(where: { !$0.dead && !$0.vif.backlog.isEmpty }) {
            // Backlogged frames: look again soon even if the guest does not notify.
            wakeAt = min(wakeAt, now0 + 10_000_000)
        }
        if wakeAt == .max { return -1 }
        let now = MonotonicClock.nanoseconds()
        return wakeAt > now ? Int64(wakeAt - now) : 0
    }

    /// Responses and notifications of everything this pass touched.
    private func pushTouched() {
        let ev = domain.eventChannels
        for q in touched {
            q.isTouched = false
            if q.dead { continue }
            if q.txResponsesPending {
                q.txResponsesPending = false
                if q.tx.pushResponses() { try? ev.send(q.txPort) }
            }
            if q.rxResponsesPending {
                q.rxResponsesPending = false
                if q.rx.pushResponses() { try? ev.send(q.rxPort) }
                if let log = q.inflight {
                    log.words[1] = 0
                    log.words[2] = 0
                }
            }
            q.vif.saveStats()
        }
        touched.removeAll(keepingCapacity: true)
        for u in uplinksToKick { u.kick() }
        uplinksToKick.removeAll(keepingCapacity: true)
    }

    private func touch(_ q: NetbackQueue) {
        if !q.isTouched {
            q.isTouched = true
            touched.append(q)
        }
    }

    /// Takes up to `budget` packets off a tx ring. A packet that breaks the protocol is answered
    /// NETIF_RSP_ERROR and logged; a ring whose indexes are impossible disconnects the vif.
    private func serviceTx(_ q: NetbackQueue, now: UInt64) -> Int {
        let vif = q.vif
        var avail: UInt32
        do { avail = try q.tx.pendingRequests() } catch {
            fatal(vif, "tx ring \(q.index): \(error)")
            return 0
        }
        var done = 0
        while done < budget && avail > 0 {
            // Walk the chain: first slot, extras, more_data slots.
            let first = NetifTxRequest(loading: q.tx.peekRequest(0))
            var slots: UInt32 = 1
            var error: NetifTxError?
            var incomplete = false
            if first.hasExtraInfo {
                var more = true
                while more {
                    if slots >= avail { incomplete = true; break }
                    let extra = NetifExtraInfo(loading: q.tx.peekRequest(slots))
                    slots += 1
                    // Only multicast add/del and hash are taken (and ignored); GSO was not offered.
                    if extra.type != Netif.extraTypeMcastAdd && extra.type != Netif.extraTypeMcastDel && extra.type != Netif.extraTypeHash {
                        error = error ?? .badExtraInfo(type: extra.type)
                    }
                    more = extra.more
                    if more && slots > UInt32(Netif.maxSlotsPerPacket) { error = error ?? .tooManySlots(Int(slots)); break }
                }
            }
            var dataSlots = 1
            var last = first
            var sizes = 0
            while !incomplete && last.moreData {
                if slots >= avail { incomplete = true; break }
                last = NetifTxRequest(loading: q.tx.peekRequest(slots))
                slots += 1
                dataSlots += 1
                sizes += Int(last.size)
                if dataSlots > Netif.maxSlotsPerPacket {
                    error = error ?? .tooManySlots(dataSlots)
                    // The chain is answered up to here; the rest are taken as packets of their own.
                    break
                }
            }
            if incomplete {
                if avail == q.tx.layout.count {
                    fatal(vif, "tx ring \(q.index): a packet's slots fill the whole ring without ending")
                    return done
                }
                break  // the rest of the chain is not on the ring yet
            }
            let total = Int(first.size)
            if error == nil {
                if total < Netif.ethernetHeaderSize || total > Netif.maxTxSize {
                    error = .badPacketSize(total)
                } else if sizes > total {
                    error = .sizeMismatch(announced: total, slots: sizes)
                }
            }
            if error == nil, vif.credit != nil {
                if !vif.credit!.consume(total, now: now) {
                    vif.creditBlockedUntil = vif.credit!.nextCreditTime
                    vif.stats.rateHeld += 1
                    return done
                }
            }
            var frame: UnsafeRawBufferPointer?
            if error == nil {
                // Map (or find) every data slot's page and put the frame together.
                var gathered = 0
                var index: UInt32 = 0
                var dataIndex = 0
                while index < slots {
                    let p = q.tx.peekRequest(index)
                    let isExtra = index > 0 && index <= slots - UInt32(dataSlots) && first.hasExtraInfo
                    index += 1
                    if isExtra { continue }
                    let r = NetifTxRequest(loading: p)
                    let size = dataIndex == 0 ? total - sizes : Int(r.size)
                    let offset = Int(r.offset)
                    dataIndex += 1
                    if offset + size > Netif.pageSize {
                        error = .slotPastPage(slot: dataIndex - 1, offset: offset, size: size)
                        break
                    }
                    guard let page = q.txPage(r.gref, vif: vif) else {
                        error = .badGrant(gref: r.gref, status: q.lastMapFailure)
                        break
                    }
                    if dataSlots == 1 {
                        frame = UnsafeRawBufferPointer(start: page + offset, count: size)
                    } else {
                        (scratch + gathered).copyMemory(from: page + offset, byteCount: size)
                        gathered += size
                    }
                }
                if error == nil && dataSlots > 1 { frame = UnsafeRawBufferPointer(start: scratch, count: gathered) }
            }
            if let error {
                vif.stats.txErrors += 1
                // One line per vif and kind of error per second.
                logLimited("tx-\(vif.name)-\(error.kind)", "netback: \(vif.name): malformed tx packet: \(error); answered NETIF_RSP_ERROR")
            } else if let frame, let bridge = vif.bridge {
                vif.stats.txFrames += 1
                vif.stats.txBytes += frame.count
                forward(frame, from: vif.bridgePort, bridge: bridge, sourceVif: vif, now: now)
            }
            // Answer every slot of the chain (extras with NETIF_RSP_NULL), each answer in its
            // request's slot: the requests are copied aside first, for a next incarnation.
            q.inflight?.takingTx(slots, on: q.tx)
            let status = error == nil ? Netif.rspOkay : Netif.rspError
            for i in 0..<slots {
                let r = NetifTxRequest(loading: q.tx.peekRequest(i))
                let isExtra = i > 0 && i <= slots - UInt32(dataSlots) && first.hasExtraInfo
                NetifTxResponse(id: r.id, status: isExtra ? Netif.rspNull : status).store(to: q.tx.nextResponse())
            }
            q.tx.consume(slots)
            q.txResponsesPending = true
            touch(q)
            avail -= slots
            done += 1
            if q.dead { return done }
        }
        return done
    }

    /// A vif broke the ring protocol: it is disconnected (its device thread tears it down).
    func fatal(_ vif: NetbackVif, _ why: String) {
        for q in vif.queues { q.dead = true }
        log("netback: \(vif.name): \(why); disconnected")
        vif.requestStop(why)
    }

    // MARK: forwarding

    /// One frame entering `bridge` on `port`: checks, learning, delivery.
    func forward(_ frame: UnsafeRawBufferPointer, from port: Int, bridge: NetBridge, sourceVif: NetbackVif?, now: UInt64) {
        guard let info = FrameInfo.parse(frame) else {
            sourceVif?.stats.dropped += 1
            return
        }
        if let vif = sourceVif {
            let verdict = vif.antiSpoof.check(info)
            if verdict != .ok {
                vif.stats.spoofDropped += 1
                logLimited("spoof-\(vif.name)", "netback: \(vif.name): dropped a forged frame (\(verdict))")
                return
            }
        }
        if !bridge.filter.isEmpty {
            let ingress = sourceVif?.name ?? "uplink"
            if bridge.filter.verdict(info, ingress: ingress) == .drop {
                bridge.filterDropped += 1
                sourceVif?.stats.filterDropped += 1
                return
            }
        }
        bridge.macs.learn(info.src, port: port, now: now)
        var destination: Int?
        if !info.dst.isMulticast { destination = bridge.macs.lookup(info.dst, now: now) }
        if let d = destination {
            if d == port { return }
            bridge.port(d)?.deliver(frame, info: info)
            return
        }
        // Broadcast, multicast, unknown unicast: every other port, within the sender's allowance.
        if let vif = sourceVif, !vif.floodLimiter.allow(now: now) {
            vif.stats.floodDropped += 1
            logLimited("flood-\(vif.name)", "netback: \(vif.name): flooding over \(settings.broadcastPPS) frames/s; dropping the excess")
            return
        }
        for p in bridge.ports where p.id != port { p.deliver(frame, info: info) }
    }

    /// A frame for a vif: into its rx ring now, or its backlog when the ring has no pages.
    func deliver(_ frame: UnsafeRawBufferPointer, to vif: NetbackVif, info: FrameInfo) {
        if vif.queues.isEmpty || vif.queues[0].dead { return }
        let q = vif.queues.count == 1 ? vif.queues[0] : vif.queues[vif.queueIndex(for: info)]
        if vif.backlog.isEmpty, copyToRx(frame, q) { return }
        if vif.backlog.count >= settings.backlog {
            vif.stats.rxDropped += 1
            logLimited("rxfull-\(vif.name)", "netback: \(vif.name): rx ring not refilled; dropping frames for it")
            return
        }
        vif.backlog.append((Array(frame), q.index))
        vif.noteBacklog()
    }

    private func deliverBacklog(_ vif: NetbackVif) {
        var taken = 0
        while taken < vif.backlog.count {
            let (bytes, qi) = vif.backlog[taken]
            let q = vif.queues[qi]
            if q.dead { taken = vif.backlog.count; break }
            let ok = bytes.withUnsafeBytes { copyToRx($0, q) }
            if !ok { break }
            taken += 1
        }
        if taken > 0 {
            vif.backlog.removeFirst(taken)
            vif.noteBacklog()
        }
    }

    /// Copies a frame into the pages of the next rx requests; false when there are not enough.
    private func copyToRx(_ frame: UnsafeRawBufferPointer, _ q: NetbackQueue) -> Bool {
        let vif = q.vif
        let need = UInt32((frame.count + Netif.pageSize - 1) / Netif.pageSize)
        if need > 1 && !vif.sg {
            // The frontend did not offer feature-sg: it takes one slot per frame.
            vif.stats.rxDropped += 1
            logLimited("rxsg-\(vif.name)", "netback: \(vif.name): a \(frame.count)-byte frame needs \(need) rx slots but the frontend has no feature-sg; dropped")
            return true
        }
        let avail: UInt32
        do { avail = try q.rx.pendingRequests() } catch {
            fatal(vif, "rx ring \(q.index): \(error)")
            return true
        }
        if avail < need { return false }
        var done = 0
        for i in 0..<need {
            let r = NetifRxRequest(loading: q.rx.peekRequest(0))
            q.inflight?.takingRx(on: q.rx)
            q.rx.consume(1)
            let n = min(Netif.pageSize, frame.count - done)
            let more = i + 1 < need
            if let page = q.rxPage(r.gref, vif: vif) {
                page.copyMemory(from: frame.baseAddress! + done, byteCount: n)
                NetifRxResponse(id: r.id, offset: 0, flags: (more ? Netif.rxMoreData : 0) | Netif.rxDataValidated,
                                status: Int16(n)).store(to: q.rx.nextResponse())
            } else {
                vif.stats.rxErrors += 1
                logLimited("rxgref-\(vif.name)", "netback: \(vif.name): rx gref \(r.gref) cannot be mapped (\(q.lastMapFailure)); frame dropped")
                NetifRxResponse(id: r.id, offset: 0, flags: more ? Netif.rxMoreData : 0, status: Netif.rspError).store(to: q.rx.nextResponse())
            }
            done += n
        }
        vif.stats.rxFrames += 1
        vif.stats.rxBytes += frame.count
        if let log = q.inflight {
            log.words[1] += 1
            log.words[2] += frame.count
        }
        q.rxResponsesPending = true
        touch(q)
        return true
    }

    private func takeUplinkFrames(_ b: NetBridge, _ up: NetUplink) -> Int {
        let frames = up.takeInbound(max: budget)
        if frames.count < budget { up.inboundPending = false }
        let now = MonotonicClock.nanoseconds()
        for f in frames {
            f.withUnsafeBytes { forward($0, from: NetBridge.uplinkPort, bridge: b, sourceVif: nil, now: now) }
        }
        return frames.count
    }

    func queueUplinkKick(_ u: NetUplink) {
        if !uplinksToKick.contains(where: { $0 === u }) { uplinksToKick.append(u) }
    }

    // MARK: devices

    /// The bridge named `name`, created on first use (its uplink is asked for by `attachUplink`).
    /// Caller holds `lock`.
    func bridge(named name: String) -> NetBridge {
        if let b = bridges[name] { return b }
        let b = NetBridge(name: name)
        b.filter = parseFilter(bridge: name, filterText[name])
        bridges[name] = b
        return b
    }

    /// Asks the supervisor for the bridge's tap (outside `lock`: a hypercall).
    func attachUplink(_ b: NetBridge, via vif: NetbackVif) {
        guard !b.uplinkRequested else { return }
        b.uplinkRequested = true
        do {
            let fd = try domain.deviceFD(.uplink, frontend: vif.frontend, devid: vif.devid)
            let up = NetUplink(owner: self, bridge: b, tap: fd)
            lock.lock()
            b.uplink = up
            b.addPort(up)
            lock.unlock()
            up.start()
            b.uplinkStatus = "tap \(b.name) (\(up.engineName))"
            log("netback: bridge \(b.name): uplink is tap \(b.name) (\(up.engineName))")
        } catch {
            b.uplinkStatus = "none: \(error)"
            log("netback: bridge \(b.name): guest-only, no uplink (the supervisor could not create tap \(b.name): \(error))")
        }
        try? domain.store.write("bridge/\(b.name)/uplink", b.uplinkStatus)
    }

    /// Adds a connected vif to its bridge and the switch; nil, or why it was refused.
    func register(_ vif: NetbackVif) -> String? {
        lock.lock()
        defer { lock.unlock() }
        let b = bridge(named: vif.bridgeName)
        // `mac-takeover` (written by the toolstack, never by the frontend): a migration's copy on
        // this same host, whose MAC its suspended source still holds; it shares the MAC until the
        // source goes, and the switch learns whichever sends.
        if !vif.macTakeover, let other = b.ports.compactMap({ $0 as? NetbackVifPort }).first(where: { $0.vif.mac == vif.mac }) {
            return "MAC \(vif.mac) is already on bridge \(b.name) (\(other.vif.name))"
        }
        vif.bridge = b
        vif.bridgePort = nextPortID
        nextPortID += 1
        b.addPort(NetbackVifPort(id: vif.bridgePort, vif: vif, owner: self))
        for q in vif.queues {
            byPort[q.txPort] = (vif, q.index)
            byPort[q.rxPort] = (vif, q.index)
            q.txWork = true
            q.rxWork = true
            queues.append(q)
        }
        // The switch looks at the new rings at once: requests may be waiting already with no
        // notification to come (a frontend notifies once per req_event, and the one it sent may
        // have gone to a dead incarnation of this backend).
        if wakePort != 0 { try? domain.eventChannels.send(wakePort) }
        return nil
    }

    /// Takes a vif out of the switch (its device thread then unmaps everything).
    func unregister(_ vif: NetbackVif) {
        lock.lock()
        defer { lock.unlock() }
        for q in vif.queues {
            q.dead = true
            if byPort[q.txPort]?.vif === vif { byPort[q.txPort] = nil }
            if byPort[q.rxPort]?.vif === vif { byPort[q.rxPort] = nil }
        }
        queues.removeAll { $0.vif === vif }
        touched.removeAll { $0.vif === vif }
        vif.backlog.removeAll()
        if let b = vif.bridge {
            b.removePort(vif.bridgePort)
        }
    }

    func finished(_ vif: NetbackVif) { devices.finished(frontend: vif.frontend, devid: vif.devid) }

    // MARK: filter rules

    private func parseFilter(bridge: String, _ text: String?) -> NetFilterRuleSet {
        guard let text, !text.isEmpty else { return NetFilterRuleSet() }
        do {
            return try NetFilterRuleSet.parse(text)
        } catch {
            log("netback: bridge \(bridge): filter rules refused, none applied: \(error)")
            return NetFilterRuleSet()
        }
    }

    /// `netfilter/BRIDGE` changed (dom0 writes it): each bridge's rules are replaced as a whole.
    func reloadFilters() {
        var texts: [String: String] = [:]
        for name in (try? domain.store.directory("netfilter")) ?? [] {
            texts[name] = (try? domain.store.read("netfilter/\(name)")) ?? ""
        }
        lock.lock()
        let old = filterText
        filterText = texts
        for (name, b) in bridges where old[name] != texts[name] {
            b.filter = parseFilter(bridge: name, texts[name])
            log("netback: bridge \(name): \(b.filter.rules.count) filter rule\(b.filter.rules.count == 1 ? "" : "s")")
        }
        lock.unlock()
    }
}

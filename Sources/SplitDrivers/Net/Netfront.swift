import DomainRuntime
import LinuxHost
import NetStack
import ProcvisorABI

// netfront: a guest's network interface (`device/vif/N`), speaking netif as Linux's netfront.
//
// Handshake (Linux's talk_to_netback, run by `XenbusFrontend.connect`): wait for the backend's
// InitWait; read what it offers (`multi-queue-max-queues`, `feature-split-event-channels`); per
// queue grant a tx and an rx ring page and write `tx-ring-ref`, `rx-ring-ref` and
// `event-channel` (or `event-channel-tx`/`event-channel-rx`), under `queue-N/` when there are
// several queues; then
// `request-rx-copy` 1, `feature-rx-notify` 1, `feature-sg` 1, `feature-no-csum-offload` 1 (the
// guest stack computes its checksums); Initialised; wait for Connected; Connected.
//
// Buffers: every tx slot id and every rx slot id owns one page, granted to the backend once
// (tx read-only, rx writable) and reused for the life of the device, so a backend that keeps
// mapped grants (netback does) maps each page once. A frame over one page takes several slots
// (`feature-sg`, NETTXF_more_data), up to 64 KiB. The pages are granted as they are needed, not
// all at the handshake (each is a memfd of its own, ~25 µs to make and map): the handshake
// offers `initialRx` rx pages; each poll grants `growBatch` more until the ring's 256 are on
// it, and tx ids get their pages when frames first need them. A connect (a restored domain's
// included, whose service is away until it is done) grants 2 ring pages and 32 others, not 514.
//
// Events: the domain has one event queue (`EventChannels.waitAny`); `poll` sleeps in it when
// nothing is waiting and keeps ports that are not this device's in `strayPorts`, or an
// application with its own `waitAny` loop calls `poll(timeoutNs: 0)` when `isOwnPort` says an
// event is this device's. Single-threaded: one thread drives a Netfront.

/// A connected vif of this domain: an Ethernet `NetworkLink` (for `NetStack`, or raw frames).
public final class Netfront: NetworkLink {
    public var domain: Domain { xenbus.domain }
    public var device: XenbusDevice { xenbus.device }
    public let label: String
    public let mac: MACAddress
    public let mtu: Int
    /// The vif's `ip` key (Xen's ip= text), if the toolstack wrote one.
    public let ipText: String?
    /// The vif's `gateway` key, if any.
    public let gatewayText: String?
    @exclusivity(unchecked) public private(set) var statistics = NetfrontStatistics()
    /// Ports `poll` saw that are not this device's, oldest first.
    @exclusivity(unchecked) public private(set) var strayPorts: [EventChannels.Port] = []

    static let slots = 256
    /// Rx pages on the ring when the device connects.
    static let initialRx = 32
    /// Pages granted at a time as the device grows to `slots` rx and tx pages.
    static let growBatch = 16

    /// One queue: its tx and rx rings (their pages on `xenbus`'s account), ports and slot pages.
    private final class Queue {
        let tx: FrontRing
        let rx: FrontRing
        let txPort: EventChannels.Port
        let rxPort: EventChannels.Port
        @exclusivity(unchecked) var txBuffers: [(page: GrantablePage, ref: GrantRef)] = []
        @exclusivity(unchecked) var rxBuffers: [(page: GrantablePage, ref: GrantRef)] = []
        /// Free tx ids (each id owns `txBuffers[id]`).
        @exclusivity(unchecked) var txFree: [UInt16] = []
        /// Tx ids on the ring: true while the backend owns the page.
        @exclusivity(unchecked) var txBusy: [Bool]
        @exclusivity(unchecked) var rxPosted: [Bool]
        @exclusivity(unchecked) var unpushedTx = false

        init(tx: UnsafeMutableRawPointer, rx: UnsafeMutableRawPointer, txPort: EventChannels.Port, rxPort: EventChannels.Port) {
            self.tx = FrontRing(page: tx, layout: Netfront.txLayout)
            self.rx = FrontRing(page: rx, layout: Netfront.rxLayout)
            self.txPort = txPort
            self.rxPort = rxPort
            txBusy = Array(repeating: false, count: Netfront.slots)
            rxPosted = Array(repeating: false, count: Netfront.slots)
        }
    }

    static let txLayout = RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize)
    static let rxLayout = RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize)

    /// The handshake, the watch on the backend and everything granted to it.
    private let xenbus: XenbusFrontend
    private let queues: [Queue]
    @exclusivity(unchecked) private var nextQueue = 0
    @exclusivity(unchecked) private var closedState = false
    @exclusivity(unchecked) private var closing = false
    /// Where a multi-slot received frame is put together.
    private let scratch: UnsafeMutableRawPointer
    private let ownPorts: Set<EventChannels.Port>

    public var queueCount: Int { queues.count }
    /// Each queue's ring indexes, free tx ids and posted rx pages, and its ports' state: what to
    /// look at when frames stop moving.
    public var ringState: String {
        let ev = domain.eventChannels
        return queues.enumerated().map { i, q in
            "queue \(i): tx [\(q.tx.indexes)] \(q.txFree.count) of \(q.txBuffers.count) ids free, port \(q.txPort)"
                + "\(ev.isConnected(q.txPort) ? "" : " (unbound)"); rx [\(q.rx.indexes)] \(q.rxPosted.filter { $0 }.count) pages posted, "
                + "port \(q.rxPort)\(ev.isConnected(q.rxPort) ? "" : " (unbound)")"
        }.joined(separator: "; ")
    }
    public var isClosed: Bool { closedState }
    public var eventChannelsSplit: Bool { queues.first.map { $0.txPort != $0.rxPort } ?? false }
    public var ports: [EventChannels.Port] { Array(ownPorts).sorted() }
    public func isOwnPort(_ p: EventChannels.Port) -> Bool { ownPorts.contains(p) }

    private init(xenbus: XenbusFrontend, queues: [Queue], mac: MACAddress, mtu: Int, ip: String?, gateway: String?) {
        self.xenbus = xenbus
        self.queues = queues
        self.mac = mac
        self.mtu = mtu
        ipText = ip
        gatewayText = gateway
        label = "vif \(xenbus.device.devid)"
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Netif.maxTxSize + 1, alignment: 16)
        var own = Set<EventChannels.Port>()
        for q in queues { own.insert(q.txPort); own.insert(q.rxPort) }
        ownPorts = own
    }

    deinit { scratch.deallocate() }

    /// This domain's vifs (the devids under `device/vif`), in order.
    public static func devices(domain: Domain) throws -> [UInt32] {
        do {
            return try domain.store.directory("device/vif").compactMap { UInt32($0) }.sorted()
        } catch let e as XenStoreError where e.name == "ENOENT" {
            return []
        }
    }

    /// Connects vif `devid` (the handshake at the top of this file, driven by
    /// `XenbusFrontend.connect`), waiting at most `timeout` seconds for the backend. On failure
    /// this end is left Closing once it had published anything, and what was allocated is released.
    public static func connect(domain: Domain, devid: UInt32 = 0, timeout: Double = 30,
                               options: NetfrontOptions = NetfrontOptions()) throws -> Netfront {
        let label = "vif \(devid)"
        func fail(_ reason: String) -> NetfrontError { .handshake(device: label, reason: reason) }
        let xenbus = try XenbusFrontend(domain: domain, type: "vif", devid: devid, failure: fail)
        let dir = xenbus.device.frontendPath
        guard let macText = xenbus.frontendNode("mac"), let mac = MACAddress(macText), !mac.isMulticast else {
            throw NetfrontError.badConfig(device: label, reason: "\(dir)/mac is missing or not a unicast MAC address")
        }
        var mtu = 1500
        if let t = xenbus.frontendNode("mtu") {
            guard let m = Int(t), m >= 68, m <= Netif.maxMTU else {
                throw NetfrontError.badConfig(device: label, reason: "\(dir)/mtu \"\(t)\" is not 68…\(Netif.maxMTU)")
            }
            mtu = m
        }
        var queues: [Queue] = []
        let front = try xenbus.connect(timeout: timeout, failure: fail, publish: { _ in
            let maxQueues = max(1, xenbus.backendNode("multi-queue-max-queues").flatMap { Int($0) } ?? 1)
            let nq = max(1, min(options.queues, maxQueues))
            let split = options.splitEventChannels && xenbus.backendNode("feature-split-event-channels") == "1"
            var nodes: [(key: String, value: String)] = nq > 1 ? [("multi-queue-num-queues", String(nq))] : []
            for q in 0..<nq {
                let tx = try xenbus.grantRing(pages: 1)
                let rx = try xenbus.grantRing(pages: 1)
                let txPort = try xenbus.allocUnboundPort()
                let rxPort = split ? try xenbus.allocUnboundPort() : txPort
                let prefix = nq > 1 ? "queue-\(q)/" : ""
                nodes += [(prefix + "tx-ring-ref", String(tx.refs[0])), (prefix + "rx-ring-ref", String(rx.refs[0]))]
                nodes += split ? [(prefix + "event-channel-tx", String(txPort)), (prefix + "event-channel-rx", String(rxPort))]
                               : [(prefix + "event-channel", String(txPort))]
                let queue = Queue(tx: tx.base, rx: rx.base, txPort: txPort, rxPort: rxPort)
                // The first rx pages are offered before the backend connects; the rest follow.
                for _ in 0..<initialRx { queue.rxBuffers.append(try xenbus.grantPage()) }
                for id in 0..<initialRx {
                    guard let s = queue.rx.nextRequest() else { break }
                    NetifRxRequest(id: UInt16(id), gref: queue.rxBuffers[id].ref).store(to: s)
                    queue.rxPosted[id] = true
                }
                _ = queue.rx.pushRequests()
                queues.append(queue)
            }
            nodes += [("request-rx-copy", "1"), ("feature-rx-notify", "1"), ("feature-sg", "1"),
                      ("feature-no-csum-offload", "1"), ("feature-gso-tcpv4", "0")]
            return nodes
        }, connected: {
            Netfront(xenbus: xenbus, queues: queues, mac: mac, mtu: mtu, ip: xenbus.frontendNode("ip"),
                     gateway: xenbus.frontendNode("gateway"))
        })
        xenbus.watchBackend()
        return front
    }

    // MARK: transmitting

    /// Puts one frame on a tx ring (copied into the slot pages); false when the ring has no room
    /// for it now. Frames over `mtu + 14` (+4 with an 802.1Q tag) and frames on a closed device
    /// are dropped (counted in `txDropped`) and reported as sent.
    public func transmit(_ frame: UnsafeRawBufferPointer) -> Bool {
        checkBackend()
        guard !closedState, frame.count >= Netif.ethernetHeaderSize, frame.count <= min(mtu + 18, Netif.maxTxSize), let src = frame.baseAddress else {
            statistics.txDropped += 1
            return true
        }
        let q = queues.count == 1 ? queues[0] : pickQueue(frame)
        let pages = (frame.count + Netif.pageSize - 1) / Netif.pageSize
        if q.txFree.count < pages || q.tx.freeRequests < UInt32(pages) {
            reapTx(q)
            if q.txFree.count < pages { growTx(q, needed: pages) }
            if q.txFree.count < pages || q.tx.freeRequests < UInt32(pages) { return false }
        }
        var done = 0
        for i in 0..<pages {
            let id = q.txFree.removeLast()
            q.txBusy[Int(id)] = true
            let n = min(Netif.pageSize, frame.count - done)
            let buffer = q.txBuffers[Int(id)]
            buffer.page.base.copyMemory(from: src + done, byteCount: n)
            let more = i < pages - 1
            let size = i == 0 ? frame.count : n
            guard let slot = q.tx.nextRequest() else { break }  // room was checked above
            NetifTxRequest(gref: buffer.ref, offset: 0, flags: more ? Netif.txMoreData : 0, id: id, size: UInt16(size)).store(to: slot)
            done += n
        }
        q.unpushedTx = true
        statistics.txFrames += 1
        statistics.txBytes += frame.count
        return true
    }

    /// The queue for a frame with several queues: by its addresses, so one flow stays in order.
    private func pickQueue(_ frame: UnsafeRawBufferPointer) -> Queue {
        var h: UInt32 = 2166136261
        for i in 0..<min(frame.count, 12) { h = (h ^ UInt32(frame[i])) &* 16777619 }
        if frame.count >= 34, frame[12] == 0x08, frame[13] == 0x00 {
            for i in 26..<34 { h = (h ^ UInt32(frame[i])) &* 16777619 }
        }
        return queues[Int(h % UInt32(queues.count))]
    }

    /// Publishes the queued frames (one notification per queue at most).
    public func flush() {
        for q in queues where q.unpushedTx {
            q.unpushedTx = false
            if q.tx.pushRequests() { try? domain.eventChannels.send(q.txPort) }
        }
    }

    /// Gives tx ids their pages until `needed` are free (a batch at a time, at most `slots`). A
    /// grant that fails (the grant table full) leaves the ids there are: the frame waits for
    /// one to come back.
    private func growTx(_ q: Queue, needed: Int) {
        while q.txFree.count < needed, q.txBuffers.count < Self.slots {
            for _ in 0..<min(Self.growBatch, Self.slots - q.txBuffers.count) {
                guard let buffer = try? xenbus.grantPage(readonly: true) else { return }
                q.txFree.insert(UInt16(q.txBuffers.count), at: 0)
                q.txBuffers.append(buffer)
            }
        }
    }

    /// Offers the backend `growBatch` more rx pages while the ring has fewer than `slots`.
    private func growRx(_ q: Queue) {
        guard q.rxBuffers.count < Self.slots else { return }
        var added = 0
        for _ in 0..<min(Self.growBatch, Self.slots - q.rxBuffers.count) {
            guard q.rx.freeRequests > 0, let buffer = try? xenbus.grantPage() else { break }
            let id = q.rxBuffers.count
            q.rxBuffers.append(buffer)
            repost(q, id)
            added += 1
        }
        if added > 0, q.rx.pushRequests() { try? domain.eventChannels.send(q.rxPort) }
    }

    /// Takes tx responses: pages come back to their ids.
    @discardableResult
    private func reapTx(_ q: Queue) -> Int {
        var n = 0
        while true {
            let slot: UnsafeRawPointer?
            do { slot = try q.tx.takeResponse() } catch {
                statistics.rxErrors += 1
                return n
            }
            guard let slot else { return n }
            let rsp = NetifTxResponse(loading: slot)
            if rsp.status == Netif.rspNull { continue }
            let id = Int(rsp.id)
            guard id < Self.slots, q.txBusy[id] else {
                statistics.rxErrors += 1
                continue
            }
            q.txBusy[id] = false
            q.txFree.append(rsp.id)
            if rsp.status != Netif.rspOkay { statistics.txErrors += 1 }
            n += 1
        }
    }

    // MARK: receiving

    /// Hands every received frame to `handler`, gives the pages back to the backend, reclaims
    /// tx pages; sleeps (up to `timeoutNs`; negative: no limit) when neither frames nor transmit
    /// space came back.
    public func poll(timeoutNs: Int64, _ handler: (UnsafeRawBufferPointer) -> Void) -> Int {
        let deadline = timeoutNs > 0 ? SystemTime.nanoseconds() + UInt64(timeoutNs) : 0
        let ev = domain.eventChannels
        while true {
            checkBackend()
            var n = 0, reclaimed = 0
            for q in queues {
                reclaimed += reapTx(q)
                n += receive(q, handler)
                growRx(q)
            }
            // Transmit space coming back ends the wait too (a sender waits here for it).
            if n > 0 || reclaimed > 0 || timeoutNs == 0 || closedState { return n }
            // Arm both rings' rsp_event, then look again before sleeping.
            var pending = false
            for q in queues where q.rx.finalCheckForResponses() || q.tx.finalCheckForResponses() { pending = true }
            if pending { continue }
            var slice: Int64 = 100_000_000
            if timeoutNs > 0 {
                let now = SystemTime.nanoseconds()
                if now >= deadline { return 0 }
                slice = min(slice, Int64(deadline - now))
            }
            if let p = ev.waitAny(timeoutNs: slice), !ownPorts.contains(p) { strayPorts.append(p) }
        }
    }

    private func receive(_ q: Queue, _ handler: (UnsafeRawBufferPointer) -> Void) -> Int {
        var frames = 0
        var assembled = 0
        var inFrame = false
        var taken = 0
        while true {
            let slot: UnsafeRawPointer?
            do { slot = try q.rx.takeResponse() } catch {
                statistics.rxErrors += 1
                break
            }
            guard let slot else { break }
            taken += 1
            let rsp = NetifRxResponse(loading: slot)
            let id = Int(rsp.id)
            guard id < Self.slots, q.rxPosted[id] else {
                statistics.rxErrors += 1
                continue
            }
            q.rxPosted[id] = false
            let page = q.rxBuffers[id].page.base
            let size = Int(rsp.status), offset = Int(rsp.offset)
            var ok = rsp.status > 0 && offset + size <= Netif.pageSize && assembled + size <= Netif.maxTxSize
            if rsp.flags & Netif.rxExtraInfo != 0 { ok = false }  // never asked for (no GSO, no hash)
            if ok {
                if !inFrame && !rsp.moreData {
                    handler(UnsafeRawBufferPointer(start: page + offset, count: size))
                    frames += 1
                    statistics.rxFrames += 1
                    statistics.rxBytes += size
                } else {
                    (scratch + assembled).copyMemory(from: page + offset, byteCount: size)
                    assembled += size
                    inFrame = rsp.moreData
                    if !inFrame {
                        handler(UnsafeRawBufferPointer(start: scratch, count: assembled))
                        frames += 1
                        statistics.rxFrames += 1
                        statistics.rxBytes += assembled
                        assembled = 0
                    }
                }
            } else {
                statistics.rxErrors += 1
                inFrame = rsp.moreData && inFrame
                assembled = 0
            }
            repost(q, id)
        }
        if taken > 0, q.rx.pushRequests() { try? domain.eventChannels.send(q.rxPort) }
        return frames
    }

    private func repost(_ q: Queue, _ id: Int) {
        guard let s = q.rx.nextRequest() else { return }
        NetifRxRequest(id: UInt16(id), gref: q.rxBuffers[id].ref).store(to: s)
        q.rxPosted[id] = true
    }

    /// Returns and forgets `strayPorts`.
    public func takeStrayPorts() -> [EventChannels.Port] {
        defer { strayPorts.removeAll() }
        return strayPorts
    }

    // MARK: closing

    /// The backend going Closing or away (the toolstack detaching the vif) closes this end.
    private func checkBackend() {
        guard !closing, let s = xenbus.backendStateIfChanged() else { return }
        if s == .closing || s == .closed || s == .unknown { close(timeout: 5) }
    }

    /// Closing, waits for the backend to close, Closed, then ends the grants (pages the backend
    /// still maps are never reused) and closes the event channels (`XenbusFrontend.close`).
    /// Idempotent.
    public func close(timeout: Double = 10) {
        if closing { return }
        closing = true
        closedState = true
        xenbus.close(deadline: XenbusDeadline(seconds: timeout))
    }
}

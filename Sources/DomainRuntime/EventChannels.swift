import LinuxHost
import ProcvisorABI

/// A hypercall that failed: which one and Xen's errno.
public struct HypercallError: Error, Equatable, CustomStringConvertible {
    public var operation: String
    public var errno: Int64

    public var description: String {
        let name = XenErrno(rawValue: errno).map { "\($0)" } ?? "errno \(errno)"
        return "\(operation) failed: \(name)"
    }
}

/// Event channels seen from inside a domain. Binding goes through the supervisor; sending and
/// receiving go through shared pages and futexes only: `send` sets the receiver's pending bit in
/// the page the two domains share and rings its doorbell; `wait` sleeps on this domain's doorbell
/// and collects every pending, unmasked port.
public final class EventChannels {
    public typealias Port = EvtchnPort

    enum Entry: Equatable {
        case free
        case unbound(remote: DomID)
        case interdomain(peer: DomID, remotePort: Port)
        case virq(VIRQ)
        case ipi
    }

    struct PeerPages {
        let pair: SharedMapping
        /// The peer's doorbell page (nil for the page shared with the supervisor).
        let doorbell: SharedMapping?
    }

    let domid: DomID
    let hypercalls: HypercallChannel
    let ownDoorbell: SharedMapping
    /// The eventfd that notifies the supervisor's domain-0 services (XenStore) of a send on a
    /// port bound to domain 0.
    @exclusivity(unchecked) var dom0Kick: FileDescriptor?
    private let mutex = Lock()
    @exclusivity(unchecked) private var entries = [Entry](repeating: .free, count: EventPages.maxPorts)
    @exclusivity(unchecked) private var peers: [DomID: PeerPages] = [:]
    @exclusivity(unchecked) private var masks = [UInt64](repeating: 0, count: EventPages.maxPorts / 64)
    /// Ports the runtime itself serves (the XenStore port): taken when pending, never handed to
    /// the guest's `wait`/`waitAny`, as a PV kernel's xenbus consumes its own event.
    @exclusivity(unchecked) private var runtimeOwned = [UInt64](repeating: 0, count: EventPages.maxPorts / 64)
    /// Of those, the ones whose pending bit waits for `takeUpcall` (the suspend event channel):
    /// never taken by `collect`, whatever the guest does to their mask.
    @exclusivity(unchecked) private var upcallPorts = [UInt64](repeating: 0, count: EventPages.maxPorts / 64)
    /// Ports whose remote end went away: delivered once by `poll` so waiters notice.
    @exclusivity(unchecked) private var localPending: Set<Port> = []
    /// `portUnbound` notices for ports whose bind reply this domain has not processed yet.
    @exclusivity(unchecked) private var unboundEarly: Set<Port> = []
    /// (peer, pointer to this domain's inbound bitmap in that pair page), rebuilt when peers change.
    @exclusivity(unchecked) private var scanList: [(peer: DomID, bitmap: UnsafeMutablePointer<UInt64>, summary: UnsafeMutablePointer<UInt64>)] = []
    /// Ports collected but not yet handed out by `waitAny` (capacity kept: no allocation per event).
    @exclusivity(unchecked) private var ready: [Port] = []
    @exclusivity(unchecked) private var readyHead = 0
    /// Per port, where `send` sets the bit and rings: pointers into pair and doorbell pages, which
    /// stay mapped for the domain's lifetime. Filled by the first send after a bind, cleared on
    /// every change of the port's entry, so the data path does no lookups and no reference counting.
    private let sendCache: UnsafeMutablePointer<SendTarget>

    struct SendTarget {
        var bitmapWord: UnsafeMutablePointer<UInt64>?
        var bit: UInt64 = 0
        var summary: UnsafeMutablePointer<UInt64>?
        var summaryBit: UInt64 = 0
        var doorbell: UnsafeMutablePointer<UInt32>?
        var sleeping: UnsafeMutablePointer<UInt32>?
    }

    var doorbellWord: UnsafeMutablePointer<UInt32> { (ownDoorbell.base + EventPages.doorbellOffset).assumingMemoryBound(to: UInt32.self) }
    var sleepersWord: UnsafeMutablePointer<UInt32> { (ownDoorbell.base + EventPages.sleepingOffset).assumingMemoryBound(to: UInt32.self) }

    /// This domain's doorbell (a shared futex word every send to this domain increments) and its
    /// sleeper count, for a thread that sleeps somewhere other than `wait` (an io_uring futex
    /// wait). Such a thread adds one to `sleepers` (senders then wake the word), reads `word`,
    /// checks its rings, and only then sleeps while `word` still holds what it read; it takes one
    /// away when it wakes. Its rings are the truth: it leaves the ports' pending bits alone (a
    /// `wait`/`poll` elsewhere in the domain may still collect them).
    public var doorbell: (word: UnsafeMutablePointer<UInt32>, sleepers: UnsafeMutablePointer<UInt32>) { (doorbellWord, sleepersWord) }

    init(domid: DomID, hypercalls: HypercallChannel, doorbellFD: FileDescriptor, selfPageFD: FileDescriptor) throws {
        self.domid = domid
        self.hypercalls = hypercalls
        ownDoorbell = try SharedMapping(doorbellFD, length: EventPages.pageSize)
        let selfPage = try SharedMapping(selfPageFD, length: EventPages.pageSize)
        doorbellFD.close()
        selfPageFD.close()
        sendCache = .allocate(capacity: EventPages.maxPorts)
        sendCache.initialize(repeating: SendTarget(), count: EventPages.maxPorts)
        peers[0] = PeerPages(pair: selfPage, doorbell: nil)
        rebuildScanList()
    }

    deinit { sendCache.deallocate() }

    private func lock() { mutex.lock() }

    /// Changes a port's entry (lock held) and forgets its cached send target.
    private func setEntry(_ port: Port, _ entry: Entry) {
        entries[port.index] = entry
        sendCache[port.index] = SendTarget()
    }
    private func unlock() { mutex.unlock() }

    private func rebuildScanList() {
        scanList = peers.map { peer, pages in
            (peer, (pages.pair.base + EventPages.inboundOffset(receiver: domid, peer: peer)).assumingMemoryBound(to: UInt64.self),
             (pages.pair.base + EventPages.summaryOffset(receiver: domid, peer: peer)).assumingMemoryBound(to: UInt64.self))
        }
    }

    private func op(_ name: String, _ args: [UInt64]) throws -> HypercallReply {
        let r = hypercalls.call(.eventChannelOp, args)
        if r.rc < 0 { throw HypercallError(operation: "EVTCHNOP_\(name)", errno: -r.rc) }
        return r
    }

    // MARK: binding (through the supervisor)

    /// `EVTCHNOP_alloc_unbound`: a port `remote` may bind to.
    public func allocUnbound(remote: UInt16) throws -> Port {
        let port = Port(UInt32(try op("alloc_unbound", [EvtchnOp.allocUnbound.rawValue, UInt64(DOMID_SELF.rawValue), UInt64(remote)]).rc))
        // The remote may bind (and the event thread record `portBound`) before this reply is
        // processed: never overwrite what it recorded.
        lock()
        if entries[port.index] == .free { setEntry(port, .unbound(remote: DomID(remote))) }
        unlock()
        return port
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new local port to `remote`'s unbound `remotePort`.
    public func bindInterdomain(remote: UInt16, remotePort: Port) throws -> Port {
        let (r, fds) = hypercalls.callWithFDs(.eventChannelOp, [EvtchnOp.bindInterdomain.rawValue, UInt64(remote), UInt64(remotePort.rawValue)])
        defer { fds.forEach { $0.close() } }
        if r.rc < 0 { throw HypercallError(operation: "EVTCHNOP_bind_interdomain", errno: -r.rc) }
        let port = Port(UInt32(r.rc))
        let peer = DomID(remote) == DOMID_SELF ? domid : DomID(remote)
        if fds.count == 2 { try addPeer(peer, pairFD: fds[0], doorbellFD: fds[1]) }
        lock()
        if unboundEarly.remove(port) != nil {
            // The remote end closed before this reply was processed.
            setEntry(port, .unbound(remote: peer))
            localPending.insert(port)
        } else {
            setEntry(port, .interdomain(peer: peer, remotePort: remotePort))
        }
        if peer == domid { setEntry(remotePort, .interdomain(peer: peer, remotePort: port)) }
        unlock()
        return port
    }

    /// The port the supervisor bound to domain 0 at creation (`store_evtchn`).
    func adoptDom0Port(_ port: Port, kick: FileDescriptor) {
        guard port > 0, port.index < EventPages.maxPorts else { return }
        lock()
        dom0Kick = kick
        setEntry(port, .interdomain(peer: 0, remotePort: port))
        runtimeOwned[port.bitmapWord] |= port.bitmapBit
        unlock()
    }

    /// Makes `port` the runtime's own and keeps it from every `wait`: its pending bit stays in
    /// the page until `takeUpcall` takes it (the suspend event channel, which domain 0
    /// signals together with an upcall on the event socket).
    func reserveForUpcalls(_ port: Port) {
        guard port > 0, port.index < EventPages.maxPorts else { return }
        lock()
        runtimeOwned[port.bitmapWord] |= port.bitmapBit
        upcallPorts[port.bitmapWord] |= port.bitmapBit
        unlock()
    }

    /// Whether domain 0 signalled `port` (bound to it) since the last call; clears the signal.
    func takeUpcall(_ port: Port) -> Bool {
        guard port > 0, port.index < EventPages.maxPorts else { return false }
        lock()
        defer { unlock() }
        guard case .interdomain(0, _) = entries[port.index], let page = scanList.first(where: { $0.peer == 0 }) else { return false }
        let old = SharedAtomic.fetchAnd(page.bitmap + port.bitmapWord, ~port.bitmapBit)
        return old & port.bitmapBit != 0
    }

    /// Notifies domain 0's services without a port (after taking replies off a ring).
    func kickDom0() {
        guard let k = dom0Kick else { return }
        EventFD(k).signal()
    }

    /// `EVTCHNOP_bind_virq`.
    public func bindVirq(_ virq: VIRQ, vcpu: Int = 0) throws -> Port {
        let port = Port(UInt32(try op("bind_virq", [EvtchnOp.bindVirq.rawValue, UInt64(virq.rawValue), UInt64(vcpu)]).rc))
        lock(); setEntry(port, .virq(virq)); unlock()
        return port
    }

    /// `EVTCHNOP_bind_ipi`: a port for signalling this domain's own vCPUs.
    public func bindIPI(vcpu: Int = 0) throws -> Port {
        let port = Port(UInt32(try op("bind_ipi", [EvtchnOp.bindIPI.rawValue, UInt64(vcpu)]).rc))
        lock(); setEntry(port, .ipi); unlock()
        return port
    }

    /// `EVTCHNOP_close`. The remote end of an interdomain channel becomes unbound.
    public func close(_ port: Port) throws {
        _ = try op("close", [EvtchnOp.close.rawValue, UInt64(port.rawValue)])
        lock()
        if case let .interdomain(peer, rport) = entries[port.index], peer == domid { setEntry(rport, .unbound(remote: domid)) }
        setEntry(port, .free)
        // A runtime port the guest closed: its number is an ordinary port again when reused.
        runtimeOwned[port.bitmapWord] &= ~port.bitmapBit
        upcallPorts[port.bitmapWord] &= ~port.bitmapBit
        unlock()
    }

    /// `EVTCHNOP_status`.
    public func status(_ port: Port) throws -> EvtchnStatusInfo {
        let r = try op("status", [EvtchnOp.status.rawValue, UInt64(DOMID_SELF.rawValue), UInt64(port.rawValue)])
        return try EvtchnStatusInfo.decode(r.payload)
    }

    /// Mask or unmask a port (local state, as Xen's shared-info mask bits).
    public func mask(_ port: Port) {
        lock(); masks[port.bitmapWord] |= port.bitmapBit; unlock()
    }

    /// Unmasks; a port that became pending while masked is delivered by the next `wait`.
    public func unmask(_ port: Port) {
        lock(); masks[port.bitmapWord] &= ~port.bitmapBit; unlock()
        ring(ownDoorbell)
    }

    // MARK: data path (no supervisor)

    /// `EVTCHNOP_send` through shared memory: marks the remote port pending and rings its doorbell.
    /// Throws for a port that is not bound (closed, unbound, or a virq).
    public func send(_ port: Port) throws {
        guard port > 0, port.index < EventPages.maxPorts else { throw HypercallError(operation: "EVTCHNOP_send", errno: XenErrno.EINVAL.rawValue) }
        lock()
        let cached = sendCache[port.index]
        if cached.bitmapWord != nil {
            unlock()
            deliver(cached)
            return
        }
        let entry = entries[port.index]
        if case .interdomain(0, _) = entry, let k = dom0Kick {
            unlock()
            EventFD(k).signal()
            return
        }
        let target: (page: SharedMapping, receiver: DomID, pagePeer: DomID, bit: Port, bell: SharedMapping)?
        switch entry {
        case let .interdomain(peer, rport) where peer == domid:
            target = peers[0].map { ($0.pair, domid, 0, rport, ownDoorbell) }
        case let .interdomain(peer, rport):
            target = peers[peer].flatMap { p in p.doorbell.map { (p.pair, peer, domid, rport, $0) } }
        case .ipi:
            target = peers[0].map { ($0.pair, domid, 0, port, ownDoorbell) }
        default:
            target = nil
        }
        unlock()
        guard let target else {
            let e: XenErrno = { if case .unbound = entry { return .ENOTCONN } else { return .EINVAL } }()
            throw HypercallError(operation: "EVTCHNOP_send", errno: e.rawValue)
        }
        let base = target.page.base
        let bell = target.bell.base
        let t = SendTarget(
            bitmapWord: (base + EventPages.inboundOffset(receiver: target.receiver, peer: target.pagePeer)).assumingMemoryBound(to: UInt64.self) + target.bit.bitmapWord,
            bit: target.bit.bitmapBit,
            summary: (base + EventPages.summaryOffset(receiver: target.receiver, peer: target.pagePeer)).assumingMemoryBound(to: UInt64.self),
            summaryBit: 1 << UInt64(target.bit.bitmapWord),
            doorbell: (bell + EventPages.doorbellOffset).assumingMemoryBound(to: UInt32.self),
            sleeping: (bell + EventPages.sleepingOffset).assumingMemoryBound(to: UInt32.self))
        lock()
        if entries[port.index] == entry { sendCache[port.index] = t }
        unlock()
        deliver(t)
    }

    /// Sets the pending bit and the summary bit, then rings: a futex wake only when the receiver sleeps.
    @inline(__always) private func deliver(_ t: SendTarget) {
        SharedAtomic.fetchOr(t.bitmapWord!, t.bit)
        if SharedAtomic.load(t.summary!) & t.summaryBit == 0 { SharedAtomic.fetchOr(t.summary!, t.summaryBit) }
        SharedAtomic.fetchAdd(t.doorbell!, 1)
        if SharedAtomic.load(t.sleeping!) != 0 { _ = try? Futex.wake(t.doorbell!, count: Int32.max) }
    }

    private func ring(_ bell: SharedMapping) {
        let word = (bell.base + EventPages.doorbellOffset).assumingMemoryBound(to: UInt32.self)
        SharedAtomic.fetchAdd(word, 1)
        if SharedAtomic.load((bell.base + EventPages.sleepingOffset).assumingMemoryBound(to: UInt32.self)) != 0 {
            _ = try? Futex.wake(word, count: Int32.max)
        }
    }

    /// Takes every pending, unmasked port bound to the page's peer. Bits a peer set for ports it
    /// is not bound to are cleared and ignored: a domain can signal only ports bound to it.
    public func poll() -> [Port] {
        var out: [Port] = []
        lock()
        collect { out.append($0) }
        unlock()
        return out
    }

    /// Scans the summary words, then only the bitmap words they name. Caller holds the lock.
    private func collect(_ deliver: (Port) -> Void) {
        if !localPending.isEmpty {
            var taken: [Port] = []
            for p in localPending where masks[p.bitmapWord] & p.bitmapBit == 0 { taken.append(p); deliver(p) }
            localPending.subtract(taken)
        }
        for (peer, bitmap, summaryWord) in scanList {
            if SharedAtomic.load(summaryWord) == 0 { continue }
            var summary = SharedAtomic.fetchAnd(summaryWord, 0)
            var keep: UInt64 = 0
            while summary != 0 {
                let w = summary.trailingZeroBitCount
                summary &= summary - 1
                let word = bitmap + w
                let v = SharedAtomic.load(word)
                if v == 0 { continue }
                var valid: UInt64 = 0, early: UInt64 = 0
                var bits = v
                while bits != 0 {
                    let b = bits.trailingZeroBitCount
                    bits &= bits - 1
                    let port = w * 64 + b
                    switch entries[port] {
                    case let .interdomain(p, _) where p == peer || (p == domid && peer == 0): valid |= 1 << UInt64(b)
                    case .virq, .ipi: if peer == 0 { valid |= 1 << UInt64(b) }
                    // The peer bound and sent before the supervisor's `portBound` reached us: keep it.
                    case let .unbound(remote) where remote == peer: early |= 1 << UInt64(b)
                    default: break
                    }
                }
                let take = valid & ~masks[w] & ~upcallPorts[w]
                let stray = v & ~valid & ~early
                if take | stray != 0 { SharedAtomic.fetchAnd(word, ~(take | stray)) }
                // Masked or early bits stay pending: keep the summary pointing at them.
                if v & ~(take | stray) != 0 { keep |= 1 << UInt64(w) }
                var t = take & ~runtimeOwned[w]
                while t != 0 {
                    deliver(Port(bitmapWord: w, bit: t.trailingZeroBitCount))
                    t &= t - 1
                }
            }
            if keep != 0 { SharedAtomic.fetchOr(summaryWord, keep) }
        }
    }

    /// Blocks until one bound, unmasked port is pending and returns it (nil after `timeoutNs`).
    /// Other pending ports are queued for the next call: no allocation per event.
    public func waitAny(timeoutNs: Int64 = -1, spin: Int = 0) -> Port? {
        let deadline: UInt64? = timeoutNs >= 0 ? MonotonicClock.nanoseconds() + UInt64(timeoutNs) : nil
        while true {
            let seen = SharedAtomic.load(doorbellWord)
            lock()
            if readyHead == ready.count {
                ready.removeAll(keepingCapacity: true)
                readyHead = 0
                collect { ready.append($0) }
            }
            if readyHead < ready.count {
                let p = ready[readyHead]
                readyHead += 1
                unlock()
                return p
            }
            unlock()
            if !sleep(seen: seen, deadline: deadline, spin: spin) { return nil }
        }
    }

    /// Spins, then sleeps on the doorbell until it moves from `seen`. False once the deadline passed.
    private func sleep(seen: UInt32, deadline: UInt64?, spin: Int) -> Bool {
        for _ in 0..<spin {
            if SharedAtomic.load(doorbellWord) != seen { return true }
            SharedAtomic.relax()
        }
        var remaining: Int64 = -1
        if let deadline {
            let now = MonotonicClock.nanoseconds()
            if now >= deadline { return false }
            remaining = Int64(deadline - now)
        }
        SharedAtomic.fetchAdd(sleepersWord, 1)
        if SharedAtomic.load(doorbellWord) == seen {
            _ = try? Futex.wait(doorbellWord, expected: seen, timeoutNs: remaining)
        }
        SharedAtomic.fetchAdd(sleepersWord, UInt32.max)  // -1
        return true
    }

    /// Blocks until at least one bound, unmasked port is pending (or `timeoutNs` passes: []) and
    /// returns all of them. `spin` doorbell checks happen before sleeping: sub-microsecond
    /// delivery when a core is free.
    public func wait(timeoutNs: Int64 = -1, spin: Int = 0) -> [Port] {
        guard let first = waitAny(timeoutNs: timeoutNs, spin: spin) else { return [] }
        var out = [first]
        lock()
        while readyHead < ready.count { out.append(ready[readyHead]); readyHead += 1 }
        unlock()
        return out
    }

    // MARK: supervisor messages (event thread)

    func addPeer(_ peer: DomID, pairFD: FileDescriptor, doorbellFD: FileDescriptor) throws {
        let pair = try SharedMapping(pairFD, length: EventPages.pageSize)
        let bell = try SharedMapping(doorbellFD, length: EventPages.pageSize)
        lock()
        peers[peer] = PeerPages(pair: pair, doorbell: bell)
        rebuildScanList()
        unlock()
        ring(ownDoorbell)  // anything the peer sent before we could see its page is now visible
    }

    func handle(_ event: ChannelEvent, fds: [FileDescriptor]) {
        switch event {
        case let .peerPages(peer):
            if fds.count == 2 {
                do { try addPeer(peer, pairFD: fds[0], doorbellFD: fds[1]) } catch {
                    let msg = "procvisor: cannot map the event pages shared with dom\(peer): \(error)\n"
                    FileDescriptor.standardError.writeUnchecked(msg)
                }
            } else {
                let msg = "procvisor: pages for dom\(peer) arrived with \(fds.count) descriptors\n"
                FileDescriptor.standardError.writeUnchecked(msg)
            }
        case let .portBound(port, peer, remotePort):
            guard port > 0, port.index < EventPages.maxPorts else { return }
            lock(); setEntry(port, .interdomain(peer: peer, remotePort: remotePort)); unlock()
            ring(ownDoorbell)
        case let .portUnbound(port):
            guard port > 0, port.index < EventPages.maxPorts else { return }
            lock()
            if case let .interdomain(peer, _) = entries[port.index] {
                setEntry(port, .unbound(remote: peer))
                localPending.insert(port)
            } else if entries[port.index] == .free {
                unboundEarly.insert(port)
            }
            unlock()
            ring(ownDoorbell)
        case .upcall:
            break  // DomainEvents takes these (Domain.upcall)
        }
        fds.forEach { $0.close() }
    }

    /// Whether `port` is currently connected (false once the remote end closed or died).
    public func isConnected(_ port: Port) -> Bool {
        lock(); defer { unlock() }
        guard port > 0, port.index < EventPages.maxPorts else { return false }
        if case .interdomain = entries[port.index] { return true }
        return false
    }
}

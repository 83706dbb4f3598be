import LinuxHost
import ProcvisorABI

/// A page the supervisor shares with domains (doorbell or pair page): a memfd and its mapping.
final class SharedPage {
    let fd: FileDescriptor
    let mapping: SharedMapping

    init(name: String) throws {
        fd = try MemFD.create(name: name, size: EventPages.pageSize)
        do {
            mapping = try SharedMapping(fd, length: EventPages.pageSize)
        } catch {
            fd.close()
            throw error
        }
    }

    /// A page a live update handed over, mapped again.
    init(adopting raw: Int32) throws {
        fd = FileDescriptor(rawValue: raw)
        mapping = try SharedMapping(fd, length: EventPages.pageSize)
    }

    deinit { fd.close() }

    func word32(at offset: Int) -> UnsafeMutablePointer<UInt32> {
        (mapping.base + offset).assumingMemoryBound(to: UInt32.self)
    }

    func word64(at offset: Int) -> UnsafeMutablePointer<UInt64> {
        (mapping.base + offset).assumingMemoryBound(to: UInt64.self)
    }
}

/// What a port of a domain is bound to (the supervisor's authoritative view).
enum PortBinding: Equatable {
    case unbound(remote: DomID)
    case interdomain(remote: DomID, remotePort: EvtchnPort)
    case virq(VIRQ, vcpu: UInt32)
    case ipi(vcpu: UInt32)
}

/// One domain's event-channel state.
final class DomainEventChannels {
    var ports: [EvtchnPort: PortBinding] = [:]
    let doorbell: SharedPage
    /// Peers whose pair page and doorbell this domain has been given.
    var peersGiven: Set<DomID> = []
    /// VIRQ and IPI bindings name a vCPU below this.
    let maxVCPUs: Int

    init(domid: DomID, maxVCPUs: Int) throws {
        doorbell = try SharedPage(name: "pv-doorbell-\(domid)")
        self.maxVCPUs = maxVCPUs
    }

    init(doorbell: SharedPage, maxVCPUs: Int) {
        self.doorbell = doorbell
        self.maxVCPUs = maxVCPUs
    }

    /// The lowest free port (port 0 is never valid, as in Xen).
    func allocatePort() -> EvtchnPort? {
        for p in 1..<UInt32(EventPages.maxPorts) where ports[EvtchnPort(p)] == nil { return EvtchnPort(p) }
        return nil
    }

    func port(forVirq v: VIRQ) -> EvtchnPort? {
        ports.first { if case .virq(v, _) = $0.value { return true } else { return false } }?.key
    }
}

/// Event channels of every domain (Xen's `event_channel.c`): each domain's ports and what they
/// are bound to, its doorbell, and the pair pages two domains signal each other through. It
/// owns that state and nothing else: whether a domain is alive and how a message reaches its
/// process are asked of the supervisor through the closures below, so the service runs, and is
/// tested, without any domain process.
final class EventChannelService {
    fileprivate(set) var channels: [DomID: DomainEventChannels] = [:]
    /// Pages two domains share for event channels, keyed by `pairKey(lo, hi)`.
    fileprivate var pairPages: [UInt32: SharedPage] = [:]

    /// Whether a domain has a process that can take events.
    var isLive: (DomID) -> Bool = { _ in false }
    /// Sends a channel message, with descriptors, to a domain's process.
    var notify: (DomID, ChannelEvent, [FileDescriptor]) -> Void = { _, _, _ in }
    /// A domain sent on a port bound to domain 0 (its XenStore ring): domain 0 services it.
    var kickDom0: (DomID) -> Void = { _ in }

    static func pairKey(_ a: DomID, _ b: DomID) -> UInt32 { UInt32(min(a, b).rawValue) << 16 | UInt32(max(a, b).rawValue) }

    /// A new domain's channels: no port bound yet, a doorbell of its own.
    func open(_ domid: DomID, maxVCPUs: Int) throws {
        channels[domid] = try DomainEventChannels(domid: domid, maxVCPUs: maxVCPUs)
    }

    /// The pair page of two domains (a loopback channel uses the domain's page with domain 0).
    func pairPage(_ a: DomID, _ b: DomID) throws -> SharedPage {
        let (x, y) = a == b ? (0, a) : (a, b)
        let key = Self.pairKey(x, y)
        if let p = pairPages[key] { return p }
        let page = try SharedPage(name: "pv-pair-\(min(x, y))-\(max(x, y))")
        pairPages[key] = page
        return page
    }

    /// What a booting domain maps to take events: its doorbell and its page with domain 0.
    func bootDescriptors(_ domid: DomID) -> [FileDescriptor]? {
        guard let ev = channels[domid], let selfPage = try? pairPage(0, domid) else { return nil }
        return [ev.doorbell.fd, selfPage.fd]
    }

    /// Binds a new port of `domid` to domain 0 (the XenStore ring's `store_evtchn`).
    func bindToDom0(_ domid: DomID) -> EvtchnPort? {
        guard let ev = channels[domid], let port = ev.allocatePort() else { return nil }
        ev.ports[port] = .interdomain(remote: 0, remotePort: port)
        return port
    }

    /// Domain 0 binds `port`, which `domid` allocated unbound for it (libxl's suspend event
    /// channel): the domain is told, as for any binding. A port bound to domain 0 this way
    /// before is accepted again; anything else (a closed port, one meant for another domain or
    /// already bound elsewhere, the XenStore port) is refused with the reason.
    func bindDom0(_ domid: DomID, port: EvtchnPort, storePort: EvtchnPort?) -> String? {
        guard let ev = channels[domid] else { return "the domain has no event channels" }
        guard port != storePort else { return "it is the XenStore port" }
        switch ev.ports[port] {
        case .unbound(remote: 0)?:
            ev.ports[port] = .interdomain(remote: 0, remotePort: port)
            notify(domid, .portBound(port: port, peer: 0, remotePort: port), [])
            return nil
        case .interdomain(remote: 0, remotePort: port)?:
            return nil
        case nil:
            return "port \(port) is not allocated"
        case let .unbound(remote)?:
            return "port \(port) is unbound for dom\(remote), not for domain 0"
        case let .interdomain(remote, rport)?:
            return "port \(port) is bound to dom\(remote) port \(rport)"
        case .virq?, .ipi?:
            return "port \(port) is bound to a VIRQ or an IPI"
        }
    }

    /// Marks `port` of `domid` pending in the page it shares with `peer` and rings its doorbell.
    func raise(_ domid: DomID, port: EvtchnPort, peer: DomID) {
        guard let ev = channels[domid], let page = try? pairPage(domid, peer) else { return }
        let pagePeer: DomID = peer == domid ? 0 : peer
        let word = page.word64(at: EventPages.inboundOffset(receiver: domid, peer: pagePeer) + port.bitmapWord * 8)
        SharedAtomic.fetchOr(word, port.bitmapBit)
        SharedAtomic.fetchOr(page.word64(at: EventPages.summaryOffset(receiver: domid, peer: pagePeer)), 1 << UInt64(port.bitmapWord))
        let bell = ev.doorbell.word32(at: EventPages.doorbellOffset)
        SharedAtomic.fetchAdd(bell, 1)
        if SharedAtomic.load(ev.doorbell.word32(at: EventPages.sleepingOffset)) != 0 { _ = try? Futex.wake(bell, count: Int32.max) }
    }

    /// Takes back a signal `raise` gave `port` of `domid` from domain 0: true when it was still
    /// pending (the domain had not taken it).
    func withdraw(_ domid: DomID, port: EvtchnPort) -> Bool {
        guard let page = try? pairPage(domid, 0) else { return false }
        let word = page.word64(at: EventPages.inboundOffset(receiver: domid, peer: 0) + port.bitmapWord * 8)
        return SharedAtomic.fetchAnd(word, ~port.bitmapBit) & port.bitmapBit != 0
    }

    /// Raises the port `domid` bound to `virq`, if it bound one.
    func raiseVirq(_ domid: DomID, _ virq: VIRQ) {
        guard let port = channels[domid]?.port(forVirq: virq) else { return }
        raise(domid, port: port, peer: 0)
    }

    /// Gives `domid` the pages it needs to signal `peer` (once per peer).
    private func givePeerPages(_ domid: DomID, peer: DomID) throws -> [FileDescriptor]? {
        guard let ev = channels[domid], let pev = channels[peer], peer != domid, !ev.peersGiven.contains(peer) else { return nil }
        let page = try pairPage(domid, peer)
        ev.peersGiven.insert(peer)
        return [page.fd, pev.doorbell.fd]
    }

    /// `__HYPERVISOR_event_channel_op` made by `domid`.
    func op(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        guard let ev = channels[domid] else { return .error(.ENOSYS) }
        func err(_ e: XenErrno) -> HypercallOutcome { .error(e) }
        func ok(_ rc: Int64, _ payload: [UInt8] = []) -> HypercallOutcome { .ok(rc, payload) }
        func selfDomid(_ v: UInt64) -> Bool { v == UInt64(DOMID_SELF.rawValue) || v == UInt64(domid.rawValue) }
        func portArg(_ v: UInt64) -> EvtchnPort? { v > 0 && v < UInt64(EventPages.maxPorts) ? EvtchnPort(UInt32(v)) : nil }

        switch EvtchnOp(rawValue: r.args[0]) {
        case .allocUnbound:
            guard selfDomid(r.args[1]) else { return err(.EPERM) }
            guard r.args[2] <= UInt64(UInt16.max) else { return err(.EINVAL) }
            let remote = r.args[2] == UInt64(DOMID_SELF.rawValue) ? domid : DomID(UInt16(r.args[2]))
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .unbound(remote: remote)
            return ok(Int64(port.rawValue))

        case .bindInterdomain:
            guard r.args[1] <= UInt64(UInt16.max) else { return err(.EINVAL) }
            let remoteId = r.args[1] == UInt64(DOMID_SELF.rawValue) ? domid : DomID(UInt16(r.args[1]))
            guard isLive(remoteId), let rev = channels[remoteId] else { return err(.ESRCH) }
            guard let rport = portArg(r.args[2]), rev.ports[rport] == .unbound(remote: domid) else { return err(.EINVAL) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            if remoteId == domid && rport == port { return err(.EINVAL) }
            ev.ports[port] = .interdomain(remote: remoteId, remotePort: rport)
            rev.ports[rport] = .interdomain(remote: domid, remotePort: port)
            var fds: [FileDescriptor] = []
            do {
                if let given = try givePeerPages(domid, peer: remoteId) { fds = given }
                if let theirs = try givePeerPages(remoteId, peer: domid) { notify(remoteId, .peerPages(peer: domid), theirs) }
            } catch {
                ev.ports[port] = nil
                rev.ports[rport] = .unbound(remote: domid)
                return err(.ENOMEM)
            }
            if remoteId != domid { notify(remoteId, .portBound(port: rport, peer: domid, remotePort: port), []) }
            // The reply payload names the peer whose pages come with it (if any).
            var w = WireWriter()
            w.u32(fds.isEmpty ? 0 : 1)
            w.u32(UInt32(remoteId.rawValue))
            return .ok(Int64(port.rawValue), w.bytes, fds: fds)

        case .bindVirq:
            guard r.args[1] <= UInt64(UInt32.max), let virq = VIRQ(rawValue: UInt32(r.args[1])) else { return err(.EINVAL) }
            guard r.args[2] < UInt64(ev.maxVCPUs) else { return err(.ENOENT) }
            if ev.port(forVirq: virq) != nil { return err(.EEXIST) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .virq(virq, vcpu: UInt32(r.args[2]))
            return ok(Int64(port.rawValue))

        case .bindIPI:
            guard r.args[1] < UInt64(ev.maxVCPUs) else { return err(.ENOENT) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .ipi(vcpu: UInt32(r.args[1]))
            return ok(Int64(port.rawValue))

        case .close:
            guard let port = portArg(r.args[1]), let binding = ev.ports[port] else { return err(.EINVAL) }
            ev.ports[port] = nil
            if case let .interdomain(remoteId, rport) = binding, remoteId != domid {
                unbindRemoteEnd(of: domid, remoteId, rport)
            } else if case let .interdomain(remoteId, rport) = binding, remoteId == domid {
                ev.ports[rport] = .unbound(remote: domid)
            }
            return ok(0)

        case .send:
            guard let port = portArg(r.args[1]), let binding = ev.ports[port] else { return err(.EINVAL) }
            switch binding {
            case .interdomain(0, _):
                kickDom0(domid)
            case let .interdomain(remoteId, rport):
                guard isLive(remoteId) else { return err(.ESRCH) }
                raise(remoteId, port: rport, peer: domid)
            case .ipi:
                raise(domid, port: port, peer: 0)
            case .unbound:
                return err(.ENOTCONN)
            case .virq:
                return err(.EINVAL)
            }
            return ok(0)

        case .status:
            guard selfDomid(r.args[1]) else { return err(.EPERM) }
            guard let port = portArg(r.args[2]) else { return err(.EINVAL) }
            let info: EvtchnStatusInfo
            switch ev.ports[port] {
            case nil: info = EvtchnStatusInfo(status: .closed)
            case let .unbound(remote)?: info = EvtchnStatusInfo(status: .unbound, remoteDomid: remote)
            case let .interdomain(remote, rport)?: info = EvtchnStatusInfo(status: .interdomain, remoteDomid: remote, remotePort: rport)
            case let .virq(v, vcpu)?: info = EvtchnStatusInfo(status: .virq, virq: v.rawValue, vcpu: vcpu)
            case let .ipi(vcpu)?: info = EvtchnStatusInfo(status: .ipi, vcpu: vcpu)
            }
            return ok(Int64(info.status.rawValue), info.encode())

        case .unmask:
            // Masks live in the domain's own memory; the supervisor only checks the port exists.
            guard let port = portArg(r.args[1]), ev.ports[port] != nil else { return err(.EINVAL) }
            return ok(0)

        case nil:
            return err(.ENOSYS)
        }
    }

    /// The far end `rport` of `remoteId` lost its peer `domid`: unbound again, told, and raised
    /// (a guest blocked on it wakes and sees the change).
    private func unbindRemoteEnd(of domid: DomID, _ remoteId: DomID, _ rport: EvtchnPort) {
        guard let rev = channels[remoteId] else { return }
        rev.ports[rport] = .unbound(remote: domid)
        notify(remoteId, .portUnbound(port: rport), [])
        raise(remoteId, port: rport, peer: domid)
    }

    /// A domain is gone: its channels' remote ends become unbound, its pages are dropped, and
    /// every other live domain gets VIRQ_DOM_EXC.
    func close(_ domid: DomID) {
        guard let ev = channels[domid] else { return }
        for (_, binding) in ev.ports {
            if case let .interdomain(remoteId, rport) = binding, remoteId != domid { unbindRemoteEnd(of: domid, remoteId, rport) }
        }
        ev.ports.removeAll()
        pairPages = pairPages.filter { key, _ in key >> 16 != UInt32(domid.rawValue) && key & 0xffff != UInt32(domid.rawValue) }
        channels[domid] = nil
        for (other, oev) in channels {
            oev.peersGiven.remove(domid)
            if isLive(other) { raiseVirq(other, .domExc) }
        }
    }
}

extension EventChannelService {
    /// What a live update hands over; the descriptors it names go into `keep`.
    func image(keep: inout [FileDescriptor]) -> EventChannelImage {
        let chans = channels.sorted { $0.key < $1.key }.map { domid, ev -> DomainChannelsImage in
            keep.append(ev.doorbell.fd)
            let ports = ev.ports.sorted { $0.key < $1.key }.map { port, b -> PortImage in
                switch b {
                case let .unbound(remote): return PortImage(port: port.rawValue, kind: .unbound, remote: remote.rawValue)
                case let .interdomain(remote, rport):
                    return PortImage(port: port.rawValue, kind: .interdomain, remote: remote.rawValue, remotePort: rport.rawValue)
                case let .virq(v, vcpu): return PortImage(port: port.rawValue, kind: .virq, virq: v.rawValue, vcpu: vcpu)
                case let .ipi(vcpu): return PortImage(port: port.rawValue, kind: .ipi, vcpu: vcpu)
                }
            }
            return DomainChannelsImage(domid: domid.rawValue, ports: ports, doorbellFD: ev.doorbell.fd.rawValue,
                                       peersGiven: ev.peersGiven.map(\.rawValue).sorted(), maxVCPUs: ev.maxVCPUs)
        }
        keep += pairPages.values.map(\.fd)
        return EventChannelImage(channels: chans, pairPages: pairPages.mapValues { $0.fd.rawValue })
    }

    /// Takes over what `image` describes (the service is new and empty).
    func adopt(_ i: EventChannelImage) throws {
        for c in i.channels {
            let ev = DomainEventChannels(doorbell: try SharedPage(adopting: c.doorbellFD), maxVCPUs: c.maxVCPUs)
            for p in c.ports {
                guard p.port > 0, p.port < UInt32(EventPages.maxPorts) else {
                    throw LiveUpdateError.badState("event channels: dom\(c.domid) port \(p.port) is out of range")
                }
                let binding: PortBinding
                switch p.kind {
                case .unbound: binding = .unbound(remote: DomID(p.remote))
                case .interdomain: binding = .interdomain(remote: DomID(p.remote), remotePort: EvtchnPort(p.remotePort))
                case .virq:
                    guard let v = VIRQ(rawValue: p.virq) else { throw LiveUpdateError.badState("event channels: dom\(c.domid) VIRQ \(p.virq)") }
                    binding = .virq(v, vcpu: p.vcpu)
                case .ipi: binding = .ipi(vcpu: p.vcpu)
                }
                ev.ports[EvtchnPort(p.port)] = binding
            }
            ev.peersGiven = Set(c.peersGiven.map { DomID($0) })
            channels[DomID(c.domid)] = ev
        }
        for (key, fd) in i.pairPages { pairPages[key] = try SharedPage(adopting: fd) }
    }
}

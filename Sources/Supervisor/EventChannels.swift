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
    case unbound(remote: UInt16)
    case interdomain(remote: UInt16, remotePort: EvtchnPort)
    case virq(VIRQ, vcpu: UInt32)
    case ipi(vcpu: UInt32)
}

/// One domain's event-channel state.
final class DomainEventChannels {
    var ports: [EvtchnPort: PortBinding] = [:]
    let doorbell: SharedPage
    /// Peers whose pair page and doorbell this domain has been given.
    var peersGiven: Set<UInt16> = []

    init(domid: UInt16) throws {
        doorbell = try SharedPage(name: "pv-doorbell-\(domid)")
    }

    /// The lowest free port (port 0 is never valid, as in Xen).
    func allocatePort() -> EvtchnPort? {
        for p in 1..<EvtchnPort(EventPages.maxPorts) where ports[p] == nil { return p }
        return nil
    }

    func port(forVirq v: VIRQ) -> EvtchnPort? {
        ports.first { if case .virq(v, _) = $0.value { return true } else { return false } }?.key
    }
}

extension Supervisor {
    static func pairKey(_ a: UInt16, _ b: UInt16) -> UInt32 { UInt32(min(a, b)) << 16 | UInt32(max(a, b)) }

    /// The pair page of two domains (a loopback channel uses the domain's page with domain 0).
    func pairPage(_ a: UInt16, _ b: UInt16) throws -> SharedPage {
        let (x, y) = a == b ? (0, a) : (a, b)
        let key = Self.pairKey(x, y)
        if let p = pairPages[key] { return p }
        let page = try SharedPage(name: "pv-pair-\(min(x, y))-\(max(x, y))")
        pairPages[key] = page
        return page
    }

    /// Marks `port` of `dom` pending in the page it shares with `peer` and rings its doorbell.
    func raise(_ dom: DomainRecord, port: EvtchnPort, peer: UInt16) {
        guard let page = try? pairPage(dom.domid, peer), let ev = dom.evtchn else { return }
        let pagePeer: UInt16 = peer == dom.domid ? 0 : peer
        let word = page.word64(at: EventPages.inboundOffset(receiver: dom.domid, peer: pagePeer) + Int(port / 64) * 8)
        SharedAtomic.fetchOr(word, 1 << UInt64(port % 64))
        SharedAtomic.fetchOr(page.word64(at: EventPages.summaryOffset(receiver: dom.domid, peer: pagePeer)), 1 << UInt64(port / 64))
        let bell = ev.doorbell.word32(at: EventPages.doorbellOffset)
        SharedAtomic.fetchAdd(bell, 1)
        if SharedAtomic.load(ev.doorbell.word32(at: EventPages.sleepingOffset)) != 0 { _ = try? Futex.wake(bell, count: Int32.max) }
    }

    func raiseVirq(_ dom: DomainRecord, _ virq: VIRQ) {
        guard let port = dom.evtchn?.port(forVirq: virq) else { return }
        raise(dom, port: port, peer: 0)
    }

    /// Sends a channel message (with descriptors) on the domain's event socket.
    func pushChannelEvent(_ dom: DomainRecord, _ event: ChannelEvent, fds: [FileDescriptor] = []) {
        guard dom.hasProcess, !dom.released else { return }
        do {
            try UnixSocket.send(dom.eventFD, event.encode(), fds: fds, nonBlocking: true)
        } catch let e as SystemError where e.errno == .wouldBlock {
            crash(dom, "event socket overflow: the domain is not reading its events")
        } catch {}
    }

    /// Gives `dom` the pages it needs to signal `peer` (once per peer).
    func givePeerPages(_ dom: DomainRecord, peer: DomainRecord) throws -> [FileDescriptor]? {
        guard let ev = dom.evtchn, let pev = peer.evtchn, peer.domid != dom.domid, !ev.peersGiven.contains(peer.domid) else { return nil }
        ev.peersGiven.insert(peer.domid)
        return [try pairPage(dom.domid, peer.domid).fd, pev.doorbell.fd]
    }

    /// `__HYPERVISOR_event_channel_op`.
    func eventChannelOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let ev = dom.evtchn else { return .error(.ENOSYS) }
        func err(_ e: XenErrno) -> HypercallOutcome { .error(e) }
        func ok(_ rc: Int64, _ payload: [UInt8] = []) -> HypercallOutcome { .ok(rc, payload) }
        func selfDomid(_ v: UInt64) -> Bool { v == UInt64(DOMID_SELF) || v == UInt64(dom.domid) }
        func portArg(_ v: UInt64) -> EvtchnPort? { v > 0 && v < UInt64(EventPages.maxPorts) ? EvtchnPort(v) : nil }

        switch EvtchnOp(rawValue: r.args[0]) {
        case .allocUnbound:
            guard selfDomid(r.args[1]) else { return err(.EPERM) }
            guard r.args[2] <= UInt64(UInt16.max) else { return err(.EINVAL) }
            let remote = r.args[2] == UInt64(DOMID_SELF) ? dom.domid : UInt16(r.args[2])
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .unbound(remote: remote)
            return ok(Int64(port))

        case .bindInterdomain:
            guard r.args[1] <= UInt64(UInt16.max) else { return err(.EINVAL) }
            let remoteId = r.args[1] == UInt64(DOMID_SELF) ? dom.domid : UInt16(r.args[1])
            guard let remote = domains[remoteId], remote.hasProcess, let rev = remote.evtchn else { return err(.ESRCH) }
            guard let rport = portArg(r.args[2]), rev.ports[rport] == .unbound(remote: dom.domid) else { return err(.EINVAL) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            if remoteId == dom.domid && rport == port { return err(.EINVAL) }
            ev.ports[port] = .interdomain(remote: remoteId, remotePort: rport)
            rev.ports[rport] = .interdomain(remote: dom.domid, remotePort: port)
            var fds: [FileDescriptor] = []
            do {
                if let given = try givePeerPages(dom, peer: remote) { fds = given }
                if let theirs = try givePeerPages(remote, peer: dom) { pushChannelEvent(remote, .peerPages(peer: dom.domid), fds: theirs) }
            } catch {
                ev.ports[port] = nil
                rev.ports[rport] = .unbound(remote: dom.domid)
                return err(.ENOMEM)
            }
            if remoteId != dom.domid { pushChannelEvent(remote, .portBound(port: rport, peer: dom.domid, remotePort: port)) }
            // The reply payload names the peer whose pages come with it (if any).
            var w = WireWriter()
            w.u32(fds.isEmpty ? 0 : 1)
            w.u32(UInt32(remoteId))
            return .ok(Int64(port), w.bytes, fds: fds)

        case .bindVirq:
            guard r.args[1] <= UInt64(UInt32.max), let virq = VIRQ(rawValue: UInt32(r.args[1])) else { return err(.EINVAL) }
            guard r.args[2] < UInt64(dom.config.maxvcpus) else { return err(.ENOENT) }
            if ev.port(forVirq: virq) != nil { return err(.EEXIST) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .virq(virq, vcpu: UInt32(r.args[2]))
            return ok(Int64(port))

        case .bindIPI:
            guard r.args[1] < UInt64(dom.config.maxvcpus) else { return err(.ENOENT) }
            guard let port = ev.allocatePort() else { return err(.ENOSPC) }
            ev.ports[port] = .ipi(vcpu: UInt32(r.args[1]))
            return ok(Int64(port))

        case .close:
            guard let port = portArg(r.args[1]), let binding = ev.ports[port] else { return err(.EINVAL) }
            ev.ports[port] = nil
            if case let .interdomain(remoteId, rport) = binding, remoteId != dom.domid, let remote = domains[remoteId] {
                remote.evtchn?.ports[rport] = .unbound(remote: dom.domid)
                pushChannelEvent(remote, .portUnbound(port: rport))
                raise(remote, port: rport, peer: dom.domid)
            } else if case let .interdomain(remoteId, rport) = binding, remoteId == dom.domid {
                ev.ports[rport] = .unbound(remote: dom.domid)
            }
            return ok(0)

        case .send:
            guard let port = portArg(r.args[1]), let binding = ev.ports[port] else { return err(.EINVAL) }
            switch binding {
            case .interdomain(0, _):
                kickDom0Services(dom)
            case let .interdomain(remoteId, rport):
                guard let remote = domains[remoteId], remote.hasProcess else { return err(.ESRCH) }
                raise(remote, port: rport, peer: dom.domid)
            case .ipi:
                raise(dom, port: port, peer: 0)
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

    /// A domain is gone: its channels' remote ends become unbound; its pages are dropped.
    func closeEventChannels(_ dom: DomainRecord) {
        guard let ev = dom.evtchn else { return }
        for (_, binding) in ev.ports {
            if case let .interdomain(remoteId, rport) = binding, remoteId != dom.domid, let remote = domains[remoteId], remote !== dom {
                remote.evtchn?.ports[rport] = .unbound(remote: dom.domid)
                pushChannelEvent(remote, .portUnbound(port: rport))
                raise(remote, port: rport, peer: dom.domid)
            }
        }
        ev.ports.removeAll()
        pairPages = pairPages.filter { key, _ in key >> 16 != UInt32(dom.domid) && key & 0xffff != UInt32(dom.domid) }
        for other in domains.values where other !== dom { other.evtchn?.peersGiven.remove(dom.domid) }
        dom.evtchn = nil
        for other in domains.values where other !== dom && other.hasProcess { raiseVirq(other, .domExc) }
    }
}

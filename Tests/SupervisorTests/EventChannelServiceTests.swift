import LinuxHost
import ProcvisorABI
import Testing
@testable import Supervisor

/// The event-channel service on its own: domains' ports, doorbells and pair pages as the
/// supervisor holds them (real memfd pages, no domain process), every event_channel_op checked
/// against Xen's rules, and what each peer is told.
@Suite struct EventChannelServiceTests {
    /// A service with dom1 and dom2 open and alive; what it tells the domains is recorded.
    final class Fixture {
        let service = EventChannelService()
        var live: Set<DomID> = [1, 2]
        var told: [(DomID, ChannelEvent, Int)] = []
        var dom0Kicks: [DomID] = []

        init(maxVCPUs: Int = 2) throws {
            try service.open(1, maxVCPUs: maxVCPUs)
            try service.open(2, maxVCPUs: maxVCPUs)
            service.isLive = { [unowned self] in live.contains($0) }
            service.notify = { [unowned self] domid, event, fds in told.append((domid, event, fds.count)) }
            service.kickDom0 = { [unowned self] in dom0Kicks.append($0) }
        }

        func op(_ domid: DomID, _ op: EvtchnOp, _ args: UInt64...) -> (rc: Int64, payload: [UInt8], fds: Int) {
            let r = HypercallRequest(op: HypercallOp.eventChannelOp.rawValue, seq: 1, args: [op.rawValue] + args)
            guard case let .reply(rc, payload, fds, _) = service.op(domid, r) else {
                Issue.record("event_channel_op \(op) did not reply")
                return (Int64.min, [], 0)
            }
            return (rc, payload, fds.count)
        }

        /// dom1 offers a port to dom2, dom2 binds it: (dom1's port, dom2's port).
        func connect() -> (EvtchnPort, EvtchnPort) {
            let offered = op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc
            let bound = op(2, .bindInterdomain, 1, UInt64(offered)).rc
            #expect(offered > 0 && bound > 0)
            return (EvtchnPort(UInt32(offered)), EvtchnPort(UInt32(bound)))
        }

        func status(_ domid: DomID, _ port: EvtchnPort) -> EvtchnStatusInfo? {
            try? EvtchnStatusInfo.decode(op(domid, .status, UInt64(DOMID_SELF.rawValue), UInt64(port.rawValue)).payload)
        }

        /// Whether `port` of `domid` is marked pending in its page with `peer`, and its doorbell count.
        func pending(_ domid: DomID, _ port: EvtchnPort, from peer: DomID) throws -> (Bool, UInt32) {
            let page = try service.pairPage(domid, peer)
            let pagePeer: DomID = peer == domid ? 0 : peer
            let word = page.word64(at: EventPages.inboundOffset(receiver: domid, peer: pagePeer) + port.bitmapWord * 8).pointee
            let bell = service.channels[domid]!.doorbell.word32(at: EventPages.doorbellOffset).pointee
            return (word & port.bitmapBit != 0, bell)
        }
    }

    @Test func bindingInterdomainConnectsBothEndsAndHandsPagesOnce() throws {
        let f = try Fixture()
        let offered = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2)
        #expect(offered.rc == 1)
        #expect(f.status(1, 1)?.status == .unbound)
        let bound = f.op(2, .bindInterdomain, 1, 1)
        #expect(bound.rc == 1)
        // The binder gets its pair page and dom1's doorbell; dom1 is sent its own pair and the news.
        #expect(bound.fds == 2)
        #expect(f.told.count == 2)
        #expect(f.told[0].0 == 1 && f.told[0].1 == .peerPages(peer: 2) && f.told[0].2 == 2)
        #expect(f.told[1].0 == 1 && f.told[1].1 == .portBound(port: 1, peer: 2, remotePort: 1))
        let s1 = try #require(f.status(1, 1)), s2 = try #require(f.status(2, 1))
        #expect(s1.status == .interdomain && s1.remoteDomid == 2 && s1.remotePort == 1)
        #expect(s2.status == .interdomain && s2.remoteDomid == 1 && s2.remotePort == 1)
        // A second channel between the same pair hands no pages again.
        let second = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc
        #expect(f.op(2, .bindInterdomain, 1, UInt64(second)).fds == 0)
    }

    @Test func bindingRefusesWhatXenRefuses() throws {
        let f = try Fixture()
        // A port not offered to the binder, a port offered to someone else, a dead or unknown domain.
        #expect(f.op(2, .bindInterdomain, 1, 5).rc == -XenErrno.EINVAL.rawValue)
        let toThree = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 3).rc
        #expect(f.op(2, .bindInterdomain, 1, UInt64(toThree)).rc == -XenErrno.EINVAL.rawValue)
        let offered = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc
        f.live.remove(1)
        #expect(f.op(2, .bindInterdomain, 1, UInt64(offered)).rc == -XenErrno.ESRCH.rawValue)
        #expect(f.op(2, .bindInterdomain, 9, 1).rc == -XenErrno.ESRCH.rawValue)
        #expect(f.op(2, .bindInterdomain, 0x1_0000, 1).rc == -XenErrno.EINVAL.rawValue)
        // Ports are only offered by a domain for itself.
        #expect(f.op(2, .allocUnbound, 1, 2).rc == -XenErrno.EPERM.rawValue)
        #expect(f.op(2, .status, 1, 1).rc == -XenErrno.EPERM.rawValue)
        #expect(f.told.isEmpty)
    }

    @Test func sendRaisesTheRemotePortAndRingsItsDoorbell() throws {
        let f = try Fixture()
        let (p1, p2) = f.connect()
        #expect(try f.pending(1, p1, from: 2) == (false, 0))
        #expect(f.op(2, .send, UInt64(p2.rawValue)).rc == 0)
        #expect(try f.pending(1, p1, from: 2) == (true, 1))
        // Sending on a port that is not bound, or bound to a VIRQ, is refused.
        let lone = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc
        #expect(f.op(1, .send, UInt64(lone)).rc == -XenErrno.ENOTCONN.rawValue)
        let virq = f.op(1, .bindVirq, UInt64(VIRQ.timer.rawValue), 0).rc
        #expect(f.op(1, .send, UInt64(virq)).rc == -XenErrno.EINVAL.rawValue)
        #expect(f.op(1, .send, 0).rc == -XenErrno.EINVAL.rawValue)
        #expect(f.op(1, .send, UInt64(EventPages.maxPorts)).rc == -XenErrno.EINVAL.rawValue)
        // A dead peer: ESRCH, nothing raised.
        f.live.remove(1)
        #expect(f.op(2, .send, UInt64(p2.rawValue)).rc == -XenErrno.ESRCH.rawValue)
    }

    @Test func aPortBoundToDomainZeroKicksItsServices() throws {
        let f = try Fixture()
        let store = try #require(f.service.bindToDom0(2))
        #expect(f.op(2, .send, UInt64(store.rawValue)).rc == 0)
        #expect(f.dom0Kicks == [2])
    }

    @Test func closingOneEndUnbindsTheOtherAndWakesIt() throws {
        let f = try Fixture()
        let (p1, p2) = f.connect()
        f.told.removeAll()
        #expect(f.op(2, .close, UInt64(p2.rawValue)).rc == 0)
        #expect(f.status(2, p2)?.status == .closed)
        let s1 = try #require(f.status(1, p1))
        #expect(s1.status == .unbound && s1.remoteDomid == 2)
        #expect(f.told.count == 1 && f.told[0].0 == 1 && f.told[0].1 == .portUnbound(port: p1))
        #expect(try f.pending(1, p1, from: 2).0)
        // dom1's port can be bound again by dom2.
        #expect(f.op(2, .bindInterdomain, 1, UInt64(p1.rawValue)).rc > 0)
        #expect(f.op(2, .close, UInt64(p2.rawValue)).rc == 0)
        #expect(f.op(2, .close, 4000).rc == -XenErrno.EINVAL.rawValue)
    }

    @Test func aLoopbackChannelClosesToUnbound() throws {
        let f = try Fixture()
        let offered = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), UInt64(DOMID_SELF.rawValue)).rc
        let bound = f.op(1, .bindInterdomain, UInt64(DOMID_SELF.rawValue), UInt64(offered)).rc
        #expect(bound > 0 && bound != offered)
        #expect(f.op(1, .send, UInt64(bound)).rc == 0)
        #expect(try f.pending(1, EvtchnPort(UInt32(offered)), from: 1).0)
        #expect(f.op(1, .close, UInt64(bound)).rc == 0)
        #expect(f.status(1, EvtchnPort(UInt32(offered)))?.status == .unbound)
        #expect(f.told.isEmpty)
    }

    @Test func virqAndIPIBindingsFollowXensRules() throws {
        let f = try Fixture(maxVCPUs: 2)
        let timer = f.op(1, .bindVirq, UInt64(VIRQ.timer.rawValue), 1).rc
        #expect(timer > 0)
        #expect(f.op(1, .bindVirq, UInt64(VIRQ.timer.rawValue), 0).rc == -XenErrno.EEXIST.rawValue)
        #expect(f.op(1, .bindVirq, UInt64(VIRQ.console.rawValue), 2).rc == -XenErrno.ENOENT.rawValue)
        #expect(f.op(1, .bindVirq, 0xFFFF_FFFF_FF, 0).rc == -XenErrno.EINVAL.rawValue)
        let s = try #require(f.status(1, EvtchnPort(UInt32(timer))))
        #expect(s.status == .virq && s.virq == VIRQ.timer.rawValue && s.vcpu == 1)
        f.service.raiseVirq(1, .timer)
        #expect(try f.pending(1, EvtchnPort(UInt32(timer)), from: 0).0)
        #expect(f.op(1, .bindIPI, 2).rc == -XenErrno.ENOENT.rawValue)
        let ipi = f.op(1, .bindIPI, 1).rc
        #expect(f.op(1, .send, UInt64(ipi)).rc == 0)
        #expect(try f.pending(1, EvtchnPort(UInt32(ipi)), from: 0).0)
    }

    @Test func portsRunOutWithENOSPC() throws {
        let f = try Fixture()
        for _ in 1..<EventPages.maxPorts { #expect(f.op(1, .bindIPI, 0).rc > 0) }
        #expect(f.op(1, .bindIPI, 0).rc == -XenErrno.ENOSPC.rawValue)
        #expect(f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc == -XenErrno.ENOSPC.rawValue)
        #expect(f.op(1, .close, 7).rc == 0)
        #expect(f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc == 7)
    }

    @Test func aDomainThatGoesUnbindsItsPeersAndTellsTheOthers() throws {
        let f = try Fixture()
        try f.service.open(3, maxVCPUs: 1)
        f.live.insert(3)
        let exc3 = EvtchnPort(UInt32(f.op(3, .bindVirq, UInt64(VIRQ.domExc.rawValue), 0).rc))
        let (p1, _) = f.connect()
        f.told.removeAll()
        f.live.remove(2)
        f.service.close(2)
        #expect(f.service.channels[2] == nil)
        #expect(f.op(2, .allocUnbound, UInt64(DOMID_SELF.rawValue), 1).rc == -XenErrno.ENOSYS.rawValue)
        let s1 = try #require(f.status(1, p1))
        #expect(s1.status == .unbound && s1.remoteDomid == 2)
        #expect(f.told.count == 1 && f.told[0].1 == .portUnbound(port: p1))
        #expect(try f.pending(3, exc3, from: 0).0)
        // Pages with the dead domain are made fresh if its domid comes back.
        try f.service.open(2, maxVCPUs: 1)
        f.live.insert(2)
        let again = f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc
        #expect(f.op(2, .bindInterdomain, 1, UInt64(again)).fds == 2)
    }

    @Test func unknownOperationsAndUnknownDomainsAreENOSYS() throws {
        let f = try Fixture()
        let r = HypercallRequest(op: HypercallOp.eventChannelOp.rawValue, seq: 1, args: [99])
        guard case let .reply(rc, _, _, _) = f.service.op(1, r) else { Issue.record("no reply"); return }
        #expect(rc == -XenErrno.ENOSYS.rawValue)
        #expect(f.op(7, .bindIPI, 0).rc == -XenErrno.ENOSYS.rawValue)
    }

    /// Domain 0 binding a guest's suspend event channel (libxl's `xc_suspend_evtchn_init`): only
    /// a port the guest allocated unbound for domain 0, or one bound to domain 0 this way before;
    /// the guest is told; every other kind of port is refused with what it is, and left as it was.
    @Test func dom0BindsOnlyAPortOfferedToIt() throws {
        let f = try Fixture()
        let store = try #require(f.service.bindToDom0(1))
        let offered = EvtchnPort(UInt32(f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 0).rc))
        #expect(f.service.bindDom0(1, port: offered, storePort: store) == nil)
        #expect(f.told.last.map { $0.0 == 1 && $0.1 == .portBound(port: offered, peer: 0, remotePort: offered) } == true)
        #expect(f.op(1, .status, UInt64(DOMID_SELF.rawValue), UInt64(offered.rawValue)).rc == Int64(EvtchnStatus.interdomain.rawValue))
        // Again (a second save): accepted, nobody told twice.
        let toldBefore = f.told.count
        #expect(f.service.bindDom0(1, port: offered, storePort: store) == nil)
        #expect(f.told.count == toldBefore)
        // A signal raised and withdrawn before the domain took it.
        f.service.raise(1, port: offered, peer: 0)
        #expect(f.service.withdraw(1, port: offered))
        #expect(!f.service.withdraw(1, port: offered))

        let forOther = EvtchnPort(UInt32(f.op(1, .allocUnbound, UInt64(DOMID_SELF.rawValue), 2).rc))
        let (connected, _) = f.connect()
        let virq = EvtchnPort(UInt32(f.op(1, .bindVirq, UInt64(VIRQ.timer.rawValue), 0).rc))
        let cases: [(EvtchnPort, String)] = [
            (store, "it is the XenStore port"),
            (EvtchnPort(1000), "port 1000 is not allocated"),
            (forOther, "port \(forOther) is unbound for dom2, not for domain 0"),
            (connected, "is bound to dom2 port"),
            (virq, "port \(virq) is bound to a VIRQ or an IPI"),
        ]
        for (port, why) in cases {
            let refusal = f.service.bindDom0(1, port: port, storePort: store)
            #expect(refusal?.contains(why) == true, "\(port): \(refusal ?? "accepted")")
        }
        #expect(f.op(1, .status, UInt64(DOMID_SELF.rawValue), UInt64(forOther.rawValue)).rc == Int64(EvtchnStatus.unbound.rawValue))
        #expect(f.service.bindDom0(7, port: offered, storePort: nil) == "the domain has no event channels")
    }
}

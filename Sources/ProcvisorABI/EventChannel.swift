/// Event channels (`xen/event_channel.h`) and the shared pages Procvisor delivers them through.

/// A domain's local event-channel port (`evtchn_port_t`), a u32 in Xen (see `XenIdentifier`).
public struct EvtchnPort: XenIdentifier {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The port as an index into per-port tables.
    @inlinable @inline(__always) public var index: Int { Int(rawValue) }
    /// The u64 word of a port bitmap (pending, mask) that holds this port's bit.
    @inlinable @inline(__always) public var bitmapWord: Int { Int(rawValue &>> 6) }
    /// This port's bit within its `bitmapWord`.
    @inlinable @inline(__always) public var bitmapBit: UInt64 { 1 &<< UInt64(rawValue & 63) }
    /// The port at bit `bit` of bitmap word `word`.
    @inlinable @inline(__always) public init(bitmapWord word: Int, bit: Int) { rawValue = UInt32(word * 64 + bit) }
}

/// `EVTCHNOP_*`: args[0] of `__HYPERVISOR_event_channel_op`.
public enum EvtchnOp: UInt64, Sendable {
    /// args[1] remote domid, args[2] remote port → local port.
    case bindInterdomain = 0
    /// args[1] virq, args[2] vcpu → port.
    case bindVirq = 1
    /// args[1] port.
    case close = 3
    /// args[1] port (slow path through the supervisor; DomainRuntime sends through shared memory).
    case send = 4
    /// args[1] domid (DOMID_SELF), args[2] port → `EVTCHNSTAT_*`; payload: see `EvtchnStatusInfo`.
    case status = 5
    /// args[1] domid (DOMID_SELF), args[2] remote domid → port.
    case allocUnbound = 6
    /// args[1] vcpu → port.
    case bindIPI = 7
    /// args[1] port.
    case unmask = 9
}

/// `EVTCHNSTAT_*`.
public enum EvtchnStatus: UInt32, Sendable, Equatable {
    case closed = 0
    case unbound = 1
    case interdomain = 2
    case pirq = 3
    case virq = 4
    case ipi = 5
}

/// `VIRQ_*` from `xen/xen.h` that Procvisor raises.
public enum VIRQ: UInt32, Sendable, CaseIterable {
    /// The vCPU's one-shot timer (`set_timer_op`) expired.
    case timer = 0
    /// Console input is waiting.
    case console = 2
    /// Some domain shut down or died (what dom0's toolstack watches).
    case domExc = 3
}

/// What `EVTCHNOP_status` reports beyond the state: the remote end, the virq or the vcpu.
public struct EvtchnStatusInfo: Equatable, Sendable {
    public var status: EvtchnStatus
    public var remoteDomid: DomID
    public var remotePort: EvtchnPort
    public var virq: UInt32
    public var vcpu: UInt32

    public init(status: EvtchnStatus, remoteDomid: DomID = 0, remotePort: EvtchnPort = 0, virq: UInt32 = 0, vcpu: UInt32 = 0) {
        self.status = status
        self.remoteDomid = remoteDomid
        self.remotePort = remotePort
        self.virq = virq
        self.vcpu = vcpu
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 20)
        w.u32(status.rawValue)
        w.u16(remoteDomid.rawValue)
        w.u16(0)
        w.u32(remotePort.rawValue)
        w.u32(virq)
        w.u32(vcpu)
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> EvtchnStatusInfo {
        var r = WireReader(b, what: "evtchn status")
        guard let s = EvtchnStatus(rawValue: try r.u32()) else { throw WireError.invalid("evtchn status: unknown state") }
        let dom = DomID(try r.u16())
        _ = try r.u16()
        return EvtchnStatusInfo(status: s, remoteDomid: dom, remotePort: EvtchnPort(try r.u32()), virq: try r.u32(), vcpu: try r.u32())
    }
}

/// Layout of the pages that carry events. Senders write receivers' pages directly: no
/// supervisor on the data path.
public enum EventPages {
    public static let pageSize = 4096
    /// Ports per domain (bits in an inbound bitmap).
    public static let maxPorts = 4096
    public static let bitmapBytes = maxPorts / 8

    /// Doorbell page of a domain (shared read-write with every domain that has a channel to it):
    /// offset 0, u32: the doorbell, a futex word senders increment; offset 4, u32: 1 while the
    /// receiver sleeps on the doorbell (senders skip FUTEX_WAKE otherwise).
    public static let doorbellOffset = 0
    public static let sleepingOffset = 4

    /// Pair page of two domains A < B (shared only between them and the supervisor): A's inbound
    /// region at offset 0, B's at 2048; bit N of a region's bitmap = that domain's local port N is
    /// pending. A domain's pair page with domain 0 carries its virqs (set by the supervisor) and IPIs.
    public static let regionBytes = 2048

    /// Summary word of an inbound bitmap (u64 at the start of the region): bit W set means word W of
    /// the bitmap may have pending bits. Senders set it after the port's bit, so a receiver reads one
    /// word per peer instead of the whole bitmap. The bitmap follows it directly, so the summary and
    /// the bits of ports 0–447 share one cache line: a send moves two lines (this and the doorbell).
    public static func summaryOffset(receiver: DomID, peer: DomID) -> Int {
        receiver < peer ? 0 : regionBytes
    }

    public static func inboundOffset(receiver: DomID, peer: DomID) -> Int {
        summaryOffset(receiver: receiver, peer: peer) + 8
    }
}

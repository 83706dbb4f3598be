/// What a domain learns at boot, the counterpart of Xen's `start_info`: returned as the payload of
/// the `bootstrap` hypercall. Encoded as the magic string, then fixed fields, then strings.
public struct StartInfo: Equatable, Sendable {
    /// Like Xen's "xen-3.0-x86_64" magic: names the ABI so a mismatched runtime fails loudly.
    public static let magic = "procvisor-1.0-x86_64"

    public var domid: DomID
    public var name: String
    public var uuid: String
    /// Current memory in KiB (`memory` from xl.cfg).
    public var memoryKB: UInt64
    /// Maximum memory in KiB (`maxmem`).
    public var maxMemoryKB: UInt64
    public var vcpus: UInt32
    public var maxVCPUs: UInt32
    /// The guest command line as libxl builds it (cmdline, or root= plus extra).
    public var cmdline: String
    /// `SIF_*` flags; Procvisor sets `SIF_PRIVILEGED` (1) for dom0 only, so guests never see it,
    /// and `driverDomainFlag` for domains whose config says `driver_domain = 1`.
    public var flags: UInt32
    /// A Procvisor flag above Xen's SIF_* bits: the supervisor bounded this domain as a driver
    /// domain, so DomainRuntime engages the driver allow-list (narrowing a bound it cannot widen).
    public static let driverDomainFlag: UInt32 = 1 << 16
    public var isDriverDomain: Bool { flags & Self.driverDomainFlag != 0 }
    /// A Procvisor flag: the domain was restored (from a save file or a migration) and resumes;
    /// `resumeRecord` is what its suspend hook handed over.
    public static let resumedFlag: UInt32 = 1 << 17
    public var isResumed: Bool { flags & Self.resumedFlag != 0 }
    /// What the guest's suspend hook handed to the runtime before the save (empty when it
    /// handed nothing); nil on a fresh boot.
    public var resumeRecord: [UInt8]?
    /// Milliseconds the domain has to engage its sandbox before it is destroyed.
    public var engageTimeoutMs: UInt32
    /// Size of the machine (entries of the M2P table).
    public var machineFrames: UInt64
    /// `store_evtchn`: the domain's port for XenStore (its ring page comes with the bootstrap
    /// descriptors), bound to domain 0 as in Xen.
    public var storePort: EvtchnPort

    public init(domid: DomID, name: String, uuid: String, memoryKB: UInt64, maxMemoryKB: UInt64,
                vcpus: UInt32, maxVCPUs: UInt32, cmdline: String, flags: UInt32 = 0, engageTimeoutMs: UInt32 = 5000, machineFrames: UInt64 = 0, storePort: EvtchnPort = 0,
                resumeRecord: [UInt8]? = nil) {
        self.resumeRecord = resumeRecord
        self.machineFrames = machineFrames
        self.storePort = storePort
        self.domid = domid
        self.name = name
        self.uuid = uuid
        self.memoryKB = memoryKB
        self.maxMemoryKB = maxMemoryKB
        self.vcpus = vcpus
        self.maxVCPUs = maxVCPUs
        self.cmdline = cmdline
        self.flags = resumeRecord == nil ? flags & ~Self.resumedFlag : flags | Self.resumedFlag
        self.engageTimeoutMs = engageTimeoutMs
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 256)
        w.string(Self.magic)
        w.u16(domid.rawValue)
        w.u64(memoryKB)
        w.u64(maxMemoryKB)
        w.u32(vcpus)
        w.u32(maxVCPUs)
        w.u32(flags)
        w.u32(engageTimeoutMs)
        w.u64(machineFrames)
        w.u32(storePort.rawValue)
        w.string(name)
        w.string(uuid)
        w.string(cmdline)
        if let resumeRecord {
            w.u32(UInt32(resumeRecord.count))
            w.raw(resumeRecord)
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> StartInfo {
        var r = WireReader(bytes, what: "start-info")
        let magic = try r.string(limit: 64)
        guard magic == Self.magic else {
            throw WireError.invalid("start-info: magic is '\(magic)', this runtime speaks '\(Self.magic)'")
        }
        let domid = DomID(try r.u16())
        let mem = try r.u64()
        let maxmem = try r.u64()
        let vcpus = try r.u32()
        let maxv = try r.u32()
        let flags = try r.u32()
        let timeout = try r.u32()
        let frames = try r.u64()
        let store = EvtchnPort(try r.u32())
        let name = try r.string(limit: 256)
        let uuid = try r.string(limit: 64)
        let cmdline = try r.string(limit: 4096)
        var record: [UInt8]?
        if flags & Self.resumedFlag != 0 {
            let n = Int(try r.u32())
            guard n <= 64 << 10 else { throw WireError.invalid("start-info: a resume record of \(n) bytes") }
            record = Array(try r.raw(n))
        }
        return StartInfo(domid: domid, name: name, uuid: uuid, memoryKB: mem, maxMemoryKB: maxmem,
                         vcpus: vcpus, maxVCPUs: maxv, cmdline: cmdline, flags: flags, engageTimeoutMs: timeout,
                         machineFrames: frames, storePort: store, resumeRecord: record)
    }
}

/// Messages the supervisor sends to a domain on its event socket (the counterpart of virqs and of
/// the `control/shutdown` XenStore watch until XenStore exists): `u32 type, u32 arg`.
public enum DomainEvent: Equatable, Sendable {
    /// The toolstack asks the domain to shut down with this reason (`xl shutdown`, `xl reboot`).
    case shutdownRequest(ShutdownReason)

    public static let size = 8

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.size)
        switch self {
        case let .shutdownRequest(reason):
            w.u32(1)
            w.u32(reason.rawValue)
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> DomainEvent {
        var r = WireReader(bytes, what: "domain event")
        let type = try r.u32()
        let arg = try r.u32()
        switch type {
        case 1:
            guard let reason = ShutdownReason(rawValue: arg) else { throw WireError.invalid("domain event: unknown shutdown reason \(arg)") }
            return .shutdownRequest(reason)
        default:
            throw WireError.invalid("domain event: unknown type \(type)")
        }
    }
}

/// Descriptor numbers a domain inherits from the supervisor.
public enum BootstrapFD {
    /// Guest console input (a pipe from the supervisor).
    public static let consoleIn: Int32 = 0
    /// Guest console output; stderr is the same pipe so the console keeps one ordering.
    public static let consoleOut: Int32 = 1
    /// SOCK_SEQPACKET hypercall channel: request from the domain, reply from the supervisor.
    public static let hypercall: Int32 = 3
    /// SOCK_SEQPACKET event channel: asynchronous messages from the supervisor.
    public static let events: Int32 = 4
}

/// Descriptors that come back with the `bootstrap` hypercall, in this order.
public enum BootstrapReplyFD: Int, CaseIterable {
    case doorbell, selfPairPage, ram, p2m, m2p
    /// The `xenstore_domain_interface` page.
    case storePage
    /// An eventfd: how a domain notifies ports bound to domain 0 (the supervisor's services).
    case dom0Kick
}

/// Event-channel messages the supervisor pushes on a domain's event socket. Descriptors travel
/// with the message (SCM_RIGHTS) where noted.
public enum ChannelEvent: Equatable, Sendable {
    /// Descriptors: the pair page shared with `peer`, then `peer`'s doorbell page.
    case peerPages(peer: DomID)
    /// Another domain bound to this domain's unbound `port`.
    case portBound(port: EvtchnPort, peer: DomID, remotePort: EvtchnPort)
    /// The remote end of `port` closed (or its domain died): the port is unbound again.
    case portUnbound(port: EvtchnPort)
    /// Domain 0 signalled `port`, one the runtime serves itself (the suspend event channel): the
    /// counterpart of the event upcall that makes a PV kernel look at its pending bits. It
    /// travels in order with the bindings (after the `portBound` of its port).
    case upcall(port: EvtchnPort)

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 16)
        switch self {
        case let .peerPages(peer):
            w.u32(2); w.u32(UInt32(peer.rawValue)); w.u32(0); w.u32(0)
        case let .portBound(port, peer, remote):
            w.u32(3); w.u32(port.rawValue); w.u32(UInt32(peer.rawValue)); w.u32(remote.rawValue)
        case let .portUnbound(port):
            w.u32(4); w.u32(port.rawValue); w.u32(0); w.u32(0)
        case let .upcall(port):
            w.u32(5); w.u32(port.rawValue); w.u32(0); w.u32(0)
        }
        return w.bytes
    }

    /// nil when the message is not a channel event (e.g. a shutdown request).
    public static func decode(_ bytes: [UInt8]) throws -> ChannelEvent? {
        var r = WireReader(bytes, what: "channel event")
        let type = try r.u32()
        switch type {
        case 2: return .peerPages(peer: DomID(UInt16(truncatingIfNeeded: try r.u32())))
        case 3:
            let port = EvtchnPort(try r.u32())
            let peer = DomID(UInt16(truncatingIfNeeded: try r.u32()))
            return .portBound(port: port, peer: peer, remotePort: EvtchnPort(try r.u32()))
        case 4: return .portUnbound(port: EvtchnPort(try r.u32()))
        case 5: return .upcall(port: EvtchnPort(try r.u32()))
        default: return nil
        }
    }
}

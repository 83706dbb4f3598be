/// Hypercall numbers. Xen's own operations keep their `__HYPERVISOR_*` numbers from `xen/xen.h`;
/// operations that exist only because domains are processes live at 0x1000 and above.
public enum HypercallOp: UInt32, Sendable, CaseIterable {
    case memoryOp = 12            // __HYPERVISOR_memory_op
    case multicall = 13           // __HYPERVISOR_multicall
    case setTimerOp = 15          // __HYPERVISOR_set_timer_op
    case xenVersion = 17          // __HYPERVISOR_xen_version
    case consoleIO = 18           // __HYPERVISOR_console_io
    case grantTableOp = 20        // __HYPERVISOR_grant_table_op
    case vcpuOp = 24              // __HYPERVISOR_vcpu_op
    case schedOp = 29             // __HYPERVISOR_sched_op
    case eventChannelOp = 32      // __HYPERVISOR_event_channel_op

    /// First message of a domain: returns the start-info.
    case bootstrap = 0x1000
    /// The domain has installed its strict seccomp filter; the supervisor verifies it.
    case engaged = 0x1001
    /// Sent by the SIGSYS handler: args[0] = syscall number, args[1] = audit arch, args[2] = ip.
    case seccompViolation = 0x1002
    /// args[0] = count (1…16) → that many grantable pages: one memfd each, gfns (u64) in the payload.
    case allocGrantPages = 0x1003
    /// args[0] = gfn of a grantable page no longer wanted (refused while granted pages are mapped).
    case freeGrantPage = 0x1004
    /// A backend asks for its device: args[0] = device type (`DeviceKind`), args[1] = frontend
    /// domid, args[2] = devid. Only the backend domain the toolstack named gets it: the disk image
    /// or block device, opened by the supervisor (read-only for `access=ro`), as one descriptor.
    case deviceFD = 0x1005
    /// A granter ended access to grantable pages the supervisor had exposed (sent a descriptor
    /// of to a grantee): payload = their gfns (u64, 1…16). For each the supervisor makes a fresh
    /// page holding the current contents, puts it in the page's place and drops the old one, which
    /// then lives on only in whatever the grantee kept. Reply payload: an i32 per gfn, 0 = a new
    /// descriptor is attached (in order) for the granter to map over the page, -EBUSY = still
    /// mapped through another grant (stays exposed), -EINVAL = not one of the caller's pages.
    case rebackGrantPages = 0x1007
    /// A backend asks for the in-flight log of one queue of a device it serves: args[0] = device
    /// type (`DeviceKind`), args[1] = frontend domid, args[2] = devid, args[3] = queue (0…15),
    /// args[4] = bytes (a multiple of 4096, at most 1 MiB). The supervisor makes the memfd the
    /// first time and keeps it for as long as the device exists, across restarts of the backend
    /// domain: every incarnation gets the same one. rc = how many incarnations had it before (0:
    /// new, all zeroes); one descriptor attached. Only the device's backend gets it; a size other
    /// than the first request's is refused (EINVAL).
    case inflightLog = 0x1008
}

/// `SCHEDOP_*` from `xen/sched.h`.
public enum SchedOp: UInt64, Sendable {
    case yield = 0
    case block = 1
    case shutdown = 2
}

/// `SHUTDOWN_*` from `xen/sched.h`; also the order of xl's reason letters "-rscwS".
public enum ShutdownReason: UInt32, Sendable, Codable, CaseIterable {
    case poweroff = 0
    case reboot = 1
    case suspend = 2
    case crash = 3
    case watchdog = 4
    case softReset = 5

    public var name: String {
        switch self {
        case .poweroff: return "poweroff"
        case .reboot: return "reboot"
        case .suspend: return "suspend"
        case .crash: return "crash"
        case .watchdog: return "watchdog"
        case .softReset: return "soft_reset"
        }
    }

    /// The fifth state letter of `xl list` ("-rscwS"[reason]).
    public var letter: Character { Array("-rscwS")[Int(rawValue)] }
}

/// `CONSOLEIO_*` from `xen/xen.h`.
public enum ConsoleIOCmd: UInt64, Sendable {
    case write = 0
    case read = 1
}

/// `XENVER_*` from `xen/version.h` (the subset that makes sense here).
public enum XenVersionCmd: UInt64, Sendable {
    case version = 0
    case extraversion = 1
    case capabilities = 3
    case pagesize = 7
}

/// `VCPUOP_*` from `xen/vcpu.h`.
public enum VCPUOp: UInt64, Sendable {
    case up = 1
    case down = 2
    case isUp = 3
}

/// The version Procvisor reports through `XENVER_version` and `xl info`: the Xen interface it follows.
public enum ProcvisorVersion {
    public static let major: UInt32 = 4
    public static let minor: UInt32 = 17
    public static let extra = "-procvisor"
    public static let capabilities = "procvisor-1.0-x86_64"
}

/// Errno values returned in hypercall replies (`xen/errno.h`, identical to Linux on x86).
public enum XenErrno: Int64, Sendable {
    case EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, E2BIG = 7, EBADF = 9, EAGAIN = 11
    case ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19, EINVAL = 22
    case ENOSPC = 28, EROFS = 30, ERANGE = 34, ENOSYS = 38, EOPNOTSUPP = 95, ENOTCONN = 107
}

/// Request header (64 bytes, little endian) followed by `payloadLength` bytes:
/// `u32 op, u32 payload_len, u64 seq, u64 args[6]`.
public struct HypercallRequest: Equatable, Sendable {
    public static let headerSize = 64
    /// Largest request or reply a domain may send (one SOCK_SEQPACKET datagram).
    public static let maxMessageSize = 64 * 1024
    public static let maxPayload = maxMessageSize - headerSize

    public var op: UInt32
    public var seq: UInt64
    public var args: [UInt64]
    public var payload: [UInt8]

    public init(op: UInt32, seq: UInt64, args: [UInt64] = [], payload: [UInt8] = []) {
        self.op = op
        self.seq = seq
        self.args = Array((args + Array(repeating: 0, count: 6)).prefix(6))
        self.payload = payload
    }

    public init(_ op: HypercallOp, seq: UInt64, args: [UInt64] = [], payload: [UInt8] = []) {
        self.init(op: op.rawValue, seq: seq, args: args, payload: payload)
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.headerSize + payload.count)
        w.u32(op)
        w.u32(UInt32(payload.count))
        w.u64(seq)
        for a in args { w.u64(a) }
        w.raw(payload)
        return w.bytes
    }

    /// Decodes one datagram; the payload length must match the datagram exactly.
    public static func decode(_ bytes: [UInt8]) throws -> HypercallRequest {
        if bytes.count > maxMessageSize { throw WireError.tooLarge(what: "hypercall", size: bytes.count, limit: maxMessageSize) }
        var r = WireReader(bytes, what: "hypercall header")
        let op = try r.u32()
        let len = Int(try r.u32())
        let seq = try r.u64()
        var args: [UInt64] = []
        for _ in 0..<6 { args.append(try r.u64()) }
        if len != r.remaining {
            throw WireError.invalid("hypercall op \(op): payload length field says \(len) bytes but \(r.remaining) follow")
        }
        return HypercallRequest(op: op, seq: seq, args: args, payload: Array(try r.raw(len)))
    }
}

/// Reply header (24 bytes): `u64 seq, i64 rc, u32 payload_len, u32 reserved`, then the payload.
/// `rc` is the hypercall's return value: >= 0 success, < 0 a negated `XenErrno`.
public struct HypercallReply: Equatable, Sendable {
    public static let headerSize = 24
    public var seq: UInt64
    public var rc: Int64
    public var payload: [UInt8]

    public init(seq: UInt64, rc: Int64, payload: [UInt8] = []) {
        self.seq = seq
        self.rc = rc
        self.payload = payload
    }

    public static func error(_ seq: UInt64, _ e: XenErrno) -> HypercallReply { HypercallReply(seq: seq, rc: -e.rawValue) }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.headerSize + payload.count)
        w.u64(seq)
        w.i64(rc)
        w.u32(UInt32(payload.count))
        w.u32(0)
        w.raw(payload)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> HypercallReply {
        var r = WireReader(bytes, what: "hypercall reply")
        let seq = try r.u64()
        let rc = try r.i64()
        let len = Int(try r.u32())
        _ = try r.u32()
        if len != r.remaining { throw WireError.invalid("hypercall reply: payload length \(len) but \(r.remaining) bytes follow") }
        return HypercallReply(seq: seq, rc: rc, payload: Array(try r.raw(len)))
    }
}

/// One entry of a `__HYPERVISOR_multicall` batch: the payload of a multicall request is a u32 count
/// followed by that many encoded requests, each prefixed by its u32 length. The reply payload is the
/// count followed by each reply's rc (i64) and its u32-length-prefixed payload.
public enum Multicall {
    public static let maxEntries = 64

    public static func encode(_ calls: [HypercallRequest]) -> [UInt8] {
        var w = WireWriter()
        w.u32(UInt32(calls.count))
        for c in calls {
            let b = c.encode()
            w.u32(UInt32(b.count))
            w.raw(b)
        }
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws -> [HypercallRequest] {
        var r = WireReader(payload, what: "multicall")
        let n = Int(try r.u32())
        if n > maxEntries { throw WireError.tooLarge(what: "multicall entries", size: n, limit: maxEntries) }
        var calls: [HypercallRequest] = []
        for _ in 0..<n {
            let len = Int(try r.u32())
            calls.append(try HypercallRequest.decode(Array(try r.raw(len))))
        }
        return calls
    }

    public static func encodeResults(_ results: [HypercallReply]) -> [UInt8] {
        var w = WireWriter()
        w.u32(UInt32(results.count))
        for r in results {
            w.i64(r.rc)
            w.u32(UInt32(r.payload.count))
            w.raw(r.payload)
        }
        return w.bytes
    }

    public static func decodeResults(_ payload: [UInt8]) throws -> [(rc: Int64, payload: [UInt8])] {
        var r = WireReader(payload, what: "multicall results")
        let n = Int(try r.u32())
        if n > maxEntries { throw WireError.tooLarge(what: "multicall results", size: n, limit: maxEntries) }
        var out: [(Int64, [UInt8])] = []
        for _ in 0..<n {
            let rc = try r.i64()
            let len = Int(try r.u32())
            out.append((rc, Array(try r.raw(len))))
        }
        return out
    }
}

/// Device types of the `deviceFD` hypercall (the XenStore type names).
public enum DeviceKind: UInt64, Sendable {
    case vbd = 1
    case vif = 2
    /// The tap device that is the uplink of a vif's bridge: args[1]/args[2] name a vif the
    /// caller serves; the supervisor creates (or fails to create: no CAP_NET_ADMIN) a tap named
    /// after that vif's `bridge` and hands it over.
    case uplink = 3

    public var xenName: String {
        switch self {
        case .vbd: return "vbd"
        case .vif: return "vif"
        case .uplink: return "uplink"
        }
    }
}

import CProcvisor
import Glibc

/// What an io_uring ring of a driver domain may do, and how such a ring is made.
///
/// io_uring runs operations without system calls: OPENAT, SOCKET, FTRUNCATE and the rest never
/// reach seccomp. So every ring is made by `create`: with IORING_SETUP_R_DISABLED, so nothing can
/// be submitted, then restricted (IORING_REGISTER_RESTRICTIONS, allowed once per ring and only
/// while it is disabled). Its user then registers its files and buffers and enables it; from then
/// on the kernel refuses every operation outside `sqeOperations`, every SQE without
/// IOSQE_FIXED_FILE, and every registration outside `registerOperations`, with EACCES. Nobody can
/// loosen that: a second restriction call fails (EBUSY before enabling, EACCES after).
///
/// The code is meant to run where rings are made for driver domains: in the supervisor, which
/// hands the ring over as the result of the domain's own io_uring_setup (seccomp user
/// notification with SECCOMP_IOCTL_NOTIF_ADDFD; io_uring descriptors cannot travel over
/// SCM_RIGHTS: the kernel refuses them with EINVAL). Until that lands the engines make their
/// rings in-process through `create` as well, so the restriction set is the one they are
/// tested and run with.
public enum IORingPolicy {
    /// One operation or registration the policy allows, and why it is needed.
    public struct Allowed: Sendable {
        public let code: UInt8
        public let name: String
        public let why: String
    }

    /// SQE opcodes the block and network backends submit. Every one acts on a registered file
    /// (IOSQE_FIXED_FILE is required) or on nothing but memory of the domain's own.
    public static let sqeOperations: [Allowed] = [
        Allowed(code: UInt8(PV_IORING_OP_READ), name: "READ", why: "netback reads frames from its tap and its kick eventfd"),
        Allowed(code: UInt8(PV_IORING_OP_WRITE), name: "WRITE", why: "netback writes frames to its tap"),
        Allowed(code: UInt8(PV_IORING_OP_READV), name: "READV", why: "blkback reads into the frontend's granted pages"),
        Allowed(code: UInt8(PV_IORING_OP_WRITEV), name: "WRITEV", why: "blkback writes from the frontend's granted pages"),
        Allowed(code: UInt8(PV_IORING_OP_READ_FIXED), name: "READ_FIXED", why: "blkback reads into its registered persistent pages / staging"),
        Allowed(code: UInt8(PV_IORING_OP_WRITE_FIXED), name: "WRITE_FIXED", why: "blkback writes from its registered persistent pages / staging"),
        Allowed(code: UInt8(PV_IORING_OP_READV_FIXED), name: "READV_FIXED", why: "blkback's multi-segment reads on registered pages (Linux 6.15)"),
        Allowed(code: UInt8(PV_IORING_OP_WRITEV_FIXED), name: "WRITEV_FIXED", why: "blkback's multi-segment writes on registered pages (Linux 6.15)"),
        Allowed(code: UInt8(PV_IORING_OP_FSYNC), name: "FSYNC", why: "BLKIF_OP_FLUSH_DISKCACHE and barriers (fdatasync)"),
        Allowed(code: UInt8(PV_IORING_OP_FALLOCATE), name: "FALLOCATE", why: "BLKIF_OP_DISCARD (punch hole, keep size)"),
        Allowed(code: UInt8(PV_IORING_OP_POLL_ADD), name: "POLL_ADD", why: "an owned blkback queue waits on its kick eventfd"),
        Allowed(code: UInt8(PV_IORING_OP_FUTEX_WAIT), name: "FUTEX_WAIT", why: "an owned blkback queue waits on the event-channel doorbell (Linux 6.7)"),
        Allowed(code: UInt8(PV_IORING_OP_TIMEOUT), name: "TIMEOUT", why: "liburing's timed wait on kernels without IORING_FEAT_EXT_ARG (before 5.11)"),
    ]

    /// io_uring_register opcodes the backends use after enabling (the kernel checks them only
    /// once the ring is enabled; ENABLE_RINGS itself is not here, so a second enable is refused).
    public static let registerOperations: [Allowed] = [
        Allowed(code: UInt8(PV_IORING_REGISTER_FILES), name: "REGISTER_FILES", why: "the disk, tap and kick descriptors the domain already holds, as fixed files"),
        Allowed(code: UInt8(PV_IORING_REGISTER_FILES_UPDATE), name: "REGISTER_FILES_UPDATE", why: "an owned blkback queue puts its kick eventfd in a registered slot"),
        Allowed(code: UInt8(PV_IORING_REGISTER_EVENTFD), name: "REGISTER_EVENTFD", why: "completions signalled on an eventfd (dispatched blkback queues)"),
        Allowed(code: UInt8(PV_IORING_REGISTER_PROBE), name: "REGISTER_PROBE", why: "which opcodes the kernel has (futex waits, vectored fixed transfers)"),
        Allowed(code: UInt8(PV_IORING_REGISTER_BUFFERS2), name: "REGISTER_BUFFERS2", why: "blkback's sparse table of registered buffers"),
        Allowed(code: UInt8(PV_IORING_REGISTER_BUFFERS_UPDATE), name: "REGISTER_BUFFERS_UPDATE", why: "blkback points a registered buffer at its aliased persistent pages"),
    ]

    /// Every SQE must name a registered file: a descriptor the domain holds is not enough. For
    /// operations without a file (FUTEX_WAIT, TIMEOUT) Linux ignores the flag (checked on 6.18:
    /// `IORingRestrictionTests`), so requiring it costs them nothing. No other flag is allowed.
    public static let sqeFlagsRequired = UInt8(PV_IOSQE_FIXED_FILE)
    public static let sqeFlagsAllowed = UInt8(PV_IOSQE_FIXED_FILE)

    /// IORING_SETUP_* a domain may ask for. R_DISABLED is always added. Not allowed, among others:
    /// SQPOLL (a kernel thread with the creator's, the supervisor's, credentials), IOPOLL,
    /// ATTACH_WQ (another ring's workers), NO_MMAP / REGISTERED_FD_ONLY (memory the kernel would
    /// take from the caller), CLAMP (entries are bounded here instead).
    public static let allowedSetupFlags: UInt32 = PV_IORING_SETUP_SINGLE_ISSUER | PV_IORING_SETUP_DEFER_TASKRUN
        | PV_IORING_SETUP_COOP_TASKRUN | PV_IORING_SETUP_TASKRUN_FLAG | PV_IORING_SETUP_CQSIZE
    /// Submission entries of one ring at most (blkback's deepest queue: 16 ring pages of 32 slots,
    /// plus the doorbell and kick waits; the block engine's depth is capped at 4096).
    public static let maxEntries: UInt32 = 4096
    /// Completion entries at most (IORING_SETUP_CQSIZE); the kernel's default is twice the SQ.
    public static let maxCompletionEntries: UInt32 = 2 * maxEntries
    /// Rings one domain may hold at once (for the supervisor's budget; `ringsHeld` counts them).
    public static let maxRingsPerDomain = 64
    /// IORING_SETUP_CQSIZE: io_uring_params.cq_entries is an input.
    public static let completionSizeFlag: UInt32 = PV_IORING_SETUP_CQSIZE

    /// What a domain asks for: `entries` submission slots, `flags` from `allowedSetupFlags`,
    /// `completionEntries` with IORING_SETUP_CQSIZE (0 otherwise).
    public struct Request: Equatable, Sendable, CustomStringConvertible {
        public var entries: UInt32
        public var flags: UInt32
        public var completionEntries: UInt32

        public init(entries: UInt32, flags: UInt32 = 0, completionEntries: UInt32 = 0) {
            self.entries = entries
            self.flags = flags
            self.completionEntries = completionEntries
        }

        public var description: String {
            "\(entries) entries, flags 0x\(String(flags, radix: 16))\(completionEntries > 0 ? ", \(completionEntries) completion entries" : "")"
        }

        /// Why the request is refused (EINVAL), or nil.
        public var refusal: String? {
            if flags & ~IORingPolicy.allowedSetupFlags & ~PV_IORING_SETUP_R_DISABLED != 0 {
                return "setup flags 0x\(String(flags & ~IORingPolicy.allowedSetupFlags & ~PV_IORING_SETUP_R_DISABLED, radix: 16)) are not allowed"
            }
            if entries == 0 || entries > IORingPolicy.maxEntries { return "\(entries) entries (1…\(IORingPolicy.maxEntries))" }
            if flags & PV_IORING_SETUP_CQSIZE != 0 {
                if completionEntries < entries || completionEntries > IORingPolicy.maxCompletionEntries {
                    return "\(completionEntries) completion entries (\(entries)…\(IORingPolicy.maxCompletionEntries))"
                }
            } else if completionEntries != 0 {
                return "completion entries without IORING_SETUP_CQSIZE"
            }
            return nil
        }
    }

    /// A ring made by `create`: disabled and restricted. `params` is the io_uring_params the
    /// kernel returned, byte for byte (what `IOUring(adopting:params:)` maps it with).
    public struct Ring {
        public let fd: FileDescriptor
        public let params: [UInt8]
        public init(fd: FileDescriptor, params: [UInt8]) {
            self.fd = fd
            self.params = params
        }
    }

    /// Size of io_uring_params on this host.
    public static var paramsSize: Int { pv_uring_params_size() }

    /// Creates a ring with IORING_SETUP_R_DISABLED and registers the restrictions. Throws EINVAL
    /// for a request outside the policy, else the errno of io_uring_setup (EPERM where io_uring
    /// is disabled, ENOSYS on old kernels, ENOMEM) or of the restriction call.
    public static func create(_ request: Request) throws -> Ring {
        if let why = request.refusal {
            throw SystemError("io_uring_setup", "refused by policy: \(why)", errno: .invalidArgument)
        }
        var params = [UInt8](repeating: 0, count: paramsSize)
        let raw = try params.withUnsafeMutableBytes { p in
            try negErrno("io_uring_setup", "\(request)") {
                pv_uring_setup_fd(request.entries, request.flags | PV_IORING_SETUP_R_DISABLED, request.completionEntries, p.baseAddress)
            }
        }
        let fd = FileDescriptor(rawValue: raw)
        do {
            try restrict(fd)
        } catch let e as SystemError where e.errno == Errno(rawValue: EBUSY) {
            // Restricted already: io_uring_setup was answered by whoever makes rings for this
            // process (the supervisor), with this policy.
        } catch {
            fd.close()
            throw error
        }
        return Ring(fd: fd, params: params)
    }

    /// Registers the policy's restrictions on a disabled ring. Opcodes this kernel does not know
    /// are left out (the kernel refuses the whole list otherwise): they could not run anyway.
    public static func restrict(_ ring: FileDescriptor) throws {
        var supported = [UInt8](repeating: 0, count: 256)
        try negErrno("IORING_REGISTER_PROBE", "\(ring)") { pv_uring_probe_fd(ring.rawValue, &supported, 256) }
        let ops = sqeOperations.map(\.code).filter { supported[Int($0)] == 1 }
        let regs = registerOperations.map(\.code)
        try negErrno("IORING_REGISTER_RESTRICTIONS", "\(ring): \(ops.count) operations, \(regs.count) registrations, IOSQE_FIXED_FILE required") {
            pv_uring_register_restrictions(ring.rawValue, ops, UInt32(ops.count), regs, UInt32(regs.count),
                                           sqeFlagsAllowed, sqeFlagsRequired)
        }
    }

    /// How many io_uring rings process `pid` holds: distinct io_uring inodes among its open
    /// descriptors and its mappings (each ring is a file of its own; a ring still mapped after
    /// its descriptor was closed is alive too).
    public static func ringsHeld(by pid: pid_t) throws -> Int { try ringInodes(of: pid).count }

    /// The inodes of the io_uring rings process `pid` holds (see `ringsHeld`).
    public static func ringInodes(of pid: pid_t) throws -> Set<UInt64> {
        var inodes = Set<UInt64>()
        let dir = "/proc/\(pid)/fd"
        guard let d = opendir(dir) else { throw SystemError("opendir", dir, errno: .current) }
        defer { closedir(d) }
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.first?.isNumber == true else { continue }
            let path = dir + "/" + name
            var link = [CChar](repeating: 0, count: 64)
            let n = readlink(path, &link, link.count - 1)
            guard n > 0, String(cString: link) == "anon_inode:[io_uring]" else { continue }
            var st = stat()
            if stat(path, &st) == 0 { inodes.insert(UInt64(st.st_ino)) }
        }
        // /proc/PID/maps: "start-end perms offset dev inode path".
        let maps = try FileDescriptor.open("/proc/\(pid)/maps", O_RDONLY | O_CLOEXEC)
        defer { maps.close() }
        var text: [UInt8] = []
        while true {
            let chunk = try maps.read(upTo: 65536)
            if chunk.isEmpty { break }
            text += chunk
        }
        for line in text.split(separator: UInt8(ascii: "\n")) where line.count > 21 {
            let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard fields.count >= 6, String(decoding: fields[5], as: UTF8.self) == "anon_inode:[io_uring]",
                  let ino = UInt64(String(decoding: fields[4], as: UTF8.self)) else { continue }
            inodes.insert(ino)
        }
        return inodes
    }

    /// Bytes sent on Unix socket `fd` that the peer has not read yet (SIOCOUTQ).
    public static func unreadBytes(_ fd: FileDescriptor) throws -> Int {
        Int(try negErrno("ioctl SIOCOUTQ", "\(fd)") { pv_socket_unread_bytes(fd.rawValue) })
    }
}

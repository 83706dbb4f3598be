import CProcvisor
import Glibc

/// What a seccomp rule does when it matches.
public enum SeccompAction: Equatable, Sendable {
    case allow
    /// SIGSYS: the call is not executed; DomainRuntime's handler reports it, then the domain dies.
    case trap
    /// Fail the call with this errno (used for clone3 so libc falls back to clone, whose flags we can see).
    case errno(Int32)
    /// SIGSYS to the whole process, no handler: for calls through another ABI (int 0x80, x32),
    /// which must never leave a thread group half alive.
    case killProcess
    /// Hand the call to the supervisor (SECCOMP_RET_USER_NOTIF): it names the call and crashes
    /// the domain, which matters for kernels that install no SIGSYS reporter of their own.
    case notify

    var raw: UInt32 {
        switch self {
        case .allow: return pv_seccomp_act_allow()
        case .trap: return pv_seccomp_act_trap()
        case let .errno(e): return pv_seccomp_act_errno(e)
        case .killProcess: return pv_seccomp_act_kill_process()
        case .notify: return pv_seccomp_act_notify()
        }
    }
}

/// A comparison on one system call argument.
public struct SeccompArg: Equatable, Sendable {
    public enum Op: Equatable, Sendable {
        case equal(UInt64)
        case notEqual(UInt64)
        /// `(arg & mask) == value`
        case maskedEqual(mask: UInt64, value: UInt64)
    }
    public var index: UInt32
    public var op: Op

    public static func arg(_ index: UInt32, _ op: Op) -> SeccompArg { SeccompArg(index: index, op: op) }

    var raw: pv_seccomp_arg {
        switch op {
        case let .equal(v): return pv_seccomp_arg(arg: index, op: Int32(PV_CMP_EQ), datum_a: v, datum_b: 0)
        case let .notEqual(v): return pv_seccomp_arg(arg: index, op: Int32(PV_CMP_NE), datum_a: v, datum_b: 0)
        case let .maskedEqual(mask, value): return pv_seccomp_arg(arg: index, op: Int32(PV_CMP_MASKED_EQ), datum_a: mask, datum_b: value)
        }
    }
}

/// One rule: a system call by name, an action, optional argument conditions (all must hold),
/// and why the rule exists.
public struct SeccompRule: Sendable {
    public var syscall: String
    public var action: SeccompAction
    public var args: [SeccompArg]
    public var why: String

    public init(_ syscall: String, _ action: SeccompAction, _ args: [SeccompArg] = [], why: String) {
        self.syscall = syscall
        self.action = action
        self.args = args
        self.why = why
    }
}

/// A seccomp policy as data: a default action and rules. Compiled with libseccomp.
public struct SeccompPolicy: Sendable {
    public var name: String
    public var defaultAction: SeccompAction
    public var rules: [SeccompRule]

    public init(name: String, defaultAction: SeccompAction, rules: [SeccompRule]) {
        self.name = name
        self.defaultAction = defaultAction
        self.rules = rules
    }

    /// The same rules with another default action.
    public func withDefault(_ action: SeccompAction) -> SeccompPolicy {
        SeccompPolicy(name: name, defaultAction: action, rules: rules)
    }

    /// Stands for "the domain's own pid" in rules; the launcher patches the compiled BPF in the
    /// child with its real pid before installing it. Above pid_max, so it never collides.
    public static let ownPidPlaceholder: UInt32 = 0x5EC0_0D1D

    /// Compiles the policy. Rules naming calls this kernel/architecture lacks are skipped. Calls
    /// through any other ABI than x86-64's kill the whole process. `ownPid`, for a filter the
    /// process installs on itself, replaces `ownPidPlaceholder` at compile time; without it the
    /// launcher patches the compiled program in the child.
    public func compile(threadSync: Bool = false, ownPid: UInt32? = nil) throws -> SeccompFilter {
        guard let ctx = pv_seccomp_new(defaultAction.raw) else {
            throw SystemError("seccomp_init", "policy \(name)", errno: .noMemory)
        }
        let filter = SeccompFilter(ctx: ctx, name: name)
        if threadSync {
            try negErrno("seccomp_attr_set(TSYNC)", "policy \(name)") { pv_seccomp_set_tsync(ctx, 1) }
        }
        try negErrno("seccomp_attr_set(ACT_BADARCH)", "policy \(name)") { pv_seccomp_set_badarch(ctx, SeccompAction.killProcess.raw) }
        // libseccomp refuses a rule that only repeats the default action (EACCES); it adds nothing.
        for rule in rules where rule.action != defaultAction {
            let nr = pv_seccomp_syscall_number(rule.syscall)
            if nr < 0 { continue }
            let args = rule.args.map { arg -> pv_seccomp_arg in
                var raw = arg.raw
                if let ownPid, raw.datum_a == UInt64(Self.ownPidPlaceholder) { raw.datum_a = UInt64(ownPid) }
                return raw
            }
            _ = try args.withUnsafeBufferPointer { p in
                try negErrno("seccomp_rule_add", "policy \(name) rule \(rule.syscall)") {
                    pv_seccomp_add_rule(ctx, rule.action.raw, nr, p.baseAddress, UInt32(p.count))
                }
            }
        }
        return filter
    }
}

/// A compiled seccomp filter (owns the libseccomp context).
public final class SeccompFilter {
    let ctx: UnsafeMutableRawPointer
    public let name: String

    init(ctx: UnsafeMutableRawPointer, name: String) {
        self.ctx = ctx
        self.name = name
    }

    deinit { pv_seccomp_release(ctx) }

    /// Installs the filter on the calling process. Irreversible.
    public func load() throws {
        try negErrno("seccomp_load", "policy \(name)") { pv_seccomp_load(ctx) }
    }

    /// The classic BPF program (an array of `struct sock_filter`, 8 bytes each).
    public func bpf() throws -> [UInt8] {
        var out: UnsafeMutableRawPointer?
        var len = 0
        try negErrno("seccomp_export_bpf", "policy \(name)") { pv_seccomp_export_bpf(ctx, &out, &len) }
        defer { free(out) }
        return Array(UnsafeRawBufferPointer(start: out, count: len))
    }
}

/// System call numbers and names on this architecture.
public enum Syscalls {
    public static func number(_ name: String) -> Int? {
        let nr = pv_seccomp_syscall_number(name)
        return nr < 0 ? nil : Int(nr)
    }

    public static func name(_ nr: Int) -> String? {
        var buf = [CChar](repeating: 0, count: 64)
        guard let number = Int32(exactly: nr), pv_seccomp_syscall_name(number, &buf, buf.count) == 0 else { return nil }
        return String(cString: buf)
    }

    /// Issues a raw system call: the result, or -errno.
    public static func raw(_ nr: Int, _ a: [Int] = []) -> Int {
        let x = a + Array(repeating: 0, count: 6)
        return pv_raw_syscall(nr, x[0], x[1], x[2], x[3], x[4], x[5])
    }
}

/// The SIGSYS handler of a domain: reports the trapped call on the hypercall socket (so the
/// supervisor can name it), then lets the process die of SIGSYS.
public enum SeccompViolationReporter {
    public static func install(hypercallFD: FileDescriptor, op: UInt32) throws {
        try negErrno("sigaction(SIGSYS)") { pv_install_sigsys_reporter(hypercallFD.rawValue, op) }
    }
}

/// The supervisor's side of a bound whose default action (or a rule) is `.notify`.
public enum SeccompNotification {
    /// One call a domain made that its bound hands to the supervisor: its number, ABI, the calling
    /// thread's pid as the supervisor sees it, and its arguments. The caller waits for `respond`.
    public struct Call: Sendable {
        public var id: UInt64
        public var number: Int32
        public var arch: UInt32
        public var pid: pid_t
        public var args: [UInt64]
    }

    public static func receive(_ listener: FileDescriptor) throws -> Call {
        var id: UInt64 = 0, nr: Int32 = 0, arch: UInt32 = 0, pid: pid_t = 0
        var args = [UInt64](repeating: 0, count: 6)
        _ = try args.withUnsafeMutableBufferPointer { a in
            try negErrno("ioctl(SECCOMP_IOCTL_NOTIF_RECV)", "\(listener)") { pv_seccomp_notif_recv(listener.rawValue, &id, &nr, &arch, &pid, a.baseAddress) }
        }
        return Call(id: id, number: nr, arch: arch, pid: pid, args: args)
    }

    /// Whether the call is still waiting (its thread alive): check after reading its memory.
    public static func isPending(_ listener: FileDescriptor, _ call: Call) -> Bool {
        pv_seccomp_notif_id_valid(listener.rawValue, call.id) == 0
    }

    /// The call fails with `errno`.
    public static func fail(_ listener: FileDescriptor, _ call: Call, _ errno: Errno) {
        _ = pv_seccomp_notif_respond(listener.rawValue, call.id, errno.rawValue, 0)
    }

    /// The call returns `value`.
    public static func succeed(_ listener: FileDescriptor, _ call: Call, value: Int64) throws {
        try negErrno("ioctl(SECCOMP_IOCTL_NOTIF_SEND)", "\(listener)") { pv_seccomp_notif_respond(listener.rawValue, call.id, 0, value) }
    }

    /// The call returns a new descriptor in the caller's table for the supervisor's `fd`.
    @discardableResult
    public static func returnDescriptor(_ listener: FileDescriptor, _ call: Call, _ fd: FileDescriptor) throws -> Int32 {
        try negErrno("ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)", "\(listener)") { pv_seccomp_notif_addfd_send(listener.rawValue, call.id, fd.rawValue) }
    }
}

/// Another process's memory, for answering its system calls (the arguments of a call handed to
/// the supervisor live in the domain's memory). The corresponding C functions are
/// `process_vm_readv` and `process_vm_writev`.
public enum RemoteMemory {
    public static func read(pid: pid_t, address: UInt64, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        let n = try buf.withUnsafeMutableBytes { b in
            try negErrno("process_vm_readv", "pid \(pid) at 0x\(String(address, radix: 16))") {
                Int32(truncatingIfNeeded: pv_process_vm_rw(pid, b.baseAddress, count, address, 0))
            }
        }
        guard n == count else { throw SystemError("process_vm_readv", "pid \(pid): short read", errno: .badAddress) }
        return buf
    }

    public static func write(pid: pid_t, address: UInt64, _ bytes: [UInt8]) throws {
        var copy = bytes
        let n = try copy.withUnsafeMutableBytes { b in
            try negErrno("process_vm_writev", "pid \(pid) at 0x\(String(address, radix: 16))") {
                Int32(truncatingIfNeeded: pv_process_vm_rw(pid, b.baseAddress, b.count, address, 1))
            }
        }
        guard n == bytes.count else { throw SystemError("process_vm_writev", "pid \(pid): short write", errno: .badAddress) }
    }
}

import CProcvisor
import Glibc

/// What a seccomp rule does when it matches.
public enum SeccompAction: Equatable, Sendable {
    case allow
    /// SIGSYS: the call is not executed; DomainRuntime's handler reports it, then the domain dies.
    case trap
    /// Fail the call with this errno (used for clone3 so libc falls back to clone, whose flags we can see).
    case errno(Int32)

    var raw: UInt32 {
        switch self {
        case .allow: return pv_seccomp_act_allow()
        case .trap: return pv_seccomp_act_trap()
        case let .errno(e): return pv_seccomp_act_errno(e)
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

    /// Stands for "the domain's own pid" in rules; the launcher patches the compiled BPF in the
    /// child with its real pid before installing it. Above pid_max, so it never collides.
    public static let ownPidPlaceholder: UInt32 = 0x5EC0_0D1D

    /// Compiles the policy. Rules naming calls this kernel/architecture lacks are skipped.
    public func compile(threadSync: Bool = false) throws -> SeccompFilter {
        guard let ctx = pv_seccomp_new(defaultAction.raw) else {
            throw SystemError("seccomp_init", "policy \(name)", errno: .noMemory)
        }
        let filter = SeccompFilter(ctx: ctx, name: name)
        if threadSync {
            try negErrno("seccomp_attr_set(TSYNC)", "policy \(name)") { pv_seccomp_set_tsync(ctx, 1) }
        }
        for rule in rules {
            let nr = pv_seccomp_syscall_number(rule.syscall)
            if nr < 0 { continue }
            let args = rule.args.map(\.raw)
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
        guard pv_seccomp_syscall_name(Int32(nr), &buf, buf.count) == 0 else { return nil }
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

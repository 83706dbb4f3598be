import CProcvisor
import Glibc

/// Signal handling for an event loop: block the signals and read them from a signalfd.
public enum Signals {
    /// Signal numbers callers above LinuxHost name (their values are the kernel's, per architecture).
    public static let hangup = SIGHUP
    public static let interrupt = SIGINT
    public static let terminate = SIGTERM
    public static let kill = SIGKILL
    public static let stop = SIGSTOP
    public static let `continue` = SIGCONT
    public static let child = SIGCHLD
    public static let brokenPipe = SIGPIPE
    /// A system call seccomp traps (or another ABI's): the jail's "forbidden system call".
    public static let badSystemCall = SIGSYS

    public static func block(_ signals: [Int32]) throws {
        _ = try signals.withUnsafeBufferPointer { p in
            try negErrno("pthread_sigmask") { pv_block_signals(p.baseAddress, Int32(p.count)) }
        }
    }

    public static func unblockAll() { _ = pv_unblock_all_signals() }

    /// Ignores `signal` from now on (signal(2) with SIG_IGN), e.g. `brokenPipe` so a write to a
    /// closed socket fails with EPIPE instead of ending the process. Inherited across execve.
    public static func ignore(_ signal: Int32) { _ = Glibc.signal(signal, SIG_IGN) }

    /// A non-blocking signalfd for `signals` (which must be blocked first).
    public static func descriptor(for signals: [Int32]) throws -> FileDescriptor {
        let raw = try signals.withUnsafeBufferPointer { p in
            try negErrno("signalfd") { pv_signalfd(p.baseAddress, Int32(p.count)) }
        }
        return FileDescriptor(rawValue: Int32(raw))
    }

    /// Drains a signalfd, returning the signal numbers read.
    public static func drain(_ fd: FileDescriptor) -> [Int32] {
        var out: [Int32] = []
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        while true {
            let n = withUnsafeMutableBytes(of: &info) { Glibc.read(fd.rawValue, $0.baseAddress, size) }
            if n != size { break }
            out.append(Int32(info.ssi_signo))
        }
        return out
    }

    /// Sends `signal` to `pid`. Only ever called with pids this process started.
    public static func send(_ signal: Int32, to pid: pid_t) throws {
        try negErrno("kill", "pid \(pid) signal \(signal)") { pv_kill(pid, signal) }
    }

    /// The C name of a signal ("SIGSYS").
    public static func name(_ signal: Int32) -> String {
        let names: [Int32: String] = [
            SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
            SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
            SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
            SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP", SIGSYS: "SIGSYS",
            SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ",
        ]
        return names[signal] ?? "signal \(signal)"
    }
}

/// How a child process ended, from `waitpid`.
public enum ProcessStatus: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)

    public init(waitStatus s: Int32) {
        if s & 0x7f == 0 { self = .exited((s >> 8) & 0xff) } else { self = .signaled(s & 0x7f) }
    }
}

/// Reaps children without blocking.
public enum ChildReaper {
    /// Every child that has exited since the last call.
    public static func reap() -> [(pid: pid_t, status: ProcessStatus)] {
        var out: [(pid_t, ProcessStatus)] = []
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { break }
            out.append((pid, ProcessStatus(waitStatus: status)))
        }
        return out
    }

    public enum Poll: Equatable, Sendable {
        case running
        case exited(ProcessStatus)
        /// No child of this process has that pid (any more): reaped already, or never was.
        case notAChild
    }

    /// Reaps one specific child if it has ended.
    public static func poll(_ pid: pid_t) -> Poll {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return .exited(ProcessStatus(waitStatus: status)) }
            if r == 0 { return .running }
            if errno == EINTR { continue }
            return .notAChild
        }
    }

    /// Waits for one specific child (blocking).
    public static func wait(_ pid: pid_t) throws -> ProcessStatus {
        var status: Int32 = 0
        try retrying("waitpid", "pid \(pid)") { waitpid(pid, &status, 0) }
        return ProcessStatus(waitStatus: status)
    }
}

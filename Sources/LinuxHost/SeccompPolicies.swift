import CProcvisor
import Glibc

/// Every seccomp policy Procvisor installs, in one place. Each rule says why it is there.
public enum SeccompPolicies {
    static let own = UInt64(SeccompPolicy.ownPidPlaceholder)
    static let cloneThread = UInt64(CLONE_THREAD)
    static let afUnix = UInt64(AF_UNIX)

    /// Namespace flags of clone(2): creating any of them escapes the confinement model.
    static let namespaceFlags: [(String, Int32)] = [
        ("CLONE_NEWNS", CLONE_NEWNS), ("CLONE_NEWUTS", CLONE_NEWUTS), ("CLONE_NEWIPC", CLONE_NEWIPC),
        ("CLONE_NEWUSER", CLONE_NEWUSER), ("CLONE_NEWPID", CLONE_NEWPID), ("CLONE_NEWNET", CLONE_NEWNET),
        ("CLONE_NEWCGROUP", CLONE_NEWCGROUP),
    ]
    static let namespaceMask = namespaceFlags.reduce(UInt64(0)) { $0 | UInt64($1.1) }

    /// The bounding filter of a guest, installed by the supervisor between fork and exec: default
    /// trap; what the dynamic loader needs inside the read-only jail, plus everything the guest
    /// allow-list grants (so DomainRuntime's own filter only ever narrows it). No socket,
    /// socketpair, fork, exec after the first, io_uring, ptrace or signal to another process is
    /// possible, whatever the kernel binary does before or instead of `Domain.start()`.
    public static let guestBound = SeccompPolicy(name: "guest-bound", defaultAction: .trap, rules: loaderRules + guestRules)

    /// The bounding filter of a driver domain (`driver_domain = 1` in its config, never the
    /// domain's say): the guest bound plus positioned I/O, syncing, hole punching and io_uring on
    /// the descriptors the supervisor hands it.
    public static let driverDomainBound = SeccompPolicy(name: "driver-domain-bound", defaultAction: .trap,
                                                        rules: loaderRules + guestRules + driverRules.map { rule in
        guard rule.syscall == "io_uring_setup" else { return rule }
        // A ring the domain made itself could open files and sockets: the supervisor makes it,
        // disabled and restricted to the backends' operations on registered files, and installs
        // it as the call's result (see Supervisor.ioRingSetup). Without a listener: ENOSYS.
        return SeccompRule("io_uring_setup", .notify, why: "rings are made by the supervisor, restricted, and handed back as the call's result")
    })

    /// The bound for a domain of this kind.
    public static func bound(driverDomain: Bool) -> SeccompPolicy { driverDomain ? driverDomainBound : guestBound }

    /// Engaged by DomainRuntime before any guest code runs: default trap; only what a guest needs
    /// to compute, allocate memory, run vCPU threads and talk to the supervisor over the
    /// descriptors it inherited. No open, no socket, no exec, no fork.
    public static let guest = SeccompPolicy(name: "guest", defaultAction: .trap, rules: guestRules)

    /// Engaged by driver domains (blkback, netback): the guest's rules plus the driver rules.
    /// Still no open, no socket, no exec, no fork.
    public static let driverDomain = SeccompPolicy(name: "driver-domain", defaultAction: .trap, rules: guestRules + driverRules)

    /// What DomainRuntime engages for a domain of this kind.
    public static func allowList(driverDomain: Bool) -> SeccompPolicy { driverDomain ? self.driverDomain : guest }

    // open(2)/openat(2) flags that would write, create or truncate (O_ACCMODE, O_CREAT, O_TRUNC,
    // O_APPEND, __O_TMPFILE): the loader opens read-only, and the jail is read-only anyway.
    static let writingOpenFlags: UInt64 = 0o3 | 0o100 | 0o1000 | 0o2000 | 0o20000000

    /// The loader and the C/Swift runtimes before `main` (and before `Domain.start()`): reading
    /// the program's own files inside the jail. Nothing here writes, creates or reaches out.
    static let loaderRules: [SeccompRule] = [
        SeccompRule("execve", .allow, why: "the launcher's own exec of the kernel; the jail holds nothing else to run"),
        SeccompRule("openat", .allow, [.arg(2, .maskedEqual(mask: writingOpenFlags, value: 0))],
                    why: "the loader opens libraries, read-only, inside the read-only jail"),
        SeccompRule("open", .allow, [.arg(1, .maskedEqual(mask: writingOpenFlags, value: 0))],
                    why: "as openat, for programs that use the old call"),
        SeccompRule("pread64", .allow, why: "the loader reads ELF headers at offsets"),
        SeccompRule("newfstatat", .allow, why: "the loader probes library directories (the jail's only)"),
        SeccompRule("stat", .allow, why: "as newfstatat"),
        SeccompRule("lstat", .allow, why: "as newfstatat"),
        SeccompRule("statx", .allow, why: "as newfstatat"),
        SeccompRule("access", .allow, why: "the loader checks /etc/ld.so.preload"),
        SeccompRule("faccessat", .allow, why: "as access"),
        SeccompRule("faccessat2", .allow, why: "as access"),
        SeccompRule("readlink", .allow, why: "the loader reads /proc/self/exe for $ORIGIN (absent in the jail)"),
        SeccompRule("readlinkat", .allow, why: "as readlink"),
        SeccompRule("getcwd", .allow, why: "runtime start-up"),
        SeccompRule("arch_prctl", .allow, why: "the loader sets the thread pointer (ARCH_SET_FS)"),
        SeccompRule("getsockopt", .allow, why: "DomainRuntime checks fd 3 is its SOCK_SEQPACKET hypercall channel"),
        SeccompRule("seccomp", .allow, why: "DomainRuntime narrows this filter with its own; filters only ever add restrictions"),
        SeccompRule("prctl", .allow, [.arg(0, .equal(38))], why: "PR_SET_NO_NEW_PRIVS, set again by libseccomp when DomainRuntime engages"),
        SeccompRule("prctl", .allow, [.arg(0, .equal(21))], why: "PR_GET_SECCOMP (libseccomp probes the mode)"),
        SeccompRule("getuid", .allow, why: "identity queries by runtimes"),
        SeccompRule("geteuid", .allow, why: "identity queries by runtimes"),
        SeccompRule("getgid", .allow, why: "identity queries by runtimes"),
        SeccompRule("getegid", .allow, why: "identity queries by runtimes"),
        SeccompRule("getppid", .allow, why: "identity queries by runtimes (0 in the domain's pid namespace)"),
        SeccompRule("sysinfo", .allow, why: "glibc sizes caches from it"),
    ]

    /// Driver domains (blkback, netback) add to the guest's rules.
    static let driverRules: [SeccompRule] = [
        SeccompRule("pread64", .allow, why: "reading a disk image at an offset"),
        SeccompRule("pwrite64", .allow, why: "writing a disk image at an offset"),
        SeccompRule("preadv", .allow, why: "reading into several grant pages at once (thread-pool fallback)"),
        SeccompRule("pwritev", .allow, why: "writing from several grant pages at once (thread-pool fallback)"),
        SeccompRule("preadv2", .allow, why: "glibc may route preadv through preadv2"),
        SeccompRule("pwritev2", .allow, why: "glibc may route pwritev through pwritev2"),
        SeccompRule("fdatasync", .allow, why: "BLKIF_OP_FLUSH_DISKCACHE"),
        SeccompRule("fsync", .allow, why: "BLKIF_OP_WRITE_BARRIER"),
        SeccompRule("fallocate", .allow, why: "BLKIF_OP_DISCARD punches holes"),
        SeccompRule("io_uring_setup", .allow, why: "the I/O engine; the bound hands the call to the supervisor, which makes the ring"),
        SeccompRule("io_uring_enter", .allow, why: "the I/O engine"),
        SeccompRule("io_uring_register", .allow, why: "registered files, buffers and the completion eventfd"),
        SeccompRule("prctl", .allow, [.arg(0, .equal(15))], why: "naming the I/O pool's threads (PR_SET_NAME = 15 only)"),
    ]

    // fcntl(2) commands a domain may use on its descriptors: flags, close-on-exec, duplication.
    // Never F_SETOWN(_EX), F_SETSIG, F_SETLEASE, F_NOTIFY (signals aimed at other processes), and
    // F_SETFL never with O_ASYNC (SIGIO to the owner).
    static let fcntlRules: [SeccompRule] = [
        SeccompRule("fcntl", .allow, [.arg(1, .equal(0))], why: "F_DUPFD"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(1030))], why: "F_DUPFD_CLOEXEC"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(1))], why: "F_GETFD"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(2))], why: "F_SETFD (close-on-exec)"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(3))], why: "F_GETFL"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(4)), .arg(2, .maskedEqual(mask: UInt64(O_ASYNC), value: 0))],
                    why: "F_SETFL (non-blocking), never O_ASYNC: SIGIO would go to the descriptor's owner"),
        SeccompRule("fcntl", .allow, [.arg(1, .equal(1034))], why: "F_GET_SEALS: how a shared page is sealed"),
    ]

    static let guestRules: [SeccompRule] = fcntlRules + [
        // I/O on inherited descriptors (console pipes, hypercall and event sockets).
        SeccompRule("read", .allow, why: "console input and inherited descriptors"),
        SeccompRule("write", .allow, why: "console output"),
        SeccompRule("readv", .allow, why: "libc stdio"),
        SeccompRule("writev", .allow, why: "libc stdio"),
        SeccompRule("close", .allow, why: "dropping descriptors it holds"),
        SeccompRule("sendmsg", .allow, why: "hypercalls (with SCM_RIGHTS)"),
        SeccompRule("recvmsg", .allow, why: "hypercall replies and events"),
        SeccompRule("sendto", .allow, why: "send(2) on the hypercall socket"),
        SeccompRule("recvfrom", .allow, why: "recv(2) on the hypercall socket"),
        SeccompRule("poll", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("ppoll", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("epoll_create1", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("epoll_ctl", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("epoll_wait", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("epoll_pwait", .allow, why: "waiting on inherited descriptors"),
        SeccompRule("eventfd2", .allow, why: "local wakeups between vCPU threads"),
        SeccompRule("lseek", .allow, why: "libc stdio probes seekability of stdout"),
        SeccompRule("ioctl", .allow, [.arg(1, .equal(UInt64(TCGETS)))], why: "isatty() on the console"),
        // Dirty-page tracking for live migration (WriteTracking.register): the domain registers its
        // RAM for userfaultfd write-protection in asynchronous mode. Why this is safe to hand a
        // hostile guest: userfaultfd became an exploit tool because a fault it handles can park a
        // kernel thread inside copy_from_user at a point the attacker chooses, widening any race
        // in the kernel at will. The descriptor admitted here is user-mode only (flags exactly
        // UFFD_USER_MODE_ONLY|O_CLOEXEC|O_NONBLOCK, any other value traps): for a fault raised in
        // kernel mode handle_userfault() returns VM_FAULT_SIGBUS and the system call gets EFAULT,
        // so no kernel path can be made to wait (the reason Linux grants such descriptors to
        // unprivileged processes even with vm.unprivileged_userfaultfd = 0). That holds for the
        // supervisor too: its process_vm_readv into the domain is a remote, kernel-mode access
        // and fails instead of waiting. The registration covers the caller's own address space
        // only; the events that reach further (UFFD_FEATURE_EVENT_FORK) need CAP_SYS_PTRACE,
        // which a domain lacks. Only UFFDIO_API and UFFDIO_REGISTER are admitted (no COPY,
        // ZEROPAGE, MOVE, WRITEPROTECT, CONTINUE, POISON): with them a domain can at worst stall
        // its own threads in user mode, which it can do with a futex anyway. The two request
        // numbers are userfaultfd's own ('\xAA' type); none of the descriptors a domain holds
        // (sockets, pipes, memfds, eventfds) gives them another meaning.
        SeccompRule("userfaultfd", .allow, [.arg(0, .equal(UInt64(WriteTracking.descriptorFlags)))],
                    why: "write tracking for live migration: a user-mode-only userfaultfd (UFFD_USER_MODE_ONLY|O_CLOEXEC|O_NONBLOCK exactly)"),
        SeccompRule("ioctl", .allow, [.arg(1, .equal(WriteTracking.apiRequest))], why: "UFFDIO_API: write tracking's feature negotiation"),
        SeccompRule("ioctl", .allow, [.arg(1, .equal(WriteTracking.registerRequest))],
                    why: "UFFDIO_REGISTER: write tracking registers the RAM for write-protection; no other userfaultfd ioctl"),
        SeccompRule("fstat", .allow, why: "libc stdio buffering decisions"),
        SeccompRule("newfstatat", .allow, [.arg(3, .maskedEqual(mask: UInt64(PV_AT_EMPTY_PATH), value: UInt64(PV_AT_EMPTY_PATH)))],
                    why: "fstat() as glibc implements it; AT_EMPTY_PATH only, so no path lookups"),
        // Memory.
        SeccompRule("mmap", .allow, why: "memory allocation and mapping granted pages"),
        SeccompRule("munmap", .allow, why: "memory allocation"),
        SeccompRule("mremap", .allow, why: "memory allocation"),
        SeccompRule("mprotect", .allow, why: "memory allocation, thread stack guards"),
        SeccompRule("madvise", .allow, why: "returning memory (balloon) and allocator hints"),
        SeccompRule("brk", .allow, why: "malloc"),
        SeccompRule("membarrier", .allow, why: "used by the Swift runtime and allocators"),
        // Threads (vCPUs) and synchronisation.
        SeccompRule("clone", .allow, [.arg(0, .maskedEqual(mask: cloneThread | namespaceMask, value: cloneThread))],
                    why: "new threads only (CLONE_THREAD, no namespace); fork is refused"),
        SeccompRule("clone3", .errno(ENOSYS), why: "flags are in memory seccomp cannot read; glibc falls back to clone"),
        SeccompRule("futex", .allow, why: "locks, condition variables, event channels"),
        SeccompRule("futex_waitv", .allow, why: "waiting on many event channels at once"),
        SeccompRule("restart_syscall", .allow, why: "the kernel resumes a timed wait interrupted by xl pause (SIGSTOP/SIGCONT)"),
        SeccompRule("set_robust_list", .allow, why: "thread start-up"),
        SeccompRule("get_robust_list", .allow, why: "thread start-up"),
        SeccompRule("set_tid_address", .allow, why: "thread start-up"),
        SeccompRule("rseq", .allow, why: "thread start-up (glibc registers restartable sequences)"),
        SeccompRule("sched_yield", .allow, why: "SCHEDOP_yield and spin loops"),
        SeccompRule("sched_getaffinity", .allow, why: "glibc counts CPUs this way"),
        SeccompRule("gettid", .allow, why: "thread identity"),
        SeccompRule("getpid", .allow, why: "process identity (raise, abort)"),
        SeccompRule("tgkill", .allow, [.arg(0, .equal(own))], why: "raise/abort/pthread_kill on its own threads only"),
        SeccompRule("kill", .allow, [.arg(0, .equal(own))], why: "kill(getpid()) only: never another process"),
        // Signals.
        SeccompRule("rt_sigaction", .allow, why: "installing handlers"),
        SeccompRule("rt_sigprocmask", .allow, why: "masking signals in threads"),
        SeccompRule("rt_sigreturn", .allow, why: "returning from handlers"),
        SeccompRule("sigaltstack", .allow, why: "alternate signal stacks (Swift runtime, SIGSYS reporter)"),
        // Time.
        SeccompRule("clock_gettime", .allow, why: "time (usually vDSO, not a syscall)"),
        SeccompRule("clock_getres", .allow, why: "time"),
        SeccompRule("gettimeofday", .allow, why: "time"),
        SeccompRule("clock_nanosleep", .allow, why: "sleeping"),
        SeccompRule("nanosleep", .allow, why: "sleeping"),
        // Process.
        SeccompRule("getrandom", .allow, why: "randomness (hash seeds)"),
        SeccompRule("uname", .allow, why: "libc version checks"),
        SeccompRule("prlimit64", .allow, [.arg(2, .equal(0))], why: "reading its own limits only (new_limit == NULL)"),
        SeccompRule("getrlimit", .allow, why: "reading its own limits"),
        SeccompRule("exit", .allow, why: "thread exit"),
        SeccompRule("exit_group", .allow, why: "process exit"),
    ]
}

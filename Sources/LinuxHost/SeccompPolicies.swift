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

    /// Installed by the supervisor between fork and exec of every domain: default allow, and a trap
    /// for everything that reaches outside the process (debugging others, the kernel's global
    /// state, namespaces, non-local networking, signals to others).
    public static let baseline = SeccompPolicy(name: "baseline", defaultAction: .allow, rules: [
        SeccompRule("ptrace", .trap, why: "inspecting or controlling other processes"),
        SeccompRule("process_vm_readv", .trap, why: "reading another process's memory"),
        SeccompRule("process_vm_writev", .trap, why: "writing another process's memory"),
        SeccompRule("pidfd_getfd", .trap, why: "stealing another process's descriptors"),
        SeccompRule("kcmp", .trap, why: "probing other processes' kernel objects"),
        SeccompRule("mount", .trap, why: "changing the host's mount table"),
        SeccompRule("umount2", .trap, why: "changing the host's mount table"),
        SeccompRule("pivot_root", .trap, why: "changing the root of the mount namespace"),
        SeccompRule("chroot", .trap, why: "changing the root directory"),
        SeccompRule("fsopen", .trap, why: "new mount API"),
        SeccompRule("fsmount", .trap, why: "new mount API"),
        SeccompRule("fsconfig", .trap, why: "new mount API"),
        SeccompRule("fspick", .trap, why: "new mount API"),
        SeccompRule("move_mount", .trap, why: "new mount API"),
        SeccompRule("open_tree", .trap, why: "new mount API"),
        SeccompRule("mount_setattr", .trap, why: "new mount API"),
        SeccompRule("bpf", .trap, why: "loading programs into the kernel"),
        SeccompRule("kexec_load", .trap, why: "replacing the running kernel"),
        SeccompRule("kexec_file_load", .trap, why: "replacing the running kernel"),
        SeccompRule("init_module", .trap, why: "loading kernel modules"),
        SeccompRule("finit_module", .trap, why: "loading kernel modules"),
        SeccompRule("delete_module", .trap, why: "unloading kernel modules"),
        SeccompRule("unshare", .trap, why: "creating namespaces"),
        SeccompRule("setns", .trap, why: "joining other namespaces"),
        SeccompRule("clone3", .errno(ENOSYS), why: "flags live in memory seccomp cannot read; libc falls back to clone"),
        SeccompRule("perf_event_open", .trap, why: "observing other processes and the kernel"),
        SeccompRule("add_key", .trap, why: "the kernel keyrings are shared with the host"),
        SeccompRule("request_key", .trap, why: "the kernel keyrings are shared with the host"),
        SeccompRule("keyctl", .trap, why: "the kernel keyrings are shared with the host"),
        SeccompRule("socket", .trap, [.arg(0, .notEqual(afUnix))], why: "only AF_UNIX sockets: domains have no network but their vifs"),
        SeccompRule("socketpair", .trap, [.arg(0, .notEqual(afUnix))], why: "only AF_UNIX sockets"),
        SeccompRule("kill", .trap, [.arg(0, .notEqual(own))], why: "signals only to itself"),
        SeccompRule("tgkill", .trap, [.arg(0, .notEqual(own))], why: "signals only to its own threads"),
        SeccompRule("tkill", .trap, why: "obsolete; cannot be restricted to its own threads"),
        SeccompRule("rt_sigqueueinfo", .trap, [.arg(0, .notEqual(own))], why: "signals only to itself"),
        SeccompRule("rt_tgsigqueueinfo", .trap, [.arg(0, .notEqual(own))], why: "signals only to its own threads"),
        SeccompRule("pidfd_send_signal", .trap, why: "signals to other processes"),
        SeccompRule("reboot", .trap, why: "the host's power state"),
        SeccompRule("swapon", .trap, why: "the host's swap"),
        SeccompRule("swapoff", .trap, why: "the host's swap"),
        SeccompRule("settimeofday", .trap, why: "the host's clock"),
        SeccompRule("clock_settime", .trap, why: "the host's clock"),
        SeccompRule("clock_adjtime", .trap, why: "the host's clock"),
        SeccompRule("adjtimex", .trap, why: "the host's clock"),
        SeccompRule("sethostname", .trap, why: "the host's identity"),
        SeccompRule("setdomainname", .trap, why: "the host's identity"),
        SeccompRule("acct", .trap, why: "host process accounting"),
        SeccompRule("quotactl", .trap, why: "host file system quotas"),
        SeccompRule("open_by_handle_at", .trap, why: "opening files outside any path check"),
        SeccompRule("iopl", .trap, why: "raw I/O port access"),
        SeccompRule("ioperm", .trap, why: "raw I/O port access"),
        SeccompRule("userfaultfd", .trap, why: "a classic kernel-exploit primitive; domains have no use for it"),
    ] + namespaceFlags.map { flag in
        SeccompRule("clone", .trap, [.arg(0, .maskedEqual(mask: UInt64(flag.1), value: UInt64(flag.1)))],
                    why: "creating a namespace (\(flag.0))")
    })

    /// Engaged by DomainRuntime before any guest code runs: default trap; only what a guest needs
    /// to compute, allocate memory, run vCPU threads and talk to the supervisor over the
    /// descriptors it inherited. No open, no socket, no exec, no fork.
    public static let guest = SeccompPolicy(name: "guest", defaultAction: .trap, rules: guestRules)

    /// Engaged by driver domains (blkback, netback): the guest's rules plus positioned and
    /// vectored I/O, syncing, hole punching and io_uring on the descriptors the supervisor hands
    /// them (disk images, taps). Still no open, no socket, no exec, no fork.
    public static let driverDomain = SeccompPolicy(name: "driver-domain", defaultAction: .trap, rules: guestRules + [
        SeccompRule("pread64", .allow, why: "reading a disk image at an offset"),
        SeccompRule("pwrite64", .allow, why: "writing a disk image at an offset"),
        SeccompRule("preadv", .allow, why: "reading into several grant pages at once (thread-pool fallback)"),
        SeccompRule("pwritev", .allow, why: "writing from several grant pages at once (thread-pool fallback)"),
        SeccompRule("preadv2", .allow, why: "glibc may route preadv through preadv2"),
        SeccompRule("pwritev2", .allow, why: "glibc may route pwritev through pwritev2"),
        SeccompRule("fdatasync", .allow, why: "BLKIF_OP_FLUSH_DISKCACHE"),
        SeccompRule("fsync", .allow, why: "BLKIF_OP_WRITE_BARRIER"),
        SeccompRule("fallocate", .allow, why: "BLKIF_OP_DISCARD punches holes"),
        SeccompRule("io_uring_setup", .allow, why: "the I/O engine"),
        SeccompRule("io_uring_enter", .allow, why: "the I/O engine"),
        SeccompRule("io_uring_register", .allow, why: "registered files, buffers and the completion eventfd"),
        SeccompRule("prctl", .allow, [.arg(0, .equal(15))], why: "naming the I/O pool's threads (PR_SET_NAME = 15 only)"),
    ])

    static let guestRules: [SeccompRule] = [
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
        SeccompRule("fcntl", .allow, why: "descriptor flags (non-blocking, close-on-exec)"),
        SeccompRule("ioctl", .allow, [.arg(1, .equal(UInt64(TCGETS)))], why: "isatty() on the console; no other ioctl"),
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
        SeccompRule("clone", .allow, [.arg(0, .maskedEqual(mask: cloneThread, value: cloneThread))],
                    why: "new threads only (CLONE_THREAD); fork is refused"),
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
        SeccompRule("tgkill", .allow, why: "raise/abort/pthread_kill on itself; baseline restricts the target"),
        SeccompRule("kill", .allow, why: "kill(getpid()); baseline restricts the target"),
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

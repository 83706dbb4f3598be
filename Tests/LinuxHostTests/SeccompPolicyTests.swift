import Glibc
import LinuxHost
import Testing

/// The policies themselves, outside any supervisor: the bounding filters installed exactly as the
/// launcher installs them, and the guest allow-list loaded by a process on itself.
@Suite struct SeccompPolicyTests {
    static let testguest: String = {
        let exe = Process.executablePath() ?? CommandLine.arguments[0]
        var dir = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)])
        while !dir.isEmpty, !FileIO.exists(dir + "/testguest") {
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
        return dir + "/testguest"
    }()

    static var cattack: String { String(testguest.dropLast("testguest".count)) + "cattack" }

    /// Runs `program` under a bounding filter installed exactly as the launcher installs it
    /// (without the jail's namespaces, so it runs anywhere) and returns how it ended.
    func underBound(_ args: [String], driverDomain: Bool = false, program: String = SeccompPolicyTests.testguest) throws -> ProcessStatus {
        let bpf = try SeccompPolicies.bound(driverDomain: driverDomain).compile().bpf()
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        let pid = try Spawner.spawn(path: program, argv: [program] + args, env: ["SWIFT_BACKTRACE=enable=no"],
                                    fds: [(null, 0), (null, 1), (null, 2)],
                                    limits: [.init(Int32(RLIMIT_CORE.rawValue), 0, 0)], filter: bpf)
        return try ChildReaper.wait(pid)
    }

    @Test(arguments: ["ptrace", "process_vm_readv", "mount", "bpf", "kexec_load", "init_module", "unshare", "setns",
                      "clone-newns", "perf_event_open", "keyctl", "socket-inet", "socket-unix", "kill-other", "reboot", "fork",
                      "open-write", "ftruncate", "fcntl-setown", "fcntl-setsig", "fcntl-async", "io_uring_setup"])
    func boundTrapsWhatAGuestMayNeverDo(_ call: String) throws {
        #expect(try underBound(["--raw", call]) == .signaled(SIGSYS))
    }

    @Test(arguments: ["kill-self", "openat", "fcntl-nonblock"])
    func boundAllowsWhatTheLoaderAndRuntimeNeed(_ call: String) throws {
        #expect(try underBound(["--raw", call]) == .exited(0))
    }

    @Test func driverBoundAllowsTheDiskCallsButNoSockets() throws {
        #expect(try underBound(["--raw", "pwrite"], driverDomain: true) == .exited(0))
        #expect(try underBound(["--raw", "pwrite"]) == .signaled(SIGSYS))
        #expect(try underBound(["--raw", "socket-inet"], driverDomain: true) == .signaled(SIGSYS))
        #expect(try underBound(["--raw", "fork"], driverDomain: true) == .signaled(SIGSYS))
    }

    /// Calls through another ABI kill the whole process at once (not one thread: a half-dead
    /// domain would linger with live threads).
    @Test(arguments: ["int80", "x32"])
    func otherABIsKillTheProcess(_ mode: String) throws {
        #expect(try underBound(["mode=\(mode)"], program: Self.cattack) == .signaled(SIGSYS))
    }

    /// A plain C program (no DomainRuntime) starts under the bound: the loader has what it needs.
    @Test func aPlainCProgramLoadsUnderTheBound() throws {
        #expect(try underBound(["mode=probe"], program: Self.cattack) == .exited(0))
    }

    @Test func guestPolicyAllowsWhatAGuestNeeds() throws {
        #expect(try underBound(["--guest-policy", "selftest"]) == .exited(0))
    }

    @Test(arguments: ["openat", "socket-unix", "execve", "fork", "ptrace", "socket-inet"])
    func guestPolicyTrapsTheRest(_ call: String) throws {
        #expect(try underBound(["--guest-policy", call]) == .signaled(SIGSYS))
    }

    /// DomainRuntime's allow-lists only ever narrow the bound: every call they allow, the bound
    /// allows too (the engaged filter cannot hand a guest what the supervisor did not).
    @Test(arguments: [false, true])
    func allowListsAreWithinTheirBound(_ driver: Bool) {
        // `.notify` in the bound: the supervisor answers the call (io_uring_setup makes a restricted ring).
        let bound = Set(SeccompPolicies.bound(driverDomain: driver).rules.filter { $0.action == .allow || $0.action == .notify }.map(\.syscall))
        for rule in SeccompPolicies.allowList(driverDomain: driver).rules where rule.action == .allow {
            #expect(bound.contains(rule.syscall), "\(rule.syscall) is allowed by the allow-list but not by the bound")
        }
    }

    @Test func everyRuleSaysWhyAndNamesAKnownCall() {
        for policy in [SeccompPolicies.guestBound, SeccompPolicies.driverDomainBound, SeccompPolicies.guest, SeccompPolicies.driverDomain] {
            for rule in policy.rules {
                #expect(!rule.why.isEmpty, "\(policy.name): \(rule.syscall) has no reason")
                #expect(Syscalls.number(rule.syscall) != nil, "\(policy.name): unknown call \(rule.syscall)")
            }
        }
        let never: Set<String> = ["socket", "socketpair", "fork", "vfork", "ptrace", "bind", "connect", "listen", "accept", "accept4",
                                  "pidfd_send_signal", "tkill", "unshare", "setns", "mount", "pivot_root", "chroot", "setuid", "setresuid"]
        for policy in [SeccompPolicies.guestBound, SeccompPolicies.driverDomainBound] {
            #expect(!policy.rules.contains { never.contains($0.syscall) && $0.action == .allow }, "\(policy.name)")
        }
        #expect(!SeccompPolicies.guestBound.rules.contains { $0.syscall.hasPrefix("io_uring") })
        #expect(!SeccompPolicies.guest.rules.contains { ["open", "openat", "execve", "fork", "vfork", "socket"].contains($0.syscall) })
    }

    @Test func syscallNamesRoundTrip() {
        #expect(Syscalls.name(Syscalls.number("openat")!) == "openat")
        #expect(Syscalls.name(100_000) == nil)
    }

    @Test func spawnReportsExecFailuresWithTheStep() throws {
        #expect(throws: Spawner.SpawnError.self) {
            _ = try Spawner.spawn(path: "/nonexistent", argv: ["x"], env: [], fds: [], limits: [], filter: nil)
        }
        do {
            _ = try Spawner.spawn(path: "/nonexistent", argv: ["x"], env: [], fds: [], limits: [], filter: nil)
        } catch let e as Spawner.SpawnError {
            #expect(e.step == "execve")
            #expect(e.errno == .noSuchFile)
        }
    }
}

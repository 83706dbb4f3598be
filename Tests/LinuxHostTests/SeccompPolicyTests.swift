import Glibc
import LinuxHost
import Testing

/// The policies themselves, outside any supervisor: the baseline filter installed exactly as the
/// launcher installs it, and the guest allow-list loaded by a process on itself.
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

    /// Runs testguest under the baseline filter (as a domain is launched) and returns how it ended.
    func underBaseline(_ args: [String]) throws -> ProcessStatus {
        let bpf = try SeccompPolicies.baseline.compile().bpf()
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        let pid = try Spawner.spawn(path: Self.testguest, argv: [Self.testguest] + args, env: ["SWIFT_BACKTRACE=enable=no"],
                                    fds: [(null, 0), (null, 1), (null, 2)],
                                    limits: [.init(Int32(RLIMIT_CORE.rawValue), 0, 0)], filter: bpf)
        return try ChildReaper.wait(pid)
    }

    @Test(arguments: ["ptrace", "process_vm_readv", "mount", "bpf", "kexec_load", "init_module", "unshare", "setns",
                      "clone-newns", "perf_event_open", "keyctl", "socket-inet", "kill-other", "reboot"])
    func baselineTrapsWhatReachesOutside(_ call: String) throws {
        #expect(try underBaseline(["--raw", call]) == .signaled(SIGSYS))
    }

    @Test(arguments: ["socket-unix", "kill-self", "openat", "fork"])
    func baselineAllowsLocalCalls(_ call: String) throws {
        #expect(try underBaseline(["--raw", call]) == .exited(0))
    }

    @Test func guestPolicyAllowsWhatAGuestNeeds() throws {
        #expect(try underBaseline(["--guest-policy", "selftest"]) == .exited(0))
    }

    @Test(arguments: ["openat", "socket-unix", "execve", "fork", "ptrace", "socket-inet"])
    func guestPolicyTrapsTheRest(_ call: String) throws {
        #expect(try underBaseline(["--guest-policy", call]) == .signaled(SIGSYS))
    }

    @Test func everyRuleSaysWhyAndNamesAKnownCall() {
        for policy in [SeccompPolicies.baseline, SeccompPolicies.guest] {
            for rule in policy.rules {
                #expect(!rule.why.isEmpty, "\(policy.name): \(rule.syscall) has no reason")
                #expect(Syscalls.number(rule.syscall) != nil, "\(policy.name): unknown call \(rule.syscall)")
            }
        }
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

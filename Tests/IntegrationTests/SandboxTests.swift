import Foundation
import Glibc
import LinuxHost
import Testing

/// Every forbidden call class, issued by a real domain after it engaged: the domain is crashed,
/// `xl dmesg` names the call, on_crash applies and the supervisor keeps serving.
@Suite struct SandboxTests {
    /// (testguest call, the name the report must give)
    static let guestAllowListViolations: [(String, String)] = [
        ("openat", "openat"), ("socket-unix", "socket"), ("execve", "execve"), ("fork", "fork"),
    ]
    static let boundViolations: [(String, String)] = [
        ("ptrace", "ptrace"), ("process_vm_readv", "process_vm_readv"), ("mount", "mount"), ("bpf", "bpf"),
        ("kexec_load", "kexec_load"), ("init_module", "init_module"), ("unshare", "unshare"), ("setns", "setns"),
        ("clone-newns", "clone"), ("perf_event_open", "perf_event_open"), ("keyctl", "keyctl"),
        ("socket-inet", "socket"), ("kill-other", "kill"), ("reboot", "reboot"),
    ]

    func expectCrash(call: String, named name: String) throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let dom = "bad-" + call.replacingOccurrences(of: "_", with: "-")
        try h.create(dom, mode: "forbidden", "extra = \"mode=forbidden call=\(call)\"\non_crash = \"preserve\"\n")
        #expect(eventually { (try? h.dmesg())?.contains("dom1 (\(dom)): forbidden system call \(name)\n") == true },
                "dmesg: \((try? h.dmesg()) ?? "")")
        #expect(eventually { (try? h.list())?.contains { $0.key == dom && $0.value.state == "---sc-" } == true })
        #expect(!h.consoleLog(dom).contains("sandbox failed"))
        #expect(try h.xl("info", "xen_major").stdout == "4\n")
    }

    @Test(arguments: guestAllowListViolations)
    func guestAllowListTraps(_ call: String, _ name: String) throws {
        try expectCrash(call: call, named: name)
    }

    @Test(arguments: boundViolations)
    func theBoundTraps(_ call: String, _ name: String) throws {
        try expectCrash(call: call, named: name)
    }

    @Test func theExampleEvilGuestIsCrashedAndNamed() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let cfg = h.config("evil", kernel: Products.path("evil"), "on_crash = \"destroy\"\n")
        #expect(try h.xl("create", cfg).ok)
        #expect(eventually { (try? h.dmesg())?.contains("dom1 (evil): forbidden system call openat") == true })
        #expect(eventually { (try? h.list())?["evil"] == nil })
    }

    @Test func domainsRunWithTwoSeccompFiltersAndNoNewPrivs() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("confined", mode: "run")
        let pid = try #require(h.children.first)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        #expect(status.contains("Seccomp:\t2"))
        #expect(status.contains("Seccomp_filters:\t2"))
        #expect(status.contains("NoNewPrivs:\t1"))
        // Only the bootstrap descriptors are open: stdin, stdout, stderr, hypercall, events, the
        // domain's own RAM memfd and the eventfd that kicks the XenStore server (the event pages,
        // XenStore page, P2M and M2P are mapped, their fds closed), and the userfaultfd that
        // write-protects its RAM for live migration (docs/migration-dirty-tracking.md).
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap(Int.init).sorted()
        #expect(fds.count == 8 && Array(fds.prefix(5)) == [0, 1, 2, 3, 4], "\(fds)")
        let extra = try fds.dropFirst(5).map { try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }.sorted()
        #expect(extra == ["/memfd:pv-ram-1 (deleted)", "anon_inode:[eventfd]", "anon_inode:[userfaultfd]"], "\(extra)")
        // The P2M and M2P are mapped read-only.
        let maps = try FileIO.readString("/proc/\(pid)/maps").split(separator: "\n")
        for table in ["pv-p2m-1", "pv-m2p"] {
            let line = try #require(maps.first { $0.contains("/memfd:\(table) ") })
            #expect(line.split(separator: " ")[1].hasPrefix("r-"), "\(table) is mapped \(line)")
        }
    }
}

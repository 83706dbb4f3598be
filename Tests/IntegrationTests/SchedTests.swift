import Foundation
import Glibc
import LinuxHost
import Testing

/// `cpu_weight`, `cap`, `xl sched-credit` and `xl sched-credit2` through a real supervisor and
/// real domains: what xl prints, what it refuses, and what the kernel then enforces.
@Suite struct SchedTests {
    /// The cpu cgroup the supervisor made for `domid`. The tests that set weights and caps run
    /// where the host has a writable cpu controller; elsewhere `weightAndCapAreRefusedWithoutACPUController`
    /// checks the refusal.
    func cgroup(_ h: SupervisorHarness, _ domid: Int) -> CPUCgroup? {
        CPUCgroup(existing: "procvisor-\(h.pid)-dom\(domid)")
    }

    static var hostHasCPUController: Bool {
        guard let (parent, _) = CPUCgroup.current() else { return false }
        let probe = parent + "/procvisor-probe-\(getpid())"
        guard mkdir(probe, 0o755) == 0 else { return false }
        defer { rmdir(probe) }
        // On v2 the controller must be enabled for the children too: then the file is there.
        return FileIO.exists(probe + "/cpu.shares") || FileIO.exists(probe + "/cpu.weight")
    }

    /// Rows of `xl sched-credit*` after its header: name → (id, weight, cap).
    func rows(_ out: String) -> [String: (id: Int, weight: Int, cap: Int)] {
        var r: [String: (id: Int, weight: Int, cap: Int)] = [:]
        for line in out.split(separator: "\n").dropFirst() where !line.hasPrefix("Name ") && !line.hasPrefix("Cpupool ") {
            let f = line.split(separator: " ")
            guard f.count == 4, let id = Int(f[1]), let w = Int(f[2]), let c = Int(f[3]) else { continue }
            r[String(f[0])] = (id, w, c)
        }
        return r
    }

    @Test(.enabled(if: SchedTests.hostHasCPUController)) func configWeightAndCapAreShownAndEnforced() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("heavy", mode: "run", "cpu_weight = 512\ncap = 50\n")
        try h.create("plain", mode: "run")
        let list = try h.xl("sched-credit2")
        #expect(list.ok, "\(list.stderr)")
        let lines = list.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "Cpupool Pool-0: ratelimit=1000us")
        #expect(lines.dropFirst().first == "Name                                ID Weight  Cap")
        #expect(lines.contains("Domain-0                             0    256    0"), "\(list.stdout)")
        let r = rows(list.stdout)
        #expect(r["heavy"]?.weight == 512 && r["heavy"]?.cap == 50, "\(list.stdout)")
        #expect(r["plain"]?.weight == 256 && r["plain"]?.cap == 0, "\(list.stdout)")
        #expect(try h.xl("info").stdout.contains("xen_scheduler          : credit2"))
        guard Self.hostHasCPUController else { return }
        let heavy = try #require(try h.list()["heavy"]?.domid)
        let plain = try #require(try h.list()["plain"]?.domid)
        let cg = try #require(cgroup(h, heavy))
        let expected = cg.version == .v1 ? 2048 : 200
        #expect(cg.enforced.weight == expected && cg.enforced.quotaMicroseconds == 50_000, "\(cg.enforced)")
        #expect(cgroup(h, plain)?.enforced.quotaMicroseconds == nil)
        // Every task of the domain is in it.
        // Every task of the domain is in it (other tests' supervisors use the same uids: the
        // domain's process is found by its cgroup).
        #expect(!cg.processes.isEmpty && cg.processes.allSatisfy { ProcFS.processes(named: "testguest", uid: UInt32(100_000 + heavy)).contains($0) })
        _ = try h.xl("destroy", "heavy")
        #expect(eventually { cgroup(h, heavy) == nil }, "the domain's cpu cgroup must go with it")
    }

    @Test(.enabled(if: SchedTests.hostHasCPUController)) func sched_credit2SetsWhatTheKernelEnforces() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("tuned", mode: "run", "vcpus = 2\n")
        let domid = try #require(try h.list()["tuned"]?.domid)
        let set = try h.xl("sched-credit2", "-d", "tuned", "-w", "1024", "-c", "150")
        #expect(set.ok && set.stdout.isEmpty, "\(set.stdout)\(set.stderr)")
        let one = try h.xl("sched-credit2", "-d", "tuned")
        #expect(one.stdout == "Name                                ID Weight  Cap\n"
                + "tuned                             " + String(repeating: " ", count: 4 - String(domid).count) + "\(domid)   1024  150\n", "\(one.stdout)")
        // -w alone leaves the cap.
        #expect(try h.xl("sched-credit2", "-d", "tuned", "-w", "64").ok)
        #expect(rows(try h.xl("sched-credit2", "-d", "tuned").stdout)["tuned"].map { [$0.weight, $0.cap] } == [64, 150])
        // The domain had no weight or cap of its own: its cpu cgroup was made now, with the
        // domain's process moved in.
        let cg = try #require(cgroup(h, domid))
        #expect(!cg.processes.isEmpty, "the domain's process was not moved into its new cpu cgroup")
        do {
            #expect(cg.enforced.weight == (cg.version == .v1 ? 256 : 25) && cg.enforced.quotaMicroseconds == 150_000, "\(cg.enforced)")
            #expect(try h.xl("sched-credit2", "-d", "tuned", "-c", "0").ok)
            #expect(cg.enforced.quotaMicroseconds == nil, "cap 0 is no cap")
        }
        #expect(try h.dmesg().contains("credit2 weight 64, cap 150"))
    }

    @Test(.enabled(if: SchedTests.hostHasCPUController)) func badWeightsCapsAndDomainsAreRefusedAndNothingChanges() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("victim", mode: "run", "vcpus = 2\ncpu_weight = 300\n")
        for (args, message) in [
            (["-d", "victim", "-w", "0"], "Cpu weight out of range, valid values are within range from 1 to 65535"),
            (["-d", "victim", "-w", "65536"], "Cpu weight out of range, valid values are within range from 1 to 65535"),
            (["-d", "victim", "-c", "201"], "Cpu cap out of range, valid range is from 0 to 200 for specified number of vcpus"),
            (["-d", "victim", "-c", "-1"], "Cpu cap out of range"),
            (["-d", "victim", "-w", "heavy"], "xl: invalid weight 'heavy' (expected an integer)"),
            (["-d", "nosuch", "-w", "100"], "nosuch is an invalid domain identifier"),
            (["-d", "0", "-w", "100"], "Domain 0: the supervisor's own share is the host's to set"),
            (["-w", "100"], "Must specify a domain."),
            (["-p", "Pool-1"], "unknown cpupool 'Pool-1'"),
            (["-p", "Pool-0", "-d", "victim"], "Specifying a cpupool is not allowed with other options."),
            (["-s", "-r", "500"], "cannot be set here"),
        ] {
            let r = try h.xl(args: ["sched-credit2"] + args)
            #expect(!r.ok && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        #expect(rows(try h.xl("sched-credit2").stdout)["victim"].map { [$0.weight, $0.cap] } == [300, 0])
        // The other scheduler's command: nothing listed, nothing set (as xl on a credit2 host).
        let other = try h.xl("sched-credit")
        #expect(other.ok && other.stdout.isEmpty, "\(other.stdout)")
        let wrong = try h.xl("sched-credit", "-d", "victim", "-w", "10")
        #expect(!wrong.ok && wrong.stderr.contains("libxl_domain_sched_params_get returned credit2 not credit."), "\(wrong.stderr)")
        // Bad config values: the create fails naming the setting; nothing is left.
        for (extra, message) in [("cpu_weight = 0\n", "parameter 'cpu_weight' is 0 but must be between 1 and 65535"),
                                 ("cap = 101\n", "parameter 'cap' is 101 but must be between 0 and 100"),
                                 ("cpu_weight = \"lots\"\n", "cpu_weight")] {
            let r = try h.xl(args: ["create", "-q", h.config("bad", mode: "run", extra)])
            #expect(!r.ok && r.stderr.contains(message), "\(extra): \(r.stderr)")
        }
        #expect(try h.list()["bad"] == nil && h.list()["victim"] != nil)
    }

    @Test(.enabled(if: SchedTests.hostHasCPUController)) func theCreditSchedulerWhenTheHostRunsIt() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_SCHED": "credit"])
        defer { h.stop() }
        try h.create("c1", mode: "run")
        #expect(try h.xl("info").stdout.contains("xen_scheduler          : credit\n"))
        #expect(try h.xl("sched-credit", "-d", "c1", "-w", "128", "-c", "25").ok)
        let out = try h.xl("sched-credit").stdout
        #expect(out.hasPrefix("Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us\n"), "\(out)")
        #expect(rows(out)["c1"].map { [$0.weight, $0.cap] } == [128, 25])
        #expect(try h.xl("sched-credit", "-s").stdout == "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us\n")
        #expect(try h.xl("sched-credit2").stdout.isEmpty)
        let t = try h.xl("sched-credit", "-t", "10")
        #expect(!t.ok && t.stderr.contains("Must specify schedparam to set schedule parameter values."))
    }

    /// A guest spinning on its vCPU under cap 20: the kernel holds it near a fifth of a CPU
    /// (the bound here is loose: a busy machine only lowers what the guest gets).
    @Test(.enabled(if: SchedTests.hostHasCPUController)) func aSpinnerIsHeldToItsCap() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("spin", mode: "busy", "cap = 20\n")
        #expect(eventually { h.consoleLog("spin").contains("busy dom") })
        let domid = try #require(try h.list()["spin"]?.domid)
        let cg = try #require(cgroup(h, domid))
        let pid = try #require(cg.processes.first)
        let before = Int64(ProcFS.cpuTimeNs(of: pid))
        let start = Int64(MonotonicClock.nanoseconds())
        usleep(1_500_000)
        let used = Double(Int64(ProcFS.cpuTimeNs(of: pid)) - before) / Double(Int64(MonotonicClock.nanoseconds()) - start)
        #expect(used < 0.4, "a cap of 20 let the guest use \(Int(used * 100))% of a CPU")
        // Throttled, when it got as much as its cap (a loaded machine may give it less).
        if used >= 0.15 { #expect(cg.throttledPeriods > 0, "the cap never throttled the spinner") }
        // Lifting the cap lets it run (the other domains keep theirs: none is starved).
        #expect(try h.xl("sched-credit2", "-d", "spin", "-c", "0").ok)
        #expect(try h.xl("list").ok)
    }

    /// The weight and cap are the domain's: a save and restore keeps them.
    @Test(.enabled(if: SchedTests.hostHasCPUController)) func weightAndCapSurviveSaveAndRestore() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("keep", mode: "ram-counter")
        #expect(eventually { h.consoleLog("keep").contains("ram-counter") })
        #expect(try h.xl("sched-credit2", "-d", "keep", "-w", "700", "-c", "40").ok)
        let image = h.runDirectory + "/keep.save"
        let save = try h.xl("save", "keep", image)
        #expect(save.ok, "\(save.stderr)")
        let restore = try h.xl("restore", image)
        #expect(restore.ok, "\(restore.stderr)")
        #expect(rows(try h.xl("sched-credit2").stdout)["keep"].map { [$0.weight, $0.cap] } == [700, 40])
        if Self.hostHasCPUController, let domid = try h.list()["keep"]?.domid, let cg = cgroup(h, domid) {
            #expect(cg.enforced.quotaMicroseconds == 40_000)
        }
    }

    /// A host without a writable cpu controller cannot enforce a weight or a cap: such a config
    /// is refused, naming why, and plain domains still run.
    @Test(.enabled(if: !SchedTests.hostHasCPUController)) func weightAndCapAreRefusedWithoutACPUController() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let r = try h.xl(args: ["create", "-q", h.config("w", mode: "run", "cpu_weight = 512\n")])
        #expect(!r.ok && r.stderr.contains("cannot enforce cpu_weight/cap"), "\(r.stderr)")
        try h.create("plain", mode: "run")
        let set = try h.xl("sched-credit2", "-d", "plain", "-w", "512")
        #expect(!set.ok && set.stderr.contains("no cpu cgroup"), "\(set.stderr)")
    }

    /// `set_timer_op` timers arrive as VIRQ_TIMER after their deadline, never before, within a
    /// slack even a loaded machine keeps (the supervisor wakes on a timerfd at the deadline); one in
    /// the past fires at once, one absurdly far away does not fire and harms nothing.
    @Test func timersFireWithinTheirSlack() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("timed", mode: "timer-slack")
        #expect(eventually(timeout: 30) { h.consoleLog("timed").contains("timer slack ") }, "\(h.consoleLog("timed"))")
        let line = h.consoleLog("timed").split(separator: "\n").first { $0.hasPrefix("timer slack ") }.map(String.init) ?? ""
        var fields: [String: String] = [:]
        for word in line.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
        }
        #expect(fields["early"] == "0", "\(line)")
        // Loose: two wake-ups (the supervisor's, the guest's) on a machine the other tests load.
        #expect((Int(fields["worst_us"] ?? "") ?? .max) < 500_000, "\(line)")
        #expect(fields["past_fired"] == "true" && fields["far_fired"] == "false", "\(line)")
        #expect(try h.list()["timed"] != nil)
    }
}

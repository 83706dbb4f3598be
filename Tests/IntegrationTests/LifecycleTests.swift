import Foundation
import Glibc
import LinuxHost
import Testing

/// The domain lifecycle through a real supervisor, real `xl` and real domain processes.
@Suite struct LifecycleTests {
    @Test func helloRunsPrintsAndPowersOff() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("hello1", mode: "hello")
        #expect(eventually { h.consoleLog("hello1").contains("console write works") })
        let log = h.consoleLog("hello1")
        #expect(log.contains("hello from dom1 name=hello1 vcpus=1 cmdline=mode=hello"))
        // on_poweroff defaults to destroy: the domain leaves the table.
        #expect(eventually { (try? h.list())?["hello1"] == nil })
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("(XEN) dom1 (hello1): sandbox engaged, running"))
        #expect(dmesg.contains("(XEN) dom1 (hello1): shutdown, reason poweroff"))
    }

    @Test func listShowsXenLayoutAndStates() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("idle", mode: "run", "vcpus = 2\nmemory = 48\n")
        let r = try h.xl("list")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)")
        #expect(lines[1].hasPrefix("Domain-0                                     0 "))
        let row = String(lines[2])
        // %-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f
        #expect(row.count == 40 + 1 + 5 + 1 + 5 + 1 + 5 + 5 + 6 + 2 + 8)
        #expect(row.hasPrefix("idle" + String(repeating: " ", count: 36) + "     1    48     2     "))
        #expect(eventually { (try? h.list())?["idle"]?.state == "-b----" })
        // DOMAIN arguments are names or domids.
        #expect(try h.xl("list", "1").stdout.contains("idle"))
        #expect(try h.xl("list", "idle").stdout.split(separator: "\n").count == 2)
        #expect(try h.xl("domid", "idle").stdout == "1\n")
        #expect(try h.xl("domname", "1").stdout == "idle\n")
        let up = try h.xl("uptime", "idle").stdout.split(separator: "\n")
        #expect(up.first == "Name                                ID Uptime")
        #expect(up.last?.hasPrefix("idle                                 1  0:00:0") == true)
        // list -l is JSON with libxl's shape.
        let json = try JSONSerialization.jsonObject(with: Data(try h.xl("list", "-l").stdout.utf8)) as? [[String: Any]]
        let entry = try #require(json?.first)
        #expect(entry["domid"] as? Int == 1)
        let config = try #require(entry["config"] as? [String: Any])
        #expect((config["c_info"] as? [String: Any])?["name"] as? String == "idle")
        #expect((config["b_info"] as? [String: Any])?["max_memkb"] as? Int == 48 * 1024)
        // list -v adds the UUID.
        #expect(try h.xl("list", "-v").stdout.contains("Reason-Code"))
    }

    @Test func pauseStopsEveryVCPUAndUnpauseResumes() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("busy", mode: "busy")
        #expect(eventually { (try? h.list())?["busy"]?.state == "r-----" })
        #expect(try h.xl("pause", "busy").ok)
        #expect(try h.list()["busy"]?.state == "--p---")
        let t1 = try h.xl("list", "busy").stdout
        usleep(300_000)
        let t2 = try h.xl("list", "busy").stdout
        #expect(t1 == t2, "CPU time advanced while paused")
        #expect(try h.xl("unpause", "busy").ok)
        #expect(eventually { (try? h.list())?["busy"]?.state == "r-----" })
        #expect(try h.xl("destroy", "busy").ok)
        #expect(try h.list()["busy"] == nil)
    }

    @Test func shutdownWaitsForThePoweroff() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("svc", mode: "run")
        let r = try h.xl("shutdown", "-w", "svc")
        #expect(r.ok)
        #expect(r.stderr.contains("Shutting down domain 1"))
        #expect(r.stderr.contains("Domain 1 has been shut down, reason code 0"))
        #expect(try h.list()["svc"] == nil)
    }

    @Test func shutdownAllTakesEveryGuest() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("a1", mode: "run")
        try h.create("a2", mode: "run")
        let r = try h.xl("shutdown", "-a", "-w")
        #expect(r.ok)
        #expect(r.stderr.contains("All domains have been shut down"))
        #expect(try h.list().keys.sorted() == ["Domain-0"])
    }

    @Test func rebootStartsAFreshDomainWithANewDomid() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("rb", mode: "run", "on_reboot = \"restart\"\n")
        let before = try #require(try h.list()["rb"])
        let pidBefore = h.children
        let r = try h.xl("reboot", "-w", "rb")
        #expect(r.ok)
        #expect(r.stderr.contains("reason code 1"))
        #expect(eventually { (try? h.list())?["rb"].map { $0.domid != before.domid } == true })
        #expect(try h.list()["rb"]?.domid == before.domid + 1)
        #expect(h.children != pidBefore)
        #expect(try h.dmesg().contains("dom1 (rb): reboot: restarted as dom2"))
    }

    @Test func guestInitiatedRebootFollowsOnReboot() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("gr", mode: "reboot", "on_reboot = \"destroy\"\n")
        #expect(eventually { (try? h.list())?["gr"] == nil })
        #expect(try h.dmesg().contains("dom1 (gr): reboot: destroying the domain"))
    }

    /// `on_crash = "preserve"` keeps the domain as xl does: under its own name (only
    /// rename-restart renames), crashed, with the memory it held, until `xl destroy`; its name
    /// stays taken meanwhile.
    @Test func onCrashPreserveKeepsTheDomainUnderItsName() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("cp", mode: "crash", "on_crash = \"preserve\"\n")
        #expect(eventually { (try? h.list())?["cp"]?.state == "---sc-" })
        let name = "cp"
        #expect(try h.list()[name]?.mem == 16)
        let again = try h.xl("create", h.config("cp", mode: "run"))
        #expect(!again.ok && again.stderr.contains("domain name \"cp\" already exists (dom1)"), "\(again.stderr)")
        #expect(try h.xl("list", "-v", name).stdout.contains("       3 "))
        #expect(try h.xl("destroy", name).ok)
        #expect(try h.list()[name] == nil)
    }

    @Test func onCrashDestroyRemovesTheDomain() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("cd", mode: "segv", "on_crash = \"destroy\"\n")
        #expect(eventually { (try? h.list())?["cd"] == nil })
        #expect(try h.dmesg().contains("dom1 (cd): crashed: killed by SIGSEGV"))
    }

    @Test func onCrashRestartRestartsUntilItIsTooFast() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("cr", mode: "crash", "on_crash = \"restart\"\n")
        #expect(eventually { (try? h.dmesg())?.contains("restarting too fast") == true })
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("dom1 (cr): crash: restarted as dom2"))
        #expect(try h.list()["cr"] == nil)
    }

    @Test func renameRestartKeepsTheOldOneAndStartsTheName() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("rr", mode: "run", "on_reboot = \"rename-restart\"\n")
        #expect(try h.xl("reboot", "-w", "rr").ok)
        #expect(eventually { (try? h.list())?["rr"]?.domid == 2 })
        let list = try h.list()
        let old = try #require(list.first { $0.key.hasPrefix("rr-") })
        #expect(old.value.domid == 1)
        #expect(old.value.state == "---sr-")
    }

    /// A domain that crashes again within the minute would be renamed to a name its previous
    /// incarnation took: as libxl refuses that rename, it keeps its own name, stays crashed and
    /// is not restarted, so no two domains ever share a name. Preserved domains show the memory
    /// they held, not 0.
    @Test func renameRestartNeverGivesTwoDomainsOneName() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("rc", mode: "crash", "on_crash = \"rename-restart\"\n")
        #expect(eventually(timeout: 20) { (try? h.dmesg())?.contains("not restarted: it keeps its name") == true }, "\((try? h.dmesg()) ?? "")")
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("cannot rename it rc-"), "\(dmesg)")
        let names = try h.xl("list").stdout.split(separator: "\n").dropFirst().map { $0.split(separator: " ")[0] }
        #expect(Set(names).count == names.count, "\(names)")
        let list = try h.list()
        #expect(list["rc"]?.state == "---sc-", "\(list)")
        let preserved = list.filter { $0.key.hasPrefix("rc-") }
        #expect(!preserved.isEmpty && preserved.allSatisfy { $0.value.state == "---sc-" }, "\(list)")
        for (name, entry) in list where name.hasPrefix("rc") { #expect(entry.mem == 16, "\(name): \(entry)") }
        // Nothing more happens to it: it stays until destroyed.
        Thread.sleep(forTimeInterval: 1)
        #expect(try h.list().filter { $0.key.hasPrefix("rc") }.count == list.filter { $0.key.hasPrefix("rc") }.count)
        #expect(try h.xl("destroy", "rc").ok)
    }

    @Test func abnormalExitIsACrash() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("ex", mode: "exit", "extra = \"mode=exit code=7\"\non_crash = \"preserve\"\n")
        #expect(eventually { (try? h.list())?.contains { $0.key == "ex" && $0.value.state == "---sc-" } == true })
        #expect(try h.dmesg().contains("dom1 (ex): crashed: exited with status 7"))
    }

    @Test func consoleReplaysAndForwardsInput() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("echo", mode: "echo")
        #expect(eventually { h.consoleLog("echo").contains("echo ready") })
        let r = try h.xl("console", "echo", stdin: "hello there\nquit\n", timeout: 20)
        #expect(r.ok)
        #expect(r.stdout.contains("echo ready"))  // replayed from the ring
        #expect(r.stdout.contains("echo: hello there"))
        #expect(r.stdout.contains("echo: quit"))
        #expect(eventually { (try? h.list())?["echo"] == nil })
    }

    @Test func createWithConsoleAttachesAtOnce() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let r = try h.xl(args: ["create", "-c", h.config("ec", mode: "echo")], stdin: "ping\nquit\n", timeout: 20)
        #expect(r.ok, "\(r.stderr)")
        #expect(r.stdout.contains("echo: ping"))
        #expect(r.stderr.contains("Parsing config from"))
    }

    /// A guest that writes and is gone at once: `xl create -c` connects the console before the
    /// domain runs, so its output is shown every time (and the command succeeds).
    @Test func createWithConsoleSeesAGuestThatExitsAtOnce() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        for round in 0..<8 {
            let r = try h.xl(args: ["create", "-c", h.config("quick\(round)", mode: "hello")], timeout: 20)
            #expect(r.ok && r.stdout.contains("hello from dom") && r.stdout.contains("name=quick\(round) "), "round \(round): \(r.stdout)\(r.stderr)")
        }
        #expect(eventually { (try? h.list())?.keys.contains { $0.hasPrefix("quick") } == false })
    }

    @Test func consoleDetachesOnCtrlRightBracket() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("det", mode: "echo")
        let r = try h.xl("console", "det", stdin: "one\n\u{1d}", timeout: 20)
        #expect(r.ok)
        #expect(try h.list()["det"] != nil, "detaching must leave the domain running")
    }

    @Test func createPausedRunsNoGuestCodeUntilUnpaused() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("pz", mode: "hello", flags: ["-p"])
        #expect(try h.list()["pz"]?.state == "--p---")
        usleep(200_000)
        #expect(!h.consoleLog("pz").contains("hello from"))
        #expect(try h.xl("unpause", "pz").ok)
        #expect(eventually { h.consoleLog("pz").contains("hello from") })
    }

    @Test func renameChangesTheNameAndRefusesDuplicates() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("n1", mode: "run")
        try h.create("n2", mode: "run")
        #expect(try h.xl("rename", "n1", "n3").ok)
        #expect(try h.list()["n3"]?.domid == 1)
        let r = try h.xl("rename", "n3", "n2")
        #expect(!r.ok)
        #expect(r.stderr.contains("already exists"))
    }

    @Test func dryRunPrintsJSONAndCreatesNothing() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let r = try h.xl(args: ["create", "-n", h.config("dry", mode: "hello", "memory = 64\nvcpus = 3\n")])
        #expect(r.ok)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["domid"] is NSNull)
        let b = try #require((json["config"] as? [String: Any])?["b_info"] as? [String: Any])
        #expect(b["target_memkb"] as? Int == 64 * 1024)
        #expect(b["max_vcpus"] as? Int == 3)
        #expect(try h.list().count == 1)
    }

    @Test func extraSettingsOnTheCommandLineOverrideTheFile() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let r = try h.xl(args: ["create", h.config("ov", mode: "run"), "memory=24", "name=\"ov2\""])
        #expect(r.ok, "\(r.stderr)")
        #expect(try h.list()["ov2"]?.mem == 24)
    }

    @Test func infoPrintsXenFields() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let out = try h.xl("info").stdout
        #expect(out.contains("xen_major              : 4\n"))
        #expect(out.contains("xen_pagesize           : 4096\n"))
        #expect(out.contains("total_memory           : "))
        #expect(try h.xl("info", "xen_minor").stdout == "17\n")
    }

    @Test func multicallBatchesHypercalls() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("mc", mode: "multicall")
        #expect(eventually { h.consoleLog("mc").contains("multicall: ") })
        #expect(h.consoleLog("mc").contains("multicall: 262161,1,0,-38"))
    }

    @Test func supervisorStopPowersOffDomainsAndDestroysStragglers() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_SHUTDOWN_TIMEOUT_MS": "500"])
        try h.create("polite", mode: "run")
        try h.create("stubborn", mode: "ignore-shutdown")
        try h.create("frozen", mode: "run", flags: ["-p"])
        #expect(h.children.count == 3)
        h.stop(keepDirectory: true)  // asserts: clean exit, no surviving domain process, no socket left
        #expect(h.consoleLog("stubborn").contains("ignoring poweroff request"))
        #expect(h.consoleLog("polite").contains("running dom1"))
        try? FileManager.default.removeItem(atPath: h.runDirectory)
    }

    @Test func xlStartsTheSupervisorOnFirstUse() throws {
        var template = Array("/tmp/pva.XXXXXX".utf8CString)
        _ = mkdtemp(&template)
        let dir = String(cString: template)
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = dir
        env.removeValue(forKey: "PROCVISOR_NO_AUTOSTART")
        let r = try runCommand(Products.path("xl"), ["list"], env: env)
        #expect(r.ok, "\(r.stderr)")
        #expect(r.stdout.contains("Domain-0"))
        // Starting a supervisor in a PROCVISOR_RUNDIR that named nothing is said (naming another
        // that runs, when there is one: other tests' supervisors may).
        #expect(r.stderr.hasPrefix("xl: no supervisor runs in "), "\(r.stderr)")
        #expect(r.stderr.contains(dir), "\(r.stderr)")
        let pidText = try String(contentsOfFile: dir + "/procvisord.pid", encoding: .utf8)
        let pid = try #require(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        // A second xl reuses the same supervisor, silently; `xl info` names its run directory.
        let again = try runCommand(Products.path("xl"), ["info", "supervisor_pid"], env: env)
        #expect(again.stdout == "\(pid)\n" && again.stderr.isEmpty, "\(again.stderr)")
        #expect(try runCommand(Products.path("xl"), ["info", "run_directory"], env: env).stdout == "\(dir)\n")
        // An xl pointed at another, empty run directory (and told not to start one) names the
        // supervisor that runs.
        var elsewhere = env
        elsewhere["PROCVISOR_RUNDIR"] = dir + "-elsewhere"
        elsewhere["PROCVISOR_NO_AUTOSTART"] = "1"
        let lost = try runCommand(Products.path("xl"), ["list"], env: elsewhere)
        #expect(!lost.ok && lost.stderr.contains("; one runs in /"), "\(lost.stderr)")
        kill(pid, SIGTERM)
        #expect(eventually { !ProcFS.isAlive(pid) })
        try? FileManager.default.removeItem(atPath: dir)
    }
}

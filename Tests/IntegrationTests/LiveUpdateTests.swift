import Foundation
import LinuxHost
import ProcvisorABI
import Testing
import XenStoreSocket

/// `xl live-update` and XS_CONTROL `live-update`: the supervisor executes a new binary in its
/// place, and its domains, devices, XenStore clients and xl connections carry on.
@Suite(.serialized) struct LiveUpdateTests {
    /// Every node with its value and permissions (`xenstore-ls -p /`).
    static func storeDump(_ h: SupervisorHarness) throws -> String { try h.xs("ls", "-p", "/").stdout }

    /// Guests doing block I/O (blkcheck soak through blkback) and UDP (an echo stream between
    /// two guests through netback) while the supervisor is replaced three times: no guest sees
    /// an error, every domain keeps its process and domid, a dom0 XenStore client keeps its
    /// watch and its open transaction, and once the traffic is over one more update leaves the
    /// store exactly as it was.
    @Test func domainsKeepRunningThroughLiveUpdatesDuringBlockAndNetTraffic() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let supervisorPid = h.pid
        try BackendRestartTests.startBlkback(h)
        try BackendRestartTests.startNetback(h)
        let br = "pvu\(getpid() % 100_000)", subnet = "10.217.\(getpid() % 250)"
        func vif(_ n: Int) -> String { BackendRestartTests.vif(n, tag: "2a", subnet: subnet, bridge: br) }
        let soak = h.config("soak", kernel: Products.path("blkcheck"),
                            "extra = \"mode=soak duration=8 depth=8 span=32768\"\nmemory = 32\n"
                            + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(BackendRestartTests.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", soak).ok)
        #expect(try h.xl("create", "-q", h.config("server", kernel: Products.path("udp-echo"), "extra = \"port=7\"\n" + vif(2))).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("server").contains("listening on") }, "\(h.consoleLog("server"))")
        #expect(try h.xl("create", "-q", h.config("client", kernel: Products.path("udp-echo"),
                                                  "extra = \"client=\(subnet).2 port=7 duration=6 size=200 retry=20\"\non_crash = \"preserve\"\n" + vif(3))).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("soak").contains("soak: xvda 4096 blocks") }, "\(h.consoleLog("soak"))")
        let before = try h.list()
        let pids = h.children.sorted()
        // A dom0 client with a watch and an open transaction, across the updates.
        let client = try XSSocketClient(path: h.xenstoreSocket)
        try client.write("/tool/lu/watched", "0")
        try client.watch("/tool/lu/watched", token: "lu")
        _ = try client.nextWatchEvent()  // the event XS_WATCH fires at once
        let tx = try client.startTransaction()
        try client.write("/tool/lu/in-tx", "written in a transaction", transaction: tx)

        var pauses: [String] = []
        for round in 1...3 {
            Thread.sleep(forTimeInterval: 0.8)
            let r = try h.xl("live-update")
            #expect(r.ok && r.stdout.hasPrefix("live update done: "), "round \(round): \(r.stdout)\(r.stderr)\n\((try? h.dmesg()) ?? "")")
            pauses.append(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            #expect(h.pid == supervisorPid && ProcFS.isAlive(supervisorPid))
            // No new process (nothing restarted); the guests' own programs may end meanwhile
            // (they run for a few seconds, and a loaded machine can take longer over the rounds).
            #expect(Set(h.children).isSubset(of: Set(pids)), "round \(round): domain processes changed: \(h.children) vs \(pids)")
            let now = try h.list()
            for (name, d) in before {
                let finished = ["soak", "client"].contains(name) && h.consoleLog(name).contains(" OK")
                #expect(finished || now[name]?.domid == d.domid, "round \(round): \(name)")
            }
        }
        print("LiveUpdateTests: \(pauses)")
        // The watch still fires, the transaction commits what it wrote.
        try client.write("/tool/lu/watched", "1")
        let event = try client.nextWatchEvent()
        #expect(event.path == "/tool/lu/watched" && event.token == "lu")
        try client.endTransaction(tx, commit: true)
        #expect(try client.read("/tool/lu/in-tx") == "written in a transaction")

        for g in ["soak", "client"] {
            #expect(eventually(timeout: 60) { h.consoleLog(g).contains(" OK") || h.consoleLog(g).contains("FAILED") }, "\(g): \(h.consoleLog(g))")
        }
        #expect(h.consoleLog("soak").contains("soak OK writes="), "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        #expect(h.consoleLog("client").contains("udp-echo: OK "), "\(h.consoleLog("client"))\n\(h.consoleLog("netback"))")
        // Nobody noticed beyond the pause: no backend restarted, no device reconnected.
        let dmesg = try h.dmesg()
        #expect(!dmesg.contains("restarted in place"), "\(dmesg)")
        #expect(dmesg.components(separatedBy: "took over (pid \(supervisorPid)").count - 1 == 3, "\(dmesg)")
        #expect(!h.consoleLog("netback").contains("resumed from the previous incarnation"), "\(h.consoleLog("netback"))")

        // Quiet now: the store is the same node for node, value for value, permission for permission.
        Thread.sleep(forTimeInterval: 0.5)
        let store = try Self.storeDump(h)
        #expect(try h.xl("live-update").ok)
        #expect(try Self.storeDump(h) == store)
        // And the new supervisor works as the old one did: a new domain, a destroy.
        try h.create("late", mode: "run")
        #expect(try h.list()["late"] != nil)
        #expect(try h.xl("destroy", "late").ok)
    }

    /// A guest that keeps its XenStore ring full (three threads reading as fast as replies come
    /// back) while the supervisor is replaced again and again: its ring is carried with the
    /// requests half read and the replies queued, it is never disconnected, and a guest
    /// watching a node of its own still gets every write made after each update.
    @Test func aGuestHammeringItsXenStoreRingKeepsItThroughLiveUpdates() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("bystander", mode: "xs-box", "extra = \"mode=xs-box peer=0\"\n")
        #expect(eventually { h.consoleLog("bystander").contains("box ready") })
        try h.create("hog", mode: "xs-hog", "extra = \"mode=xs-hog seconds=4\"\nvcpus = 4\n")
        #expect(eventually { h.consoleLog("hog").contains("xs-hog started") })
        for i in 0..<4 {
            let r = try h.xl("live-update")
            #expect(r.ok, "\(r.stderr)")
            #expect(try h.xs("write", "/local/domain/1/data/box", "tick\(i)").ok)
            #expect(eventually { h.consoleLog("bystander").contains("value=tick\(i)") }, "\(h.consoleLog("bystander"))")
        }
        #expect(eventually(timeout: 20) { h.consoleLog("hog").contains("xs-hog done") }, "\(h.consoleLog("hog"))")
        let dmesg = try h.dmesg()
        #expect(!dmesg.contains("xenstore ring disconnected"), "\(dmesg)")
        #expect(dmesg.components(separatedBy: "took over").count - 1 == 4, "\(dmesg)")
        #expect(try h.list()["hog"] != nil)
    }

    /// A driver domain's standby incarnation is carried across the update like a domain (same
    /// process, its bootstrap still unanswered), and takes over when blkback is killed after it.
    @Test func aStandbyIncarnationSurvivesALiveUpdateAndStillTakesOver() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try BackendRestartTests.startBlkback(h)
        #expect(eventually { BackendRestartTests.lastStandby(h) != nil })
        let standby = try #require(BackendRestartTests.lastStandby(h))
        let pids = h.children.sorted()
        let r = try h.xl("live-update")
        #expect(r.ok, "\(r.stdout)\(r.stderr)")
        #expect(h.children.sorted() == pids)
        #expect(BackendRestartTests.killRepeatedly(Products.path("blkback"), name: "blkback", times: 1, in: h) == 1)
        var dmesg = try h.dmesg()
        #expect(dmesg.contains("0 devices kept, pid \(standby), its standby"), "\(dmesg)")
        // The next standby, started by the new binary, has cgroups of its own (not those of the
        // incarnation it would replace), and takes over too.
        #expect(eventually { (BackendRestartTests.lastStandby(h) ?? standby) != standby })
        let next = try #require(BackendRestartTests.lastStandby(h))
        func cgroups(_ pid: pid_t) -> String { (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? "" }
        #expect(cgroups(next) != cgroups(standby) || !cgroups(standby).contains("-dom"), "\(cgroups(next))")
        #expect(BackendRestartTests.killRepeatedly(Products.path("blkback"), name: "blkback", times: 1, in: h) == 1)
        dmesg = try h.dmesg()
        #expect(dmesg.contains("0 devices kept, pid \(next), its standby"), "\(dmesg)")
    }

    /// A new binary that cannot take over is refused and the running supervisor goes on with
    /// every domain: a path that does not exist, a program that is not procvisord, one that
    /// fails, and (test knob) a state older than the new binary takes.
    @Test func aBinaryThatCannotTakeOverIsRolledBack() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_TEST_LIVE_UPDATE_VERSION": "0"])
        defer { h.stop() }
        try h.create("g", mode: "run")
        let pids = h.children.sorted()
        let cases: [(String, String)] = [
            ("/nonexistent/procvisord", "no such file"),
            ("/bin/true", "did not take the state over"),
            ("/bin/false", "exited with status 1"),
            (Products.path("procvisord"), "state version 0 is older than the oldest this procvisord takes over (1)"),
        ]
        for (binary, why) in cases {
            let r = try h.xl("live-update", binary)
            #expect(!r.ok, "\(binary): \(r.stdout)")
            #expect(r.stderr.contains(why), "\(binary): \(r.stderr)")
            #expect(h.children.sorted() == pids, "\(binary): domain processes changed")
            #expect(try h.list()["g"]?.state.contains("b") == true || (try h.list()["g"]?.state.contains("r")) == true)
            #expect(try h.xs("write", "/tool/after", binary).ok)
        }
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("live update rolled back"), "\(dmesg)")
        #expect(!dmesg.contains("took over"), "\(dmesg)")
        // A relative path is refused as such.
        let rel = try h.xl("live-update", "procvisord-nowhere")
        #expect(!rel.ok && rel.stderr.contains("no such file"), "\(rel.stderr)")
        // And a state from the future: a binary older than the layout refuses it too.
        let newer = try SupervisorHarness(extraEnv: ["PROCVISOR_TEST_LIVE_UPDATE_VERSION": "99"])
        defer { newer.stop() }
        let r = try newer.xl("live-update")
        #expect(!r.ok && r.stderr.contains("state version 99 is newer than this procvisord understands (2)"), "\(r.stderr)")
        #expect(try newer.xl("list").ok)
    }

    /// What xenstore-control live-update sends: `-f FILE`, then `-s -t SECONDS`; the answer
    /// ("OK") comes from the new binary on the same connection. Only dom0 may ask, `-s`
    /// without `-f` says what is missing, a stubdom's binary transfer is refused.
    @Test func xenstoreControlLiveUpdateIsAnsweredByTheNewBinary() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("g", mode: "run")
        let pids = h.children.sorted()
        let ctl = try XSSocketClient(path: h.xenstoreSocket)
        #expect(try ctl.request(.control, ["live-update", "-s", "-t", "10"]).payloadStrings.first?.hasPrefix("No binary given") == true)
        #expect(try ctl.request(.control, ["live-update", "-b", "100"]).payloadStrings.first?.contains("stubdom") == true)
        #expect(throws: XSSocketClient.ServerError.self) { try ctl.request(.control, ["live-update", "-s", "-t", "soon"]) }
        #expect(try ctl.request(.control, ["live-update", "-f", Products.path("procvisord")]).payloadStrings == ["OK"])
        #expect(try ctl.request(.control, ["live-update", "-s", "-t", "10"]).payloadStrings == ["OK"])
        #expect(h.children.sorted() == pids)
        #expect(try h.dmesg().contains("took over"))
        // The same connection goes on working.
        try ctl.write("/tool/after-update", "1")
        #expect(try ctl.read("/tool/after-update") == "1")
    }

    /// What would not survive the exec is refused with its reason: an attached `xl console`.
    @Test func anAttachedConsoleIsRefusedWithItsReason() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("g", mode: "run")
        #expect(eventually { h.consoleLog("g").contains("running dom") })
        let console = Foundation.Process()
        console.executableURL = URL(fileURLWithPath: Products.path("xl"))
        console.arguments = ["console", "g"]
        console.environment = h.env
        let input = Pipe()
        let output = Pipe()
        console.standardInput = input
        console.standardOutput = output
        try console.run()
        // The console's history arrives once the supervisor has it attached: only then is a
        // live update bound to be refused (before, it would rightly go ahead).
        _ = output.fileHandleForReading.availableData
        defer {
            kill(console.processIdentifier, SIGKILL)  // xl console leaves on Ctrl-], not on SIGTERM
            console.waitUntilExit()
        }
        let refusal = try h.xl("live-update").stderr
        #expect(refusal.contains("an xl console is attached to dom1"), "\(refusal)")
        #expect(!(try h.dmesg()).contains("took over"))
    }
}

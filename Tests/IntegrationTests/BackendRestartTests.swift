import Foundation
import Glibc
import LinuxHost
import Testing

/// A driver domain killed in the middle of heavy I/O comes back in place (same domid, its devices
/// kept), and every guest it serves carries on: no error, no lost or stale write.
@Suite(.serialized) struct BackendRestartTests {
    /// The host pid of the domain process whose kernel is `kernel` (its argv[0]), if running.
    /// The running incarnation of the driver domain whose kernel is `kernel` (not its standby).
    static func pid(of kernel: String, in h: SupervisorHarness) -> pid_t? { ProcFS.child(of: h.pid, running: kernel, engaged: true) }

    static func disk(_ h: SupervisorHarness, _ name: String) -> String {
        let path = h.runDirectory + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        _ = truncate(path, 32 << 20)
        return path
    }

    /// A blkback driver domain (its default `on_crash`: restart), serving.
    static func startBlkback(_ h: SupervisorHarness, extra: String = "") throws {
        let cfg = "driver_domain = 1\n" + (extra.isEmpty ? "" : "extra = \"\(extra)\"\n")
        #expect(try h.xl("create", "-q", h.config("blkback", kernel: Products.path("blkback"), cfg)).ok)
        #expect(eventually { h.consoleLog("blkback").contains("serving vbds") })
    }

    /// Kills `kernel`'s process `times` times, each once the previous incarnation is serving
    /// again; returns how many kills landed.
    static func killRepeatedly(_ kernel: String, name: String, times: Int, in h: SupervisorHarness,
                               serving marker: String = "serving vbds", pause: Double = 0.25) -> Int {
        var kills = 0
        for _ in 0..<times {
            guard let pid = pid(of: kernel, in: h) else { break }
            let served = h.consoleLog(name).components(separatedBy: marker).count
            kill(pid, SIGKILL)
            kills += 1
            // The next incarnation says so on the same console log.
            guard eventually(timeout: 15, { h.consoleLog(name).components(separatedBy: marker).count > served }) else { break }
            Thread.sleep(forTimeInterval: pause)
        }
        return kills
    }

    @Test(arguments: ["io_uring", "threads"])
    func blkcheckGuestsSeeNothingWhileBlkbackIsKilledTenTimes(_ engine: String) throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_RESTARTS": "100/60"])
        defer { h.stop() }
        let blkback = Products.path("blkback")
        try Self.startBlkback(h, extra: engine == "threads" ? "PROCVISOR_FORCE_NO_IOURING=1 max-queues=2" : "max-queues=2")
        let domid = try #require(try h.list()["blkback"]?.domid)
        let guests = ["soak1", "soak2", "soak3"]
        for g in guests {
            let cfg = h.config(g, kernel: Products.path("blkcheck"),
                               "extra = \"mode=soak duration=10 depth=8 span=32768 queues=2\"\nmemory = 32\n"
                               + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, g + ".img"))' ]\n")
            #expect(try h.xl("create", "-q", cfg).ok)
        }
        #expect(eventually(timeout: 20) { guests.allSatisfy { h.consoleLog($0).contains("soak: xvda 4096 blocks") } },
                "\(guests.map { h.consoleLog($0) })")
        Thread.sleep(forTimeInterval: 0.5)
        let kills = Self.killRepeatedly(blkback, name: "blkback", times: 10, in: h)
        #expect(kills == 10, "\(h.consoleLog("blkback"))")
        for g in guests {
            #expect(eventually(timeout: 60) { h.consoleLog(g).contains("soak OK") || h.consoleLog(g).contains("FAILED") },
                    "\(h.consoleLog(g))\n\(h.consoleLog("blkback"))")
            let log = h.consoleLog(g)
            // On failure: the guest's console, blkback's and the supervisor's log, to tell a
            // failed resume from a store error or a kill in the middle of a handshake.
            let evidence = { "\(g): \(log)\n--- blkback:\n\(h.consoleLog("blkback"))\n--- xl dmesg:\n\((try? h.dmesg()) ?? "")" }
            #expect(log.contains("soak OK writes="), "\(evidence())")
            #expect(!log.contains("FAILED"), "\(evidence())")
        }
        // The same domain throughout: same domid, restarted in place each time, devices kept.
        #expect(try h.list()["blkback"]?.domid == domid)
        let dmesg = try h.dmesg()
        #expect(dmesg.components(separatedBy: "restarted in place").count - 1 == kills, "\(dmesg)")
        #expect(dmesg.contains("3 devices kept"), "\(dmesg)")
    }

    /// An error inside blkback that no frontend caused (here the `fail-submit` test setting: the
    /// kernel refusing a batch) does not fail the device: blkback crashes on purpose, is
    /// restarted in place, and the new incarnation takes the device over from its in-flight log;
    /// the guest's writes and reads all check out, on both engines.
    @Test(arguments: ["io_uring", "threads"])
    func anInternalErrorInBlkbackCostsTheGuestOnlyAPause(_ engine: String) throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try Self.startBlkback(h, extra: (engine == "threads" ? "PROCVISOR_FORCE_NO_IOURING=1 " : "") + "fail-submit=300")
        let domid = try #require(try h.list()["blkback"]?.domid)
        let cfg = h.config("soak", kernel: Products.path("blkcheck"),
                           "extra = \"mode=soak duration=4 depth=8 span=32768\"\nmemory = 32\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        #expect(eventually(timeout: 60) { h.consoleLog("soak").contains("soak OK") || h.consoleLog("soak").contains("FAILED") },
                "\(h.consoleLog("soak"))")
        let log = h.consoleLog("soak"), backend = h.consoleLog("blkback"), dmesg = (try? h.dmesg()) ?? ""
        #expect(log.contains("soak OK writes=") && !log.contains("FAILED"), "\(log)\n--- blkback:\n\(backend)\n--- xl dmesg:\n\(dmesg)")
        #expect(backend.contains("the I/O engine refused a batch: io_uring_enter fail-submit test setting: "), "\(backend)")
        #expect(backend.contains("crashing so that a new incarnation takes the devices over from their in-flight logs"), "\(backend)")
        #expect(backend.contains("vbd 2/51712 resumed"), "\(backend)")
        #expect(dmesg.components(separatedBy: "restarted in place").count - 1 == 1, "\(dmesg)")
        #expect(try h.list()["blkback"]?.domid == domid)
    }

    /// blkcheck's own workload (writes of every size with indirect requests, discards, flushes,
    /// reads checked as they come back, then every sector read back) while blkback is killed
    /// again and again: reissued reads, flushes and discards leave nothing wrong either.
    @Test func blkcheckWithReadsFlushesAndDiscardsPassesWhileBlkbackIsKilled() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_RESTARTS": "100/60"])
        defer { h.stop() }
        let blkback = Products.path("blkback")
        try Self.startBlkback(h, extra: "max-queues=2")
        let cfg = h.config("check", kernel: Products.path("blkcheck"),
                           "extra = \"seed=7 rounds=400 depth=16 span=16384 queues=2 indirect=64 maxio=300\"\nmemory = 32\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "check.img"))' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("check").contains("segments per request") }, "\(h.consoleLog("check"))")
        var kills = 0
        while kills < 8, !h.consoleLog("check").contains("blkcheck: xvda OK"), !h.consoleLog("check").contains("FAILED") {
            Thread.sleep(forTimeInterval: 0.2)
            kills += Self.killRepeatedly(blkback, name: "blkback", times: 1, in: h)
        }
        #expect(kills >= 3, "the check finished before three kills: \(h.consoleLog("check"))")
        #expect(eventually(timeout: 120) { h.consoleLog("check").contains("blkcheck: xvda OK") || h.consoleLog("check").contains("FAILED") },
                "\(h.consoleLog("check"))")
        #expect(h.consoleLog("check").contains("blkcheck: xvda OK"), "\(h.consoleLog("check"))\n\(h.consoleLog("blkback"))")
        #expect(!h.consoleLog("check").contains("FAILED"), "\(h.consoleLog("check"))")
    }

    /// The pid of the last standby incarnation `xl dmesg` says was started.
    static func lastStandby(_ h: SupervisorHarness) -> pid_t? {
        guard let dmesg = try? h.dmesg(), let r = dmesg.range(of: "standby incarnation started, pid ", options: .backwards) else { return nil }
        return pid_t(dmesg[r.upperBound...].prefix { $0.isNumber })
    }

    /// A driver domain keeps its next incarnation ready: a process started and jailed before it
    /// is needed, waiting in its bootstrap under the bound alone. Killed, blkback is replaced by
    /// that process (its pid becomes the domain's) and a new standby is started; a standby that
    /// is itself killed is logged, the domain goes on, and its next crash starts a process from
    /// scratch. The guest's writes go through all of it; destroying the domain ends its standby.
    @Test func aStandbyIncarnationTakesOverWhenBlkbackIsKilled() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let blkback = Products.path("blkback")
        try Self.startBlkback(h)
        let cfg = h.config("soak", kernel: Products.path("blkcheck"),
                           "extra = \"mode=soak duration=6 depth=8 span=32768\"\nmemory = 32\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("soak").contains("soak: xvda 4096 blocks") }, "\(h.consoleLog("soak"))")
        #expect(eventually { Self.lastStandby(h) != nil }, "\((try? h.dmesg()) ?? "")")
        let standby = try #require(Self.lastStandby(h))
        let active = try #require(Self.pid(of: blkback, in: h))
        #expect(active != standby && h.children.contains(standby))
        #expect(try ProcFS.seccomp(of: standby).filters == 1, "a standby runs nothing past its bootstrap")
        #expect(Self.killRepeatedly(blkback, name: "blkback", times: 1, in: h) == 1)
        var dmesg = try h.dmesg()
        #expect(dmesg.contains("restarted in place (restart 1 of 5 in 60 s), 1 device kept, pid \(standby), its standby"), "\(dmesg)")
        #expect(Self.pid(of: blkback, in: h) == standby)
        #expect(eventually { (Self.lastStandby(h) ?? standby) != standby }, "no new standby: \((try? h.dmesg()) ?? "")")
        let second = try #require(Self.lastStandby(h))

        // The standby itself dies: logged; the next crash starts a new process.
        kill(second, SIGKILL)
        #expect(eventually { (try? h.dmesg())?.contains("its standby incarnation (pid \(second)) ended (killed by SIGKILL) before it was needed") == true },
                "\((try? h.dmesg()) ?? "")")
        #expect(try h.list()["blkback"]?.domid == 1)
        #expect(Self.killRepeatedly(blkback, name: "blkback", times: 1, in: h) == 1)
        dmesg = try h.dmesg()
        let restarts = dmesg.split(separator: "\n").filter { $0.contains("restarted in place") }
        #expect(restarts.count == 2 && !restarts[1].contains("its standby") && !restarts[1].contains("pid \(second)"), "\(dmesg)")
        #expect(eventually { (Self.lastStandby(h) ?? second) != second }, "no standby after a restart from scratch")

        #expect(eventually(timeout: 60) { h.consoleLog("soak").contains("soak OK") || h.consoleLog("soak").contains("FAILED") },
                "\(h.consoleLog("soak"))")
        #expect(h.consoleLog("soak").contains("soak OK writes="), "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        let third = try #require(Self.lastStandby(h))
        _ = try h.xl("destroy", "soak")  // its soak over, it may have powered off already
        #expect(try h.xl("destroy", "blkback").ok)
        #expect(eventually { !h.children.contains(third) }, "the standby outlived its domain: \(h.children)")
    }

    /// `PROCVISOR_DRIVER_STANDBY=0`: no standby; a crash starts the new process then. Anything
    /// but 0 or 1 is refused at start, naming the variable.
    @Test func standbysCanBeTurnedOff() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_STANDBY": "0"])
        defer { h.stop() }
        let blkback = Products.path("blkback")
        try Self.startBlkback(h)
        Thread.sleep(forTimeInterval: 0.5)
        #expect(h.children.count == 1)
        #expect(Self.killRepeatedly(blkback, name: "blkback", times: 1, in: h) == 1)
        Thread.sleep(forTimeInterval: 0.5)
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("restarted in place") && !dmesg.contains("standby"), "\(dmesg)")
        #expect(h.children.count == 1)

        let r = try runCommand(Products.path("procvisord"), [], env: ["PROCVISOR_DRIVER_STANDBY": "maybe", "PROCVISOR_RUNDIR": "/tmp/pv-never-\(getpid())"])
        #expect(r.status == 2 && r.stderr.contains("PROCVISOR_DRIVER_STANDBY: \"maybe\" is neither 0 nor 1"), "\(r.stderr)")
    }

    /// A backend that dies while a device's handshake is under way (stopped, then killed, with
    /// the frontend waiting for it): the new incarnation connects the device afresh, and the
    /// guest's I/O goes through as if nothing happened.
    @Test func aBackendKilledDuringTheHandshakeConnectsTheDeviceAfresh() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try Self.startBlkback(h)
        let blkback = Products.path("blkback")
        let pid = try #require(Self.pid(of: blkback, in: h))
        kill(pid, SIGSTOP)
        let cfg = h.config("soak", kernel: Products.path("blkcheck"),
                           "extra = \"mode=soak duration=2 depth=8 span=32768\"\nmemory = 32\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        // The frontend has started its half; the backend has done nothing for the device.
        #expect(eventually { (try? h.xs("read", "/local/domain/2/device/vbd/51712/state").stdout) != nil })
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51712/state").stdout != "4\n")
        kill(pid, SIGKILL)
        #expect(eventually(timeout: 30) { h.consoleLog("soak").contains("soak OK") || h.consoleLog("soak").contains("FAILED") },
                "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        #expect(h.consoleLog("soak").contains("soak OK writes="), "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        #expect(try h.dmesg().contains("restarted in place"))
    }

    /// A backend that keeps crashing is left down once it passes its restart limit: its guests'
    /// outstanding and later I/O fails with the reason, logged and in `xl dmesg`, and the guests
    /// themselves keep running.
    @Test func aBackendPastItsRestartLimitIsLeftDownAndItsDevicesFail() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_RESTARTS": "2/60"])
        defer { h.stop() }
        let blkback = Products.path("blkback")
        try Self.startBlkback(h)
        let cfg = h.config("soak", kernel: Products.path("blkcheck"),
                           "extra = \"mode=soak duration=30 depth=8 span=32768\"\nmemory = 32\non_crash = \"preserve\"\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("soak").contains("soak: xvda 4096 blocks") }, "\(h.consoleLog("soak"))")
        #expect(Self.killRepeatedly(blkback, name: "blkback", times: 2, in: h) == 2)
        // The third crash is one too many.
        let pid = try #require(Self.pid(of: blkback, in: h))
        kill(pid, SIGKILL)
        #expect(eventually(timeout: 10) { (try? h.list()["blkback"]) == nil })
        #expect(eventually(timeout: 10) { (try? h.dmesg())?.contains("crashed 3 times in 60 s (the limit is 2 restarts): left down") == true },
                "\((try? h.dmesg()) ?? "")")
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("its 1 device fail: disk xvda"), "\(dmesg)")
        // The guest is told: its soak fails on the device (and is preserved, not gone).
        #expect(eventually(timeout: 30) { h.consoleLog("soak").contains("FAILED") }, "\(h.consoleLog("soak"))")
        #expect(h.consoleLog("soak").contains("xvda"), "\(h.consoleLog("soak"))")
    }

    /// A netback driver domain of its own, serving; and the vif line of guest `n` on `bridge`
    /// (MAC 00:16:3e:00:TAG:0n, address SUBNET.n).
    static func startNetback(_ h: SupervisorHarness) throws {
        #expect(try h.xl("create", "-q", h.config("netback", kernel: Products.path("netback"), "driver_domain = 1\n")).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("netback").contains("serving vifs") })
    }

    static func vif(_ n: Int, tag: String, subnet: String, bridge: String) -> String {
        "vif = [ 'mac=00:16:3e:00:\(tag):0\(n), ip=\(subnet).\(n)/24, bridge=\(bridge), backend=netback' ]\n"
    }

    /// netback killed five times under a UDP echo stream between two guests, a ping, and the
    /// host talking to a guest through the bridge's tap: every vif is taken over where it was
    /// (same domid, rings kept, no new handshake), the stream and the ping carry on (a datagram
    /// lost in a restart is sent again), and the tap, with the address the host gave it, is the
    /// same interface throughout.
    @Test func aUDPStreamAPingAndTheHostsTapSurviveNetbackBeingKilled() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_RESTARTS": "100/60"])
        defer { h.stop() }
        let netback = Products.path("netback")
        let br = "pvr\(getpid() % 100_000)", subnet = "10.214.\(getpid() % 250)"
        try Self.startNetback(h)
        let domid = try #require(try h.list()["netback"]?.domid)
        func vif(_ n: Int) -> String { Self.vif(n, tag: "1e", subnet: subnet, bridge: br) }
        #expect(try h.xl("create", "-q", h.config("server", kernel: Products.path("udp-echo"), "extra = \"port=7\"\n" + vif(2))).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("server").contains("listening on") }, "\(h.consoleLog("server"))")
        #expect(try h.xl("create", "-q", h.config("client", kernel: Products.path("udp-echo"),
                                                  "extra = \"client=\(subnet).2 port=7 duration=6 size=200 retry=20\"\non_crash = \"preserve\"\n" + vif(3))).ok)
        #expect(try h.xl("create", "-q", h.config("pinger", kernel: Products.path("ping"),
                                                  "extra = \"target=\(subnet).2 count=50 interval=0.1 timeout=20\"\n" + vif(4))).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("pinger").contains("icmp_seq=1 ") }, "\(h.consoleLog("pinger"))")
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first { FileIO.isExecutable($0) }
        let tap = FileIO.exists("/sys/class/net/\(br)") && ip != nil
        if tap { #expect(try runCommand(ip!, ["addr", "add", "\(subnet).254/24", "dev", br], env: [:]).ok) }
        let ifindex = (try? String(contentsOfFile: "/sys/class/net/\(br)/ifindex", encoding: .utf8)) ?? ""

        let kills = Self.killRepeatedly(netback, name: "netback", times: 5, in: h, serving: "serving vifs", pause: 0.5)
        #expect(kills == 5, "\(h.consoleLog("netback"))")
        #expect(eventually(timeout: 30) { h.consoleLog("client").contains("OK ") || h.consoleLog("client").contains("FAILED") })
        let stats = (2...4).map { (try? h.xs("read", "/local/domain/\(domid)/backend/vif/\($0)/0/statistics").stdout) ?? "" }
        #expect(h.consoleLog("client").contains("udp-echo: OK "), "\(h.consoleLog("client"))\n\(stats)")
        #expect(eventually(timeout: 30) { h.consoleLog("pinger").contains("packets transmitted") })
        let summary = h.consoleLog("pinger").split(separator: "\n").first { $0.hasPrefix("50 packets transmitted, ") } ?? ""
        let received = Int(summary.split(separator: " ").dropFirst(3).first ?? "") ?? 0
        // A ping whose echo was on its way through the backend when it died is lost (as a frame
        // on a wire may be); the others are answered.
        #expect(received >= 50 - 2 * kills, "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("pinger").contains("icmp_seq=50 "), "\(h.consoleLog("pinger"))")
        // Taken over, not connected afresh: each incarnation says so for each of the three vifs.
        let log = h.consoleLog("netback")
        let client = h.consoleLog("client").split(separator: "\n").last { $0.contains("OK ") } ?? ""
        print("BackendRestartTests: netback killed \(kills) times: client \(client); ping \(summary)")
        for line in log.split(separator: "\n") where line.contains("resumed") { print("  \(line)") }
        #expect(log.components(separatedBy: "resumed from the previous incarnation").count - 1 == 3 * kills, "\(log)")
        #expect(try h.list()["netback"]?.domid == domid)
        #expect(try h.dmesg().components(separatedBy: "restarted in place").count - 1 == kills)
        if tap {
            // The same tap, still configured: the host reaches the server through it.
            #expect((try? String(contentsOfFile: "/sys/class/net/\(br)/ifindex", encoding: .utf8)) == ifindex)
            let message = Array("after the restarts".utf8)
            let echo = hostUDPEcho(to: "\(subnet).2", message)
            #expect(echo.count == message.count && echo.bytes == message, "no echo through tap \(br) after the restarts: \(log)")
        }
        #expect(try h.xl("destroy", "netback").ok)
        #expect(eventually(timeout: 10) { !FileIO.exists("/sys/class/net/\(br)") }, "tap \(br) outlived netback")
    }

    /// The in-flight log hypercall is the serving backend's alone, with sizes and queues it can
    /// hold: anyone else, or a bad request, gets an error and nothing else changes.
    @Test func inFlightLogsAreTheServingBackendsOnly() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("be", mode: "inflight-probe", "driver_domain = 1\nextra = \"mode=inflight-probe frontend=2 devid=51712 wait-device=1\"\n")
        try h.create("fe", mode: "run", "disk = [ 'vdev=xvda, access=rw, backend=be, target=\(Self.disk(h, "fe.img"))' ]\n")
        try h.create("snoop", mode: "inflight-probe", "extra = \"mode=inflight-probe frontend=2 devid=51712\"\n")
        #expect(eventually { h.consoleLog("be").contains("inflight: done") && h.consoleLog("snoop").contains("inflight: done") },
                "\(h.consoleLog("be"))\n\(h.consoleLog("snoop"))")
        let be = h.consoleLog("be"), snoop = h.consoleLog("snoop")
        // The backend: zeroed memory the first time, the same memory (and one more incarnation)
        // the second; a different size, a queue past 15, a size that is not whole pages or over
        // 1 MiB, the uplink kind: EINVAL; a device it does not serve: EPERM.
        #expect(be.contains("inflight: first: ok incarnations=0 first-byte=0"), "\(be)")
        #expect(be.contains("inflight: again: ok incarnations=1 first-byte=165"), "\(be)")
        for (name, line) in [("other-size", "queue 0 failed: EINVAL"), ("queue-16", "queue 16 failed: EINVAL"),
                             ("no-bytes", "queue 0 failed: EINVAL"), ("odd-bytes", "queue 0 failed: EINVAL"),
                             ("too-big", "queue 0 failed: EINVAL")] {
            #expect(be.contains("inflight: \(name): inflight_log vbd 2/51712 \(line)"), "\(name): \(be)")
        }
        #expect(be.contains("inflight: uplink: inflight_log uplink 2/51712 queue 0 failed: EINVAL"), "\(be)")
        #expect(be.contains("inflight: unknown: inflight_log vbd 2/12345 queue 0 failed: EPERM"), "\(be)")
        // Anyone else: nothing, whatever it asks.
        #expect(snoop.contains("inflight: first: inflight_log vbd 2/51712 queue 0 failed: EPERM"), "\(snoop)")
        #expect(snoop.contains("inflight: again: inflight_log vbd 2/51712 queue 0 failed: EPERM"), "\(snoop)")
        #expect(!snoop.contains(": ok "), "\(snoop)")
        #expect(try h.dmesg().contains("dom3 (snoop): asked for the in-flight log of dom2's vbd 51712, which it does not serve: refused"))
        #expect(try h.list()["be"] != nil && h.list()["fe"] != nil)
    }

    /// A frontend that makes its ring impossible while a killed blkback is being restarted: the
    /// new incarnation refuses to take that device over (it is closed, with the reason in the
    /// log) and resumes the others as if nothing happened.
    @Test func aRingCorruptedDuringTheRestartClosesThatDeviceAlone() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try Self.startBlkback(h)
        try h.create("raw", mode: "blk-raw", "extra = \"mode=blk-raw corrupt-after-restart=1\"\n"
                     + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "raw.img"))' ]\n")
        let soak = h.config("soak", kernel: Products.path("blkcheck"),
                            "extra = \"mode=soak duration=4 depth=8 span=32768\"\nmemory = 32\n"
                            + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(Self.disk(h, "soak.img"))' ]\n")
        #expect(try h.xl("create", "-q", soak).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("raw").contains("waiting for the backend to go") && h.consoleLog("soak").contains("soak: xvda") },
                "\(h.consoleLog("raw"))\n\(h.consoleLog("soak"))")
        #expect(Self.killRepeatedly(Products.path("blkback"), name: "blkback", times: 1, in: h) == 1)
        #expect(eventually(timeout: 20) { h.consoleLog("raw").contains("after corruption during the restart") }, "\(h.consoleLog("raw"))")
        #expect(h.consoleLog("raw").contains("after corruption during the restart: backend state 6"), "\(h.consoleLog("raw"))\n\(h.consoleLog("blkback"))")
        #expect(eventually(timeout: 30) { h.consoleLog("soak").contains("soak OK") || h.consoleLog("soak").contains("FAILED") })
        #expect(h.consoleLog("soak").contains("soak OK writes="), "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        let blkback = h.consoleLog("blkback")
        print("BackendRestartTests: corrupted during the restart: " + (blkback.split(separator: "\n").first { $0.contains("2/51712") && $0.contains("impossible") } ?? "?"))
        #expect(blkback.contains("vbd 2/51712: ") && blkback.contains("impossible req_prod 5000"), "\(blkback)")
        #expect(try h.list()["raw"] != nil)
    }

    /// The same for netback: a vif whose tx ring is made impossible while netback is restarted
    /// is refused by the new incarnation (closed, the reason in its log); a UDP echo stream on
    /// the same bridge carries on.
    @Test func aVifCorruptedDuringTheRestartIsClosedAlone() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DRIVER_RESTARTS": "100/60"])
        defer { h.stop() }
        let netback = Products.path("netback")
        let br = "pvc\(getpid() % 100_000)", subnet = "10.216.\(getpid() % 250)"
        try Self.startNetback(h)
        func vif(_ n: Int) -> String { Self.vif(n, tag: "1f", subnet: subnet, bridge: br) }
        try h.create("evil", mode: "net-hostile", "extra = \"mode=net-hostile corrupt-after-restart=1\"\n" + vif(5))
        #expect(try h.xl("create", "-q", h.config("server", kernel: Products.path("udp-echo"), "extra = \"port=7\"\n" + vif(2))).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("server").contains("listening on") && h.consoleLog("evil").contains("waiting for the backend to go") },
                "\(h.consoleLog("server"))\n\(h.consoleLog("evil"))")
        #expect(try h.xl("create", "-q", h.config("client", kernel: Products.path("udp-echo"),
                                                  "extra = \"client=\(subnet).2 port=7 duration=3 size=200 retry=20\"\n" + vif(3))).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("client").contains("udp-echo: gap") || h.consoleLog("netback").contains("vif4.0 connected") })
        Thread.sleep(forTimeInterval: 0.3)
        #expect(Self.killRepeatedly(netback, name: "netback", times: 1, in: h, serving: "serving vifs") == 1)
        #expect(eventually(timeout: 30) { h.consoleLog("evil").contains("after corruption during the restart") }, "\(h.consoleLog("evil"))")
        #expect(h.consoleLog("evil").contains("after corruption during the restart: backend state 6"), "\(h.consoleLog("evil"))\n\(h.consoleLog("netback"))")
        #expect(eventually(timeout: 30) { h.consoleLog("client").contains("OK ") || h.consoleLog("client").contains("FAILED") })
        #expect(h.consoleLog("client").contains("udp-echo: OK "), "\(h.consoleLog("client"))\n\(h.consoleLog("netback"))")
        let log = h.consoleLog("netback")
        #expect(log.contains("vif2.0: cannot take the vif over: queue 0's rings are impossible with its log (tx req_prod 5000 "), "\(log)")
        #expect(!log.contains("vif2.0 resumed"), "\(log)")
        print("BackendRestartTests: " + (log.split(separator: "\n").first { $0.contains("cannot take the vif over") } ?? "?"))
    }
}

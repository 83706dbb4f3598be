import Foundation
import Glibc
import LinuxHost
import Testing
import Toolstack

/// `xl save`, `xl restore` and `xl migrate` through real supervisors, real xl and real domain
/// processes: the domain's RAM comes back exactly, and every bad input leaves the rest running.
@Suite struct SaveRestoreTests {
    /// The last counter the ram-counter guest printed.
    static func lastCounter(_ log: String) -> Int? {
        log.split(separator: "\n").reversed().lazy.compactMap { line -> Int? in
            guard let r = line.range(of: "counter=") else { return nil }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }.first
    }

    /// Bytes of shmem charged to the domain's memory cgroup (nil: the supervisor runs without cgroups).
    static func cgroupShmem(supervisor: pid_t, domid: Int) -> Int? {
        guard let text = try? FileIO.readString("/proc/\(supervisor)/cgroup") else { return nil }
        var dir: String?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if f.count == 3, f[1].split(separator: ",").contains("memory") { dir = "/sys/fs/cgroup/memory" + f[2] }
        }
        if dir == nil, let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) { dir = "/sys/fs/cgroup" + line.dropFirst(3) }
        guard let dir, let stat = try? FileIO.readString(dir + "/procvisor-\(supervisor)-dom\(domid)/memory.stat") else { return nil }
        let line = stat.split(separator: "\n").first { $0.hasPrefix("shmem ") }
        return line.flatMap { Int($0.dropFirst(6)) }
    }

    func startCounter(_ h: SupervisorHarness, _ name: String) throws {
        try h.create(name, mode: "ram-counter", "vcpus = 2\n")
        #expect(eventually { (Self.lastCounter(h.consoleLog(name)) ?? 0) >= 100 }, "\(h.consoleLog(name))")
    }

    func file(_ h: SupervisorHarness, _ name: String) -> String { h.runDirectory + "/" + name }

    @Test func saveThenRestoreBringsTheRAMBackExactly() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "keeper")
        let before = try #require(try h.list()["keeper"]?.domid)
        let image = file(h, "keeper.save")
        let save = try h.xl("save", "keeper", image)
        #expect(save.ok, "\(save.stderr)")
        #expect(save.stderr.contains("Saving to \(image) new xl format"))
        // Saved without -c: the domain is gone, the file is there.
        #expect(try h.list()["keeper"] == nil)
        #expect(FileIO.exists(image))
        let saved = h.consoleLog("keeper")
        let atSave = try #require(saved.components(separatedBy: "suspend hook at counter=").last.flatMap { Int($0.prefix { $0.isNumber }) })
        #expect(try h.dmesg().contains("dom\(before) (keeper): suspended"))

        let restore = try h.xl("restore", image)
        #expect(restore.ok, "\(restore.stderr)")
        #expect(restore.stderr.contains("Loading new save file \(image)"))
        let after = try #require(try h.list()["keeper"])
        #expect(after.domid != before)
        #expect(eventually { h.consoleLog("keeper").contains("ram-counter: resumed counter=") })
        let log = h.consoleLog("keeper")
        #expect(log.contains("ram-check ok (512 pages)"), "\(log)")
        #expect(log.contains("ram-counter: resumed counter=\(atSave) record=counter=\(atSave)"), "\(log)")
        #expect(log.contains("data/boot-marker=booted-as-dom\(before)"))
        // The restored pages are charged to the domain's memory cgroup (xl wrote them from inside
        // it), not to xl's: its shmem counts at least the 512 patterned pages.
        if let shmem = Self.cgroupShmem(supervisor: h.pid, domid: after.domid) {
            #expect(shmem >= 512 * 4096, "shmem charged to the domain's cgroup: \(shmem)")
        }
        // It carries on from where it was.
        #expect(eventually { (Self.lastCounter(h.consoleLog("keeper")) ?? 0) >= atSave + 100 })
        // The same file again: the name is taken, nothing half-made is left.
        let again = try h.xl("restore", image)
        #expect(!again.ok)
        #expect(again.stderr.contains("domain name \"keeper\" already exists"), "\(again.stderr)")
        #expect(try h.list().count == 2)
        _ = try h.xl("destroy", "keeper")
    }

    @Test func aCheckpointLeavesTheDomainRunningAndRestoresBesideIt() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "cp")
        let domid = try #require(try h.list()["cp"]?.domid)
        let image = file(h, "cp.save")
        let r = try h.xl("save", "-c", "cp", image)
        #expect(r.ok, "\(r.stderr)")
        #expect(try h.list()["cp"]?.domid == domid)
        #expect(eventually { h.consoleLog("cp").contains("ram-counter: resumed in place at counter=") })
        let n = Self.lastCounter(h.consoleLog("cp")) ?? 0
        #expect(eventually { (Self.lastCounter(h.consoleLog("cp")) ?? 0) >= n + 100 })
        // xl save -p: suspended, then left paused.
        let p = try h.xl("save", "-p", "cp", file(h, "cp2.save"))
        #expect(p.ok, "\(p.stderr)")
        #expect(try eventually { try h.list()["cp"]?.state.contains("p") == true })
        _ = try h.xl("unpause", "cp")
        // A config given to restore replaces the saved one: a second copy beside the first.
        let other = h.config("cp-copy", mode: "ram-counter", "vcpus = 2\n")
        let copy = try h.xl("restore", other, image)
        #expect(copy.ok, "\(copy.stderr)")
        #expect(eventually { h.consoleLog("cp-copy").contains("ram-check ok") })
        #expect(try h.list()["cp"] != nil)
        _ = try h.xl("destroy", "cp-copy")
        _ = try h.xl("destroy", "cp")
    }

    @Test func migrateBetweenTwoSupervisorsOnOneMachine() throws {
        let a = try SupervisorHarness()
        defer { a.stop() }
        let b = try SupervisorHarness()
        defer { b.stop() }
        try startCounter(a, "mover")
        let receive = "PROCVISOR_RUNDIR=\(b.runDirectory) PROCVISOR_NO_AUTOSTART=1 \(Products.path("xl")) migrate-receive"
        let r = try a.xl("migrate", "-s", "", "mover", receive)
        #expect(r.ok, "\(r.stderr)")
        #expect(r.stderr.contains("migration target: Ready to receive domain."))
        #expect(r.stderr.contains("migration sender: Target reports successful startup."))
        #expect(r.stderr.contains("Migration successful."))
        #expect(try a.list()["mover"] == nil)
        #expect(try a.list()["mover--migratedaway"] == nil)
        let there = try #require(try b.list()["mover"])
        #expect(!there.state.contains("p"))
        #expect(eventually { b.consoleLog("mover").contains("ram-check ok") })
    }

    /// The ssh form: `SSHCOMMAND HOST xl migrate-receive` run through sh -c. A stand-in for ssh
    /// (it takes the host and runs the rest here, against the second supervisor) shows the
    /// command xl builds, options included.
    @Test func migrateThroughAnSSHCommandRunsXlMigrateReceiveOnTheHost() throws {
        let a = try SupervisorHarness()
        defer { a.stop() }
        let b = try SupervisorHarness()
        defer { b.stop() }
        try startCounter(a, "traveller")
        let fake = a.runDirectory + "/fake-ssh"
        let products = String(Products.path("xl").dropLast(3))
        let script = """
            #!/bin/sh
            # fake-ssh HOST COMMAND...: what ssh would run on HOST, run here
            echo "fake-ssh to $1: $*" >&2
            shift
            PROCVISOR_RUNDIR=\(b.runDirectory) PROCVISOR_NO_AUTOSTART=1 PATH=\(products):$PATH exec sh -c "$*"
            """
        _ = FileManager.default.createFile(atPath: fake, contents: Data(script.utf8), attributes: [.posixPermissions: 0o755])
        let r = try a.xl("migrate", "-s", fake, "-e", "-p", "traveller", "otherhost")
        #expect(r.ok, "\(r.stderr)")
        #expect(r.stderr.contains("fake-ssh to otherhost: otherhost xl migrate-receive -e -p"), "\(r.stderr)")
        #expect(try a.list()["traveller"] == nil)
        // -p: left paused at the target.
        #expect(try b.list()["traveller"]?.state.contains("p") == true)
        #expect(try b.xl("unpause", "traveller").ok)
        #expect(eventually { b.consoleLog("traveller").contains("ram-check ok") })
    }

    /// The kvstore pair: a client writes and reads all along while its server is saved and
    /// restored, then migrated (to the same supervisor, as `xl migrate DOMAIN localhost` does in
    /// Xen); not one acknowledged write may be lost, and the network works after each move.
    @Test func theKVStoreLosesNoAcknowledgedWriteAcrossSaveRestoreAndMigration() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = "pks\(getpid() % 100_000)"
        func vif(_ mac: String, _ ip: String) -> String { "vif = [ 'mac=00:16:3e:00:\(mac), ip=\(ip)/24, bridge=\(br)' ]\n" }
        let server = h.config("kvstore", kernel: Products.path("kvstore"), "extra = \"port=7000\"\n" + vif("30:20", "10.0.0.20"))
        #expect(try h.xl("create", "-q", server).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("kvstore").contains("kvstore: serving 10.0.0.20:7000, new table") })
        let client = h.config("kvclient", kernel: Products.path("kvclient"),
                              "extra = \"server=10.0.0.20 port=7000 duration=10 giveup=20\"\n" + vif("30:21", "10.0.0.21"))
        #expect(try h.xl("create", "-q", client).ok)
        Thread.sleep(forTimeInterval: 1.5)
        let image = file(h, "kvstore.save")
        let save = try h.xl("save", "kvstore", image)
        #expect(save.ok, "\(save.stderr)")
        let restore = try h.xl("restore", image)
        #expect(restore.ok, "\(restore.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog("kvstore").contains("table restored with") }, "\(h.consoleLog("kvstore"))")
        Thread.sleep(forTimeInterval: 1.5)
        let receive = "PROCVISOR_RUNDIR=\(h.runDirectory) PROCVISOR_NO_AUTOSTART=1 \(Products.path("xl")) migrate-receive"
        let migrate = try h.xl("migrate", "-s", "", "kvstore", receive)
        #expect(migrate.ok, "\(migrate.stderr)")
        #expect(try h.list()["kvstore"] != nil)
        #expect(try h.list()["kvstore--migratedaway"] == nil)
        // The source's end left the copy's /vm/<uuid> alone.
        let domid = try #require(try h.list()["kvstore"]?.domid)
        let vm = try h.xs("read", "/local/domain/\(domid)/vm").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try h.xs("read", vm + "/name").stdout == "kvstore\n")
        var summary = ""
        #expect(eventually(timeout: 40) {
            summary = h.consoleLog("kvclient").split(separator: "\n").first { $0.hasPrefix("kvclient: puts=") }.map(String.init) ?? ""
            return !summary.isEmpty
        }, "\(h.consoleLog("kvclient"))")
        #expect(summary.contains(" lost=0 wrong=0 "), "\(summary)")
        let acked = summary.split(separator: " ").first { $0.hasPrefix("acked=") }.flatMap { Int($0.dropFirst(6)) } ?? 0
        #expect(acked > 100, "\(summary)")
        print("kvstore across save, restore and migration: \(summary)")
    }

    /// blkcheck's soak writes its disk at depth 8 the whole time; it is checkpointed, saved and
    /// restored, and migrated with writes in flight, and every block it was told was written
    /// reads back after each move and at the end.
    @Test func aBlkcheckSoakVerifiesItsDiskAcrossEveryMove() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let disk = h.runDirectory + "/soak.img"
        _ = FileManager.default.createFile(atPath: disk, contents: nil)
        _ = truncate(disk, 32 << 20)
        #expect(try h.xl("create", "-q", h.config("blkback", kernel: Products.path("blkback"), "driver_domain = 1\n")).ok)
        #expect(eventually { h.consoleLog("blkback").contains("serving vbds") })
        let cfg = h.config("soak", kernel: Products.path("blkcheck"),
                           "extra = \"mode=soak duration=6 depth=8 span=32768\"\nmemory = 32\n"
                           + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(disk)' ]\n")
        #expect(try h.xl("create", "-q", cfg).ok)
        #expect(eventually(timeout: 20) { h.consoleLog("soak").contains("soak: xvda 4096 blocks") }, "\(h.consoleLog("soak"))")
        Thread.sleep(forTimeInterval: 0.7)
        let cp = try h.xl("save", "-c", "soak", file(h, "soak.cp"))
        #expect(cp.ok, "\(cp.stderr)")
        #expect(eventually { h.consoleLog("soak").contains("soak: resumed in place") })
        // A config whose disk is missing on this host: the restore is refused, naming it, and
        // leaves nothing (the checkpoint's domain runs on).
        let missing = h.config("soak-elsewhere", kernel: Products.path("blkcheck"),
                               "extra = \"mode=soak duration=6 depth=8 span=32768\"\nmemory = 32\n"
                               + "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(h.runDirectory)/gone.img' ]\n")
        let elsewhere = try h.xl("restore", missing, file(h, "soak.cp"))
        #expect(!elsewhere.ok)
        #expect(elsewhere.stderr.contains("gone.img: No such file or directory"), "\(elsewhere.stderr)")
        #expect(try h.list()["soak-elsewhere"] == nil)
        Thread.sleep(forTimeInterval: 0.5)
        let image = file(h, "soak.save")
        let save = try h.xl("save", "soak", image)
        #expect(save.ok, "\(save.stderr)")
        let restore = try h.xl("restore", image)
        #expect(restore.ok, "\(restore.stderr)")
        #expect(eventually(timeout: 20) { h.consoleLog("soak").contains("soak: after resume 1:") }, "\(h.consoleLog("soak"))")
        Thread.sleep(forTimeInterval: 0.7)
        let receive = "PROCVISOR_RUNDIR=\(h.runDirectory) PROCVISOR_NO_AUTOSTART=1 \(Products.path("xl")) migrate-receive"
        let migrate = try h.xl("migrate", "-s", "", "soak", receive)
        #expect(migrate.ok, "\(migrate.stderr)")
        #expect(eventually(timeout: 60) { h.consoleLog("soak").contains("soak OK") || h.consoleLog("soak").contains("FAILED") },
                "\(h.consoleLog("soak"))\n\(h.consoleLog("blkback"))")
        let log = h.consoleLog("soak")
        #expect(log.contains("soak: after resume 2:"), "\(log)")
        #expect(log.contains("soak OK writes=") && log.contains(" resumes=2"), "\(log)")
        #expect(!log.contains("FAILED"), "\(log)")
    }

    /// DomainRuntime publishes a suspend event channel (`device/suspend/event-channel`, a port
    /// unbound for domain 0), and a save signals it rather than writing `control/shutdown`, as
    /// libxl does; the same channel serves every later checkpoint.
    @Test func theSuspendRequestGoesThroughTheGuestsSuspendEventChannel() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "ec")
        let domid = try #require(try h.list()["ec"]?.domid)
        let node = "/local/domain/\(domid)/device/suspend/event-channel"
        #expect(eventually { Int((try? h.xs("read", node).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? "") != nil })
        let port = try #require(Int(try h.xs("read", node).stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        for round in 1...2 {
            let r = try h.xl("save", "-c", "ec", file(h, "ec\(round).save"))
            #expect(r.ok, "round \(round): \(r.stderr)")
            #expect(eventually { h.consoleLog("ec").components(separatedBy: "ram-counter: resumed in place at counter=").count == round + 1 })
        }
        let dmesg = try h.dmesg()
        #expect(dmesg.components(separatedBy: "dom\(domid) (ec): suspend requested through event channel \(port)").count == 3, "\(dmesg)")
        #expect(!dmesg.contains("through control/shutdown"), "\(dmesg)")
        let n = Self.lastCounter(h.consoleLog("ec")) ?? 0
        #expect(eventually { (Self.lastCounter(h.consoleLog("ec")) ?? 0) >= n + 100 })
    }

    /// What the guest wrote in `device/suspend/event-channel` is untrusted: a value that names no
    /// port domain 0 can bind fails the save with the reason, as libxl's "Suspend event channel
    /// initialization failed", and the guest keeps running; an empty node means control/shutdown.
    @Test func aSuspendEventChannelThatCannotBeBoundFailsTheSaveOnly() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "liar")
        let domid = try #require(try h.list()["liar"]?.domid)
        let node = "/local/domain/\(domid)/device/suspend/event-channel"
        #expect(eventually { (try? h.xs("read", node).stdout).map { $0 != "\n" } == true })
        let store = try h.xs("read", "/local/domain/\(domid)/store/port").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let image = file(h, "liar.save")
        let cases: [(String, String)] = [
            ("garbage\u{1}", "device/suspend/event-channel is \"garbage?\", not a port"),
            ("0", "device/suspend/event-channel is \"0\", not a port"),
            ("70000", "device/suspend/event-channel is \"70000\", not a port"),
            ("1000", "port 1000 is not allocated"),
            (store, "it is the XenStore port"),
        ]
        for (value, why) in cases {
            #expect(try h.xs("write", node, value).ok)
            let r = try h.xl("save", "liar", image)
            #expect(!r.ok, "\(value): \(r.stdout)")
            #expect(r.stderr.contains("suspend event channel initialization failed: \(why); it keeps running"), "\(value): \(r.stderr)")
            #expect(!FileIO.exists(image))
            #expect(try h.list()["liar"]?.domid == domid)
        }
        // Emptied: the request goes through control/shutdown, and the save works.
        #expect(try h.xs("write", node, "").ok)
        let r = try h.xl("save", "-c", "liar", image)
        #expect(r.ok, "\(r.stderr)")
        #expect(try h.dmesg().contains("dom\(domid) (liar): suspend requested through control/shutdown"))
        let n = Self.lastCounter(h.consoleLog("liar")) ?? 0
        #expect(eventually { (Self.lastCounter(h.consoleLog("liar")) ?? 0) >= n + 100 })
    }

    @Test func aGuestThatNeverSuspendsTimesOutAndKeepsRunning() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_SUSPEND_TIMEOUT_MS": "800"])
        defer { h.stop() }
        try h.create("stubborn", mode: "suspend-ignore")
        #expect(eventually { h.consoleLog("stubborn").contains("ignoring every request") })
        let image = file(h, "stubborn.save")
        let r = try h.xl("save", "stubborn", image)
        #expect(!r.ok)
        #expect(r.stderr.contains("guest did not suspend, timed out (800 ms); it keeps running"), "\(r.stderr)")
        #expect(!FileIO.exists(image))
        #expect(try h.list()["stubborn"]?.state.contains("s") == false)
        // A second save is allowed once the first gave up, and fails the same way.
        #expect(try !h.xl("save", "stubborn", image).ok)
        _ = try h.xl("destroy", "stubborn")
    }

    @Test func aGuestThatNeverAcknowledgesHasTheRequestCancelled() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_SUSPEND_TIMEOUT_MS": "800"])
        defer { h.stop() }
        try h.create("deaf", mode: "suspend-deaf")
        #expect(eventually { h.consoleLog("deaf").contains("deaf to the toolstack") })
        #expect(eventually { h.consoleLog("deaf").contains("suspend event channel withdrawn") })
        let image = file(h, "deaf.save")
        let r = try h.xl("save", "deaf", image)
        #expect(!r.ok)
        #expect(r.stderr.contains("guest didn't acknowledge suspend, cancelling request (800 ms); it keeps running"), "\(r.stderr)")
        #expect(!FileIO.exists(image))
        // libxl takes its request back: control/shutdown is empty again.
        let domid = try #require(try h.list()["deaf"]?.domid)
        #expect(try h.xs("read", "/local/domain/\(domid)/control/shutdown").stdout == "\n")
        #expect(try h.list()["deaf"]?.state.contains("s") == false)
    }

    /// The same through the suspend event channel: the signal is never taken, the request is
    /// withdrawn (the bit cleared) with libxl's message, and the guest runs on; a second save
    /// fails the same way rather than finding the first still pending.
    @Test func aGuestThatNeverTakesItsSuspendEventHasTheRequestCancelled() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_SUSPEND_TIMEOUT_MS": "800"])
        defer { h.stop() }
        try h.create("deaf", mode: "suspend-deaf-evtchn")
        #expect(eventually { h.consoleLog("deaf").contains("deaf, with its suspend event channel") })
        let domid = try #require(try h.list()["deaf"]?.domid)
        #expect(eventually { Int((try? h.xs("read", "/local/domain/\(domid)/device/suspend/event-channel").stdout
                                    .trimmingCharacters(in: .whitespacesAndNewlines)) ?? "") != nil })
        let image = file(h, "deaf.save")
        for round in 1...2 {
            let r = try h.xl("save", "deaf", image)
            #expect(!r.ok)
            #expect(r.stderr.contains("guest didn't acknowledge suspend, cancelling request (800 ms); it keeps running"), "round \(round): \(r.stderr)")
            #expect(!FileIO.exists(image))
            #expect(try h.list()["deaf"]?.domid == domid)
        }
        #expect(try h.dmesg().contains("dom\(domid) (deaf): suspend requested through event channel"))
    }

    @Test func aGuestThatCrashesDuringSuspendFailsTheSaveOnly() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("fragile", mode: "suspend-crash", "on_crash = \"preserve\"\n")
        try h.create("bystander", mode: "run")
        #expect(eventually { h.consoleLog("fragile").contains("will crash") })
        let image = file(h, "fragile.save")
        let r = try h.xl("save", "fragile", image)
        #expect(!r.ok)
        #expect(r.stderr.contains("died during suspend") || r.stderr.contains("crashed during suspend"), "\(r.stderr)")
        #expect(!FileIO.exists(image))
        #expect(try eventually { try h.list()["bystander"]?.state == "-b----" })
    }

    @Test func damagedFilesAreRefusedAndLeaveNothingBehind() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "victim")
        let image = file(h, "victim.save")
        #expect(try h.xl("save", "victim", image).ok)
        let bytes = try FileIO.read(image, limit: 64 << 20)
        // Every record boundary (and the headers' end): walk the records.
        var boundaries: [Int] = [0, 1, 31, 48]
        let configLength = Int(UInt32(bytes[48]) | UInt32(bytes[49]) << 8 | UInt32(bytes[50]) << 16 | UInt32(bytes[51]) << 24)
        var at = 48 + 4 + configLength + 4
        boundaries += [at, at + 24, at + 40]
        at += 56
        while at + 8 <= bytes.count {
            boundaries.append(at)
            let length = Int(UInt32(bytes[at + 4]) | UInt32(bytes[at + 5]) << 8 | UInt32(bytes[at + 6]) << 16 | UInt32(bytes[at + 7]) << 24)
            boundaries.append(at + 8 + length / 2)
            at += 8 + length + (8 - length % 8) % 8
        }
        #expect(at == bytes.count)
        let cut = file(h, "cut.save")
        for b in boundaries where b < bytes.count {
            let fd = try FileDescriptor.open(cut, [.writeOnly, .create, .truncate])
            try fd.writeAll(Array(bytes[0..<b]))
            fd.close()
            let r = try h.xl("restore", cut)
            #expect(!r.ok, "cut at \(b)")
            #expect(r.stderr.contains("truncated") || r.stderr.contains("not an xl save file"), "cut at \(b): \(r.stderr)")
            #expect(try h.list().count == 1, "cut at \(b): a domain was left")
        }
        // Flipped bytes: in the config, a page, the console record, the last checksum.
        for offset in [60, bytes.count / 2, bytes.count - 100, bytes.count - 12] {
            var bad = bytes
            bad[offset] ^= 0x20
            let fd = try FileDescriptor.open(cut, [.writeOnly, .truncate])
            try fd.writeAll(bad)
            fd.close()
            let r = try h.xl("restore", cut)
            #expect(!r.ok, "flip at \(offset)")
            #expect(r.stderr.contains("offset"), "flip at \(offset): \(r.stderr)")
            #expect(try h.list().count == 1, "flip at \(offset): a domain was left")
        }
        // And the intact file still restores: the refusals held nothing (domid, name, memory).
        let ok = try h.xl("restore", image)
        #expect(ok.ok, "\(ok.stderr)")
        #expect(eventually { h.consoleLog("victim").contains("ram-check ok") })
        _ = try h.xl("destroy", "victim")
    }

    @Test func aTargetWithoutMemoryOrWithTheNameTakenRefusesAndTheSourceResumes() throws {
        let a = try SupervisorHarness()
        defer { a.stop() }
        let small = try SupervisorHarness(extraEnv: ["PROCVISOR_MEMORY_MB": "8"])
        defer { small.stop() }
        try startCounter(a, "big")
        let toSmall = "PROCVISOR_RUNDIR=\(small.runDirectory) PROCVISOR_NO_AUTOSTART=1 \(Products.path("xl")) migrate-receive"
        let r = try a.xl("migrate", "-s", "", "big", toSmall)
        #expect(!r.ok)
        #expect(r.stderr.contains("not enough free machine memory"), "\(r.stderr)")
        #expect(r.stderr.contains("Migration failed, resuming at sender."))
        #expect(try eventually { try a.list()["big"]?.state.contains("s") == false })
        let n = Self.lastCounter(a.consoleLog("big")) ?? 0
        #expect(eventually { (Self.lastCounter(a.consoleLog("big")) ?? 0) >= n + 50 })
        #expect(try small.list().count == 1)

        // The name is taken at the target: the receiver cannot rename its copy, reports failure
        // after the go, destroys its copy, and the sender takes its domain back.
        let b = try SupervisorHarness()
        defer { b.stop() }
        try b.create("big", mode: "run")
        let toB = "PROCVISOR_RUNDIR=\(b.runDirectory) PROCVISOR_NO_AUTOSTART=1 \(Products.path("xl")) migrate-receive"
        let t = try a.xl("migrate", "-s", "", "big", toB)
        #expect(!t.ok)
        #expect(t.stderr.contains("Target reports startup failure"), "\(t.stderr)")
        #expect(t.stderr.contains("migration sender: Resumed OK."))
        #expect(try eventually { try a.list()["big"]?.state.contains("s") == false })
        #expect(try b.list()["big--incoming"] == nil)
    }

    @Test func aReceiverThatDiesMidStreamLeavesTheSourceRunning() throws {
        let a = try SupervisorHarness()
        defer { a.stop() }
        try startCounter(a, "src")
        // Says the banner, takes 64 KiB of the stream, and goes away.
        let dying = "printf 'xl migration receiver ready, send binary domain data.\\n'; head -c 65536 >/dev/null"
        let r = try a.xl("migrate", "-s", "", "src", dying)
        #expect(!r.ok)
        #expect(r.stderr.contains("Migration failed, resuming at sender."), "\(r.stderr)")
        #expect(try eventually { try a.list()["src"]?.state.contains("s") == false })
        let n = Self.lastCounter(a.consoleLog("src")) ?? 0
        #expect(eventually { (Self.lastCounter(a.consoleLog("src")) ?? 0) >= n + 50 })
        // A receiver fed a stream that stops (its sender killed) keeps nothing.
        let b = try SupervisorHarness()
        defer { b.stop() }
        let image = file(a, "src.save")
        #expect(try a.xl("save", "-c", "src", image).ok)
        let bytes = try FileIO.read(image, limit: 64 << 20)
        let cut = file(a, "partial.save")
        let fd = try FileDescriptor.open(cut, [.writeOnly, .create, .truncate])
        try fd.writeAll(Array(bytes[0..<(bytes.count / 2)]))
        fd.close()
        let recv = try runCommand("/bin/sh", ["-c", "\(Products.path("xl")) migrate-receive < \(cut) > /dev/null"],
                                  env: b.env.merging(["PROCVISOR_NO_AUTOSTART": "1"]) { $1 })
        #expect(!recv.ok)
        #expect(recv.stderr.contains("migration target: Domain creation failed"), "\(recv.stderr)")
        #expect(try b.list().count == 1)
    }

    @Test func killingTheSaverResumesTheDomain() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startCounter(h, "held")
        // A FIFO nobody drains: xl blocks writing the stream with the domain suspended.
        let fifo = file(h, "stuck.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = try FileDescriptor.open(fifo, [.readOnly, .nonBlocking])
        defer { reader.close() }
        let xl = Foundation.Process()
        xl.executableURL = URL(fileURLWithPath: Products.path("xl"))
        xl.arguments = ["save", "held", fifo]
        xl.environment = h.env
        xl.standardError = FileHandle.nullDevice
        try xl.run()
        #expect(try eventually { try h.list()["held"]?.state.contains("s") == true })
        kill(xl.processIdentifier, SIGKILL)
        xl.waitUntilExit()
        #expect(try eventually { try h.list()["held"]?.state.contains("s") == false })
        #expect(eventually { h.consoleLog("held").contains("resumed in place") })
        #expect(try h.dmesg().contains("its saver went away; resuming it"))
    }
}

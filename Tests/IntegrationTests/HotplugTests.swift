import Foundation
import Glibc
import LinuxHost
import Testing

/// Disk hot plug: `xl block-attach`, `xl block-list`, `xl block-detach [-f]` against a running
/// guest (testguest `mode=hotplug`, which finds its vbds with its own watch on `device/vbd` and
/// drives them with blkfront), and the default blkback driver domain started on demand.
@Suite struct HotplugTests {
    /// A sparse image of `mb` MiB in the run directory.
    func image(_ h: SupervisorHarness, _ name: String, mb: Int = 8) -> String {
        let path = h.runDirectory + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        _ = truncate(path, off_t(mb) << 20)
        return path
    }

    /// A blkback driver domain under a name that is not the default one.
    func startBlkback(_ h: SupervisorHarness, _ name: String = "bb") throws {
        let r = try h.xl("create", "-q", h.config(name, kernel: Products.path("blkback"), "driver_domain = 1\nmemory = 64\n"))
        #expect(r.ok, "\(r.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog(name).contains("serving vbds") }, "\(h.consoleLog(name))")
    }

    func hotplugGuest(_ h: SupervisorHarness, _ name: String, _ args: String = "", disk: String) throws {
        try h.create(name, "extra = \"mode=hotplug \(args)\"\nmemory = 32\ndisk = [ '\(disk)' ]\n")
    }

    func occurrences(_ text: String, _ line: String) -> Int { text.components(separatedBy: line).count - 1 }

    /// printf's `%-Ns` for the expected block-list text.
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

    /// The row xl would print, from XenStore: the frontend's `state`, `event-channel` and
    /// `ring-ref` (`ring-ref0` for a multi-page ring), -1 where missing (as with several queues,
    /// whose nodes are under `queue-N/`).
    func blockListRow(_ h: SupervisorHarness, fe: Int, be: Int, devid: Int) throws -> String {
        let f = "/local/domain/\(fe)/device/vbd/\(devid)"
        func read(_ p: String) throws -> String? {
            let r = try h.xs("read", p)
            return r.ok ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }
        return [pad("\(devid)", 5), pad("\(be)", 3), pad("\(fe)", 6), pad(try read(f + "/state") ?? "-1", 5),
                pad(try read(f + "/event-channel") ?? "-1", 6), pad(try read(f + "/ring-ref") ?? (try read(f + "/ring-ref0")) ?? "-1", 8),
                pad("/local/domain/\(be)/backend/vbd/\(fe)/\(devid)", 30)].joined(separator: " ")
    }

    static let header = "Vdev  BE  handle state evt-ch ring-ref BE-path                       "

    /// Every 512-byte sector of the image from `from` on is zero or the pattern the guest writes.
    func checkPattern(_ path: String, from: Int) throws -> Int {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var bad = 0
        data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            for s in from..<(data.count / 512) {
                let base = s * 512
                var zero = true, pattern = true
                for i in 0..<512 {
                    let b = p[base + i]
                    if b != 0 { zero = false }
                    if b != UInt8(truncatingIfNeeded: UInt64(s) &* 131 &+ UInt64(i) &* 7 &+ 1) { pattern = false }
                    if !zero && !pattern { break }
                }
                if !zero && !pattern { bad += 1 }
            }
        }
        return bad
    }

    @Test func attachListDetachAndReattachWhileTheGuestRuns() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS": "10000"])
        defer { h.stop() }
        try startBlkback(h)
        let a = image(h, "a.img"), b = image(h, "b.img")
        try hotplugGuest(h, "g", disk: "vdev=xvda, access=rw, backend=bb, target=\(a)")
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda verified") }, "\(h.consoleLog("g"))")

        // Attach: the spec in several parts, as xl takes it.
        let attach = try h.xl("block-attach", "g", "format=raw", "vdev=xvdb", "access=rw", "backend=bb", "target=\(b)")
        #expect(attach.ok && attach.stdout.isEmpty && attach.stderr.isEmpty, "\(attach.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvdb verified") }, "\(h.consoleLog("g"))\n\(h.consoleLog("bb"))")
        #expect(h.consoleLog("g").contains("hotplug: found xvdb (vbd 51728)\n"))
        let marker = try Data(contentsOf: URL(fileURLWithPath: b)).prefix(16)
        #expect(String(decoding: marker, as: UTF8.self) == "HOTPLUG xvdb dom")
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51728/params").stdout == b + "\n")
        #expect(try h.xs("read", "/local/domain/2/device/vbd/51728/backend").stdout == "/local/domain/1/backend/vbd/2/51728\n")

        // block-list: xl's header and columns, values as XenStore has them, both Connected.
        let list = try h.xl("block-list", "g")
        #expect(list.ok)
        let expected = [Self.header, try blockListRow(h, fe: 2, be: 1, devid: 51712), try blockListRow(h, fe: 2, be: 1, devid: 51728)]
        #expect(list.stdout == expected.joined(separator: "\n") + "\n", "\(list.stdout)")
        for row in expected.dropFirst() { #expect(row.split(separator: " ")[3] == "4", "\(row)") }
        // An unknown domain among several is reported and skipped, as xl does (status 0).
        let mixed = try h.xl("block-list", "ghost", "g")
        #expect(mixed.ok && mixed.stderr == "ghost is an invalid domain identifier\n", "\(mixed.stderr)")
        #expect(mixed.stdout == list.stdout)

        // Detach the idle disk: the guest closes it, xl returns once the nodes are gone.
        let start = Date()
        let detach = try h.xl("block-detach", "g", "xvdb")
        let took = Date().timeIntervalSince(start)
        #expect(detach.ok && detach.stderr.isEmpty, "\(detach.stderr)\n\(h.consoleLog("g"))")
        #expect(took < 8, "block-detach took \(took) s")
        // The guest says so once its close handshake is over (xl may be back first).
        #expect(eventually(timeout: 10) { h.consoleLog("g").contains("hotplug: xvdb closed; late read: xvdb (vbd 51728): closed\n") },
                "\(h.consoleLog("g"))")
        #expect(try h.xs("exists", "/local/domain/2/device/vbd/51728").status == 1)
        #expect(try h.xs("exists", "/local/domain/1/backend/vbd/2/51728").status == 1)
        #expect(try h.xs("exists", "/local/domain/1/backend/vbd/2/51712").status == 0)
        // The backend keeps serving the other disk.
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda ok after xvdb left") }, "\(h.consoleLog("g"))")
        #expect(try h.xl("block-list", "g").stdout == Self.header + "\n" + blockListRow(h, fe: 2, be: 1, devid: 51712) + "\n")
        #expect(try h.dmesg().contains("dom2: disk xvdb (51728) detached from backend dom1"))

        // The same vdev again, then detached by its number.
        #expect(try h.xl("block-attach", "g", "vdev=xvdb, access=rw, backend=bb, target=\(b)").ok)
        #expect(eventually(timeout: 30) { occurrences(h.consoleLog("g"), "hotplug: xvdb verified") == 2 }, "\(h.consoleLog("g"))\n\(h.consoleLog("bb"))")
        let byNumber = try h.xl("block-detach", "g", "51728")
        #expect(byNumber.ok, "\(byNumber.stderr)")
        #expect(eventually(timeout: 10) { occurrences(h.consoleLog("g"), "hotplug: xvdb closed;") == 2 }, "\(h.consoleLog("g"))")
        #expect(try h.xs("exists", "/local/domain/2/device/vbd/51728").status == 1)
        #expect(try h.list()["g"] != nil && h.list()["bb"] != nil)
        #expect(try checkPattern(a, from: 1) == 0 && checkPattern(b, from: 1) == 0)
    }

    /// blkback killed while a disk is being hot-plugged (stopped first, so the new disk's
    /// handshake is surely under way): the new incarnation takes the connected disk over and
    /// connects the new one afresh, and the guest verifies it.
    @Test func aBackendKilledDuringAHotPlugConnectsTheNewDiskAfresh() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startBlkback(h)
        let a = image(h, "a.img"), b = image(h, "b.img")
        try hotplugGuest(h, "g", disk: "vdev=xvda, access=rw, backend=bb, target=\(a)")
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda verified") }, "\(h.consoleLog("g"))")
        let pid = try #require(BackendRestartTests.pid(of: Products.path("blkback"), in: h))
        kill(pid, SIGSTOP)
        #expect(try h.xl("block-attach", "g", "vdev=xvdb, access=rw, backend=bb, target=\(b)").ok)
        // The frontend has started its half; the stopped backend has done nothing for the disk.
        #expect(eventually { (try? h.xs("read", "/local/domain/2/device/vbd/51728/state").stdout) != nil })
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51728/state").stdout != "4\n")
        kill(pid, SIGKILL)
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvdb verified") }, "\(h.consoleLog("g"))\n\(h.consoleLog("bb"))")
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("dom1 (bb): crashed (killed by SIGKILL): restarted in place"), "\(dmesg)")
        #expect(h.consoleLog("bb").contains("vbd 2/51712 resumed"), "\(h.consoleLog("bb"))")
        #expect(try h.list()["g"] != nil)
        #expect(try checkPattern(a, from: 1) == 0 && checkPattern(b, from: 1) == 0)
    }

    @Test func detachWhileTheGuestHasIOInFlight() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS": "10000"])
        defer { h.stop() }
        try startBlkback(h)
        let a = image(h, "a.img"), b = image(h, "b.img")
        try hotplugGuest(h, "g", "busy=xvdb", disk: "vdev=xvda, access=rw, backend=bb, target=\(a)")
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda verified") }, "\(h.consoleLog("g"))")
        #expect(try h.xl("block-attach", "g", "vdev=xvdb, access=rw, backend=bb, target=\(b)").ok)
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvdb busy") }, "\(h.consoleLog("g"))")
        usleep(1_000_000)
        let start = Date()
        let detach = try h.xl("block-detach", "g", "xvdb", timeout: 60)
        let took = Date().timeIntervalSince(start)
        #expect(detach.ok, "\(detach.stderr)\n\(h.consoleLog("g"))")
        #expect(took < 10, "block-detach took \(took) s")
        // What was on the ring finished; nothing hangs; the guest carries on with its other disk.
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda ok after xvdb left") }, "\(h.consoleLog("g"))")
        let log = h.consoleLog("g")
        let stopped = log.split(separator: "\n").first { $0.hasPrefix("hotplug: xvdb io stopped:") }.map(String.init) ?? ""
        #expect(stopped.contains(" mismatches=0 "), "\(log)")
        #expect(!stopped.contains("ok=0 "), "\(stopped)")
        #expect(!stopped.contains("inflight-at-detach=-1"), "\(stopped)")
        let alive = occurrences(log, "hotplug: alive")
        #expect(eventually(timeout: 10) { occurrences(h.consoleLog("g"), "hotplug: alive") > alive })
        #expect(try h.list()["g"] != nil)
        #expect(try h.xs("exists", "/local/domain/1/backend/vbd/2/51728").status == 1)
        // Only whole, correct sectors reached the image.
        #expect(try checkPattern(b, from: 1) == 0)
    }

    /// A guest that does not answer: the safe removal fails after the timeout and the device
    /// stays; `-f` then removes it; the guest's I/O fails with an error when it looks again.
    @Test func aGuestThatDoesNotReleaseTheDiskFailsTheDetachUntilForced() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS": "1500"])
        defer { h.stop() }
        try startBlkback(h)
        let a = image(h, "a.img"), b = image(h, "b.img")
        try hotplugGuest(h, "g", "busy=xvdb deaf=8", disk: "vdev=xvda, access=rw, backend=bb, target=\(a)")
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda verified") }, "\(h.consoleLog("g"))")
        #expect(try h.xl("block-attach", "g", "vdev=xvdb, access=rw, backend=bb, target=\(b)").ok)
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvdb busy") }, "\(h.consoleLog("g"))")
        usleep(500_000)
        #expect(try h.xs("write", "/local/domain/2/data/deaf", "1").ok)
        #expect(eventually(timeout: 10) { h.consoleLog("g").contains("hotplug: deaf for 8.0 s; outstanding xvda=0 xvdb=") }, "\(h.consoleLog("g"))")
        let start = Date()
        let safe = try h.xl("block-detach", "g", "xvdb")
        #expect(Date().timeIntervalSince(start) < 6)
        #expect(!safe.ok)
        #expect(safe.stderr.hasSuffix("the guest did not release the device (xl block-detach -f forces the removal)\nlibxl_device_disk_safe_remove failed.\n"), "\(safe.stderr)")
        #expect(safe.stderr.hasPrefix("unable to remove device with path /local/domain/1/backend/vbd/2/51728: the backend did not reach Closed (6) within 1500 ms"), "\(safe.stderr)")
        // The device stays, as libxl leaves it: offline, Closing.
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51728/online").stdout == "0\n")
        #expect(try h.xl("block-list", "g").stdout.contains("\n51728 "))
        let forced = try h.xl("block-detach", "-f", "g", "xvdb")
        #expect(forced.ok, "\(forced.stderr)")
        #expect(try h.xs("exists", "/local/domain/2/device/vbd/51728").status == 1)
        #expect(try h.xs("exists", "/local/domain/1/backend/vbd/2/51728").status == 1)
        // Once awake, the guest finds its requests failed with an error, not hung; it runs on.
        #expect(eventually(timeout: 30) { h.consoleLog("g").contains("hotplug: xvda ok after xvdb left") }, "\(h.consoleLog("g"))")
        let log = h.consoleLog("g")
        #expect(log.contains("hotplug: deaf over; backend states xvda=4 xvdb=gone"), "\(log)")
        #expect(log.contains("first-error=xvdb (vbd 51728): disconnected: the toolstack removed the device"), "\(log)")
        let stopped = log.split(separator: "\n").first { $0.hasPrefix("hotplug: xvdb io stopped:") }.map(String.init) ?? ""
        #expect(stopped.contains(" mismatches=0 ") && !stopped.contains("first-error=none"), "\(log)")
        #expect(try h.list()["g"] != nil && h.list()["bb"] != nil)
        #expect(try checkPattern(b, from: 1) == 0)
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("dom2 did not release the device, which stays attached"), "\(dmesg)")
        #expect(dmesg.contains("dom2 (g): disk xvdb (51728): forced removal"), "\(dmesg)")
    }

    @Test func badAttachesAndDetachesAreRefusedWithXensMessages() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("be", mode: "be-peek", "driver_domain = 1\n")
        let a = image(h, "a.img"), b = image(h, "b.img")
        try h.create("g", mode: "run", "disk = [ 'vdev=xvda, access=rw, backend=be, target=\(a)' ]\n")
        func attach(_ spec: String) throws -> CommandResult { try h.xl("block-attach", "g", spec) }
        func refused(_ r: CommandResult, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(!r.ok && r.status == 1, sourceLocation: sourceLocation)
            #expect(r.stderr == message + "\nlibxl_device_disk_add failed.\n", "\(r.stderr)", sourceLocation: sourceLocation)
        }
        refused(try attach("vdev=xvda, access=rw, backend=be, target=\(b)"),
                "disk xvda: vdev xvda is already in use by dom2 (g): device 51712 already exists in xenstore")
        refused(try attach("vdev=51712, access=rw, backend=be, target=\(b)"),
                "disk 51712: vdev 51712 is already in use by dom2 (g) (attached as xvda): device 51712 already exists in xenstore")
        refused(try attach("vdev=xvdb, access=rw, backend=be, target=\(h.runDirectory)/nope.img"),
                "disk xvdb: \(h.runDirectory)/nope.img: No such file or directory (errno 2)")
        refused(try attach("vdev=xvdb, access=rw, backend=g, target=\(b)"),
                "disk xvdb: domain \"g\" is not a driver domain (set driver_domain = 1 in its config)")
        refused(try attach("vdev=xvdb, access=rw, backend=ghost, target=\(b)"), "disk xvdb: backend domain \"ghost\" is not running")
        let candidates = ["/sys/kernel/uevent_seqnum", "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "/sys/kernel/profiling"]
        if let ro = candidates.first(where: { open($0, O_RDWR) < 0 && errno == EACCES }) {
            let r = try attach("vdev=xvdb, access=rw, backend=be, target=\(ro)")
            #expect(r.stderr.hasPrefix("disk xvdb: \(ro) is read-only but the disk has access=rw"), "\(r.stderr)")
            #expect(r.stderr.hasSuffix("\nlibxl_device_disk_add failed.\n") && r.status == 1)
        } else {
            Issue.record("no read-only file found to test access=rw on a read-only image")
        }
        // xl's own refusals: the spec, the domain.
        let badSpec = try attach("vdev=xvdb, format=zip, target=\(b)")
        #expect(badSpec.status == 1 && badSpec.stderr.contains("config parsing error in disk specification: unknown value for format: near `zip'"), "\(badSpec.stderr)")
        let noDomain = try h.xl("block-attach", "ghost", "vdev=xvdb, target=\(b)")
        #expect(noDomain.status == 1 && noDomain.stderr == "ghost is an invalid domain identifier\n", "\(noDomain.stderr)")
        // Detach: unknown device (by name, number or nonsense), unknown domain (name or number).
        for dev in ["xvdc", "51744", "nonsense"] {
            let r = try h.xl("block-detach", "g", dev)
            #expect(r.status == 1 && r.stderr == "Error: Device \(dev) not connected.\n", "\(r.stderr)")
        }
        let ghost = try h.xl("block-detach", "ghost", "xvda")
        #expect(ghost.status == 1 && ghost.stderr == "ghost is an invalid domain identifier (rc=-6)\n", "\(ghost.stderr)")
        let gone = try h.xl("block-detach", "77", "xvda")
        #expect(gone.status == 1 && gone.stderr == "Error: Device xvda not connected.\n", "\(gone.stderr)")
        // Nothing was attached or detached meanwhile.
        #expect(try h.xs("list", "/local/domain/2/device/vbd").stdout == "51712\n")
        #expect(try h.xs("list", "/local/domain/1/backend/vbd/2").stdout == "51712\n")
        #expect(try h.xl("block-list", "g").stdout.split(separator: "\n").count == 2)
        #expect(try h.list().keys.sorted() == ["Domain-0", "be", "g"])
    }

    /// `xl block-detach -f` of a disk whose guest never connected it (the backend waits at
    /// InitWait): blkback sees the frontend directory go and closes the device, so the forced
    /// removal completes at once instead of running into the timeout.
    @Test func forcedDetachOfADiskTheGuestNeverOpened() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try startBlkback(h)
        try h.create("g", mode: "run", "disk = [ 'vdev=xvda, access=rw, backend=bb, target=\(image(h, "a.img"))' ]\n")
        let state = "/local/domain/1/backend/vbd/2/51712/state"
        #expect(eventually { (try? h.xs("read", state).stdout) == "2\n" }, "backend never reached InitWait")
        let started = Date()
        let r = try h.xl("block-detach", "-f", "g", "xvda")
        #expect(r.ok, "\(r.stderr)")
        #expect(Date().timeIntervalSince(started) < 5, "the forced detach waited for the timeout")
        let backendGone = try !h.xs("read", state).ok, frontends = try h.xs("list", "/local/domain/2/device/vbd").stdout
        #expect(backendGone && frontends == "")
        #expect(eventually { h.consoleLog("bb").contains("vbd 2/51712: the frontend closed the device") }, "\(h.consoleLog("bb"))")
        let domains = try h.list()
        #expect(domains["bb"] != nil && domains["g"] != nil)
    }

    @Test func disksWithoutABackendGoToABlkbackStartedOnDemand() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let a = image(h, "a.img"), b = image(h, "b.img"), c = image(h, "c.img")
        try hotplugGuest(h, "g1", "queues=2", disk: "vdev=xvda, access=rw, target=\(a)")
        // Started before the guest, shown like any domain.
        let list = try h.list()
        #expect(list["blkback"]?.domid == 1 && list["g1"]?.domid == 2, "\(list)")
        #expect(try h.dmesg().contains("disk xvda: no backend= given: started the default driver domain dom1 (blkback) from \(Products.path("blkback"))"))
        #expect(eventually(timeout: 30) { h.consoleLog("g1").contains("hotplug: xvda verified") }, "\(h.consoleLog("g1"))\n\(h.consoleLog("blkback"))")
        // Reused by a hot-plugged disk and by another guest.
        #expect(try h.xl("block-attach", "g1", "vdev=xvdb, access=rw, target=\(b)").ok)
        #expect(eventually(timeout: 30) { h.consoleLog("g1").contains("hotplug: xvdb verified") }, "\(h.consoleLog("g1"))")
        try hotplugGuest(h, "g2", "ring_order=2", disk: "vdev=xvda, access=rw, target=\(c)")
        #expect(eventually(timeout: 30) { h.consoleLog("g2").contains("hotplug: xvda verified") }, "\(h.consoleLog("g2"))")
        #expect(try h.xl("block-list", "g1", "g2").stdout == [Self.header, try blockListRow(h, fe: 2, be: 1, devid: 51712),
                                                               try blockListRow(h, fe: 2, be: 1, devid: 51728),
                                                               try blockListRow(h, fe: 3, be: 1, devid: 51712)].joined(separator: "\n") + "\n")
        // Two queues: xl finds no event-channel or ring-ref at the top (-1); four ring pages: ring-ref0.
        let rows = try h.xl("block-list", "g1", "g2").stdout.split(separator: "\n").dropFirst().map { $0.split(separator: " ") }
        #expect(rows.count == 3 && rows[0][4] == "-1" && rows[0][5] == "-1" && rows[1][4] == "-1", "\(rows)")
        let ringRef0 = try h.xs("read", "/local/domain/3/device/vbd/51712/ring-ref0").stdout.dropLast()
        #expect(rows.count == 3 && rows[2][5] == ringRef0, "\(rows)")
        #expect(h.consoleLog("g1").contains("hotplug: xvda connected sectors=16384 queues=2"))
        #expect(try h.list().keys.sorted() == ["Domain-0", "blkback", "g1", "g2"])
        #expect(try h.dmesg().components(separatedBy: "started the default driver domain").count == 2)
    }

    @Test func theDefaultDriverDomainMustBeThereToBeStarted() throws {
        // A supervisor with no blkback next to it.
        var template = Array("/tmp/pvbin.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: Products.path("procvisord"), toPath: dir + "/procvisord")
        let h = try SupervisorHarness(supervisor: dir + "/procvisord")
        defer { h.stop() }
        let a = image(h, "a.img")
        let r = try h.xl("create", "-q", h.config("g", mode: "run", "disk = [ 'vdev=xvda, access=rw, target=\(a)' ]\n"))
        #expect(r.status == 1)
        #expect(r.stderr.contains("disk xvda: no backend= given and the default driver domain cannot be started: \(dir)/blkback is missing or not executable"), "\(r.stderr)")
        // A domain called blkback that is no driver domain is not taken for one.
        try h.create("blkback", mode: "run")
        let r2 = try h.xl("create", "-q", h.config("g", mode: "run", "disk = [ 'vdev=xvda, access=rw, target=\(a)' ]\n"))
        #expect(r2.stderr.contains("disk xvda: no backend= given, and the default driver domain \"blkback\" (dom1) is not a running driver domain"), "\(r2.stderr)")
        try h.create("p", mode: "run")
        let r3 = try h.xl("block-attach", "p", "vdev=xvda, access=rw, target=\(a)")
        #expect(r3.status == 1 && r3.stderr.contains("is not a running driver domain\nlibxl_device_disk_add failed.\n"), "\(r3.stderr)")
        #expect(try h.list().keys.sorted() == ["Domain-0", "blkback", "p"])
    }
}

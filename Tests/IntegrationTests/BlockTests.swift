import Foundation
import Glibc
import LinuxHost
import Testing

/// Virtual block devices, toolstack side: `disk=` checked at create, Xen's frontend and backend
/// nodes in XenStore, and the disk image handed only to the backend the toolstack named.
@Suite struct BlockTests {
    func image(_ h: SupervisorHarness, _ name: String, contents: String) -> String {
        let path = h.runDirectory + "/" + name
        var data = Data(contents.utf8)
        data.append(Data(count: 1 << 20 - data.count))
        _ = FileManager.default.createFile(atPath: path, contents: data)
        return path
    }

    @Test func diskNodesAndTheImageGoToTheNamedBackendOnly() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let img = image(h, "disk.img", contents: "PROCVISOR-DISK-1")
        try h.create("be", mode: "be-peek", "driver_domain = 1\n")
        #expect(eventually { h.consoleLog("be").contains("be-peek ready") })
        try h.create("fe", mode: "run", "disk = [ 'format=raw, vdev=xvda, access=rw, backend=be, target=\(img)' ]\n")
        // Xen's nodes and permissions (libxl's): frontend owned by dom2 and readable by the backend.
        #expect(try h.xs("read", "/local/domain/2/device/vbd/51712/backend").stdout == "/local/domain/1/backend/vbd/2/51712\n")
        #expect(try h.xs("read", "/local/domain/2/device/vbd/51712/backend-id").stdout == "1\n")
        #expect(try h.xs("read", "/local/domain/2/device/vbd/51712/virtual-device").stdout == "51712\n")
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51712/params").stdout == img + "\n")
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51712/mode").stdout == "w\n")
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/2/51712/dev").stdout == "xvda\n")
        #expect(try h.xs("ls", "-p", "/local/domain/2/device/vbd").stdout.contains("(n2,r1)"))
        #expect(try h.xs("ls", "-p", "/local/domain/1/backend/vbd").stdout.contains("(n1,r2)"))
        // The backend got the image from the supervisor (it cannot open files itself).
        #expect(eventually { h.consoleLog("be").contains("disk 2/51712 params=\(img) mode=w first=PROCVISOR-DISK-1 write=15") },
                "\(h.consoleLog("be"))")
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: img)).subdata(in: 512..<527)
        #expect(String(decoding: onDisk, as: UTF8.self) == "written by dom1")
        // Any other domain asking for that disk is refused and named in the log.
        try h.create("snoop", mode: "disk-snoop", "extra = \"mode=disk-snoop frontend=2 devid=51712\"\n")
        #expect(eventually { h.consoleLog("snoop").contains("snoop unknown:") })
        #expect(h.consoleLog("snoop").contains("snoop: device_fd vbd 2/51712 failed: EACCES"), "\(h.consoleLog("snoop"))")
        #expect(h.consoleLog("snoop").contains("snoop unknown: device_fd vbd 2/12345 failed: ENOENT"))
        #expect(try h.dmesg().contains("dom3 (snoop): asked for dom2's disk xvda, which dom1 serves: refused"))
        // Destroying the frontend removes the backend's nodes.
        #expect(try h.xl("destroy", "fe").ok)
        #expect(eventually { (try? h.xs("exists", "/local/domain/1/backend/vbd/2").status) == 1 })
    }

    @Test func badDisksAreRefusedAtCreateWithTheReason() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("be", mode: "be-peek", "driver_domain = 1\n")
        try h.create("plain", mode: "run")
        let img = image(h, "ok.img", contents: "x")
        func create(_ name: String, _ disk: String) throws -> CommandResult {
            try h.xl("create", "-q", h.config(name, mode: "run", "disk = [ '\(disk)' ]\n"))
        }
        let missing = try create("m", "vdev=xvda, access=rw, backend=be, target=\(h.runDirectory)/nope.img")
        #expect(!missing.ok)
        #expect(missing.stderr.contains("disk xvda: \(h.runDirectory)/nope.img: No such file or directory"), "\(missing.stderr)")
        let notDriver = try create("n", "vdev=xvda, access=rw, backend=plain, target=\(img)")
        #expect(notDriver.stderr.contains("disk xvda: domain \"plain\" is not a driver domain (set driver_domain = 1 in its config)"), "\(notDriver.stderr)")
        let virtio = try create("v", "vdev=xvda, access=rw, backend=be, specification=virtio, target=\(img)")
        #expect(!virtio.ok && virtio.stderr.contains("disk xvda: specification=virtio is not supported: disks here are Xen PV disks (specification=xen)"),
                "\(virtio.stderr)")
        let noBackend = try create("b", "vdev=xvda, access=rw, backend=ghost, target=\(img)")
        #expect(noBackend.stderr.contains("disk xvda: backend domain \"ghost\" is not running"))
        let dup = try h.xl("create", "-q", h.config("d", mode: "run", "disk = [ 'vdev=xvda, backend=be, target=\(img)', 'vdev=xvda, backend=be, target=\(img)' ]\n"))
        #expect(!dup.ok)
        // A read-only file (a sysfs attribute: read-only even for root) with access=rw.
        let candidates = ["/sys/kernel/uevent_seqnum", "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "/sys/kernel/profiling"]
        if let ro = candidates.first(where: { open($0, O_RDWR) < 0 && errno == EACCES }) {
            let r = try create("r", "vdev=xvda, access=rw, backend=be, target=\(ro)")
            #expect(r.stderr.contains("disk xvda: \(ro) is read-only but the disk has access=rw"), "\(r.stderr)")
            #expect(try create("r2", "vdev=xvda, access=ro, backend=be, target=\(ro)").ok)
        } else {
            Issue.record("no read-only file found to test access=rw on a read-only image")
        }
        // Nothing half-made is left behind and the backend is still serving.
        #expect(try h.list().keys.sorted() == ["Domain-0", "be", "plain", "r2"])
        #expect(try h.list()["be"] != nil)
    }

    @Test func blkbackServesXensRingLayoutRefusesBadRequestsAndDropsACorruptRing() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let img = image(h, "raw.img", contents: "raw")
        let img2 = image(h, "raw2.img", contents: "raw2")
        #expect(try h.xl("create", "-q", h.config("blkback", kernel: Products.path("blkback"), "driver_domain = 1\n")).ok)
        #expect(eventually { h.consoleLog("blkback").contains("serving vbds") }, "\(h.consoleLog("blkback"))")
        try h.create("raw", mode: "blk-raw", "extra = \"mode=blk-raw corrupt=1\"\ndisk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(img)' ]\n")
        try h.create("raw2", mode: "blk-raw", "disk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(img2)' ]\n")
        // Negotiation numbers over the backend's maximums: that device is closed, nothing else.
        for bad in ["queues", "order"] {
            try h.create("neg-" + bad, mode: "blk-raw", "extra = \"mode=blk-raw badneg=\(bad)\"\ndisk = [ 'vdev=xvda, access=rw, backend=blkback, target=\(image(h, bad + ".img", contents: bad))' ]\n")
        }
        #expect(eventually(timeout: 30) { h.consoleLog("raw").contains("blk-raw done") && h.consoleLog("raw2").contains("blk-raw done") },
                "raw: \(h.consoleLog("raw"))\nraw2: \(h.consoleLog("raw2"))\nblkback: \(h.consoleLog("blkback"))")
        for name in ["raw", "raw2"] {
            let log = h.consoleLog(name)
            for line in ["backend InitWait: sectors=2048 persistent=1 flush=1", "connected: backend state 4",
                         "write: id=1 op=1 status=okay", "read: id=2 op=0 status=okay", "read matches: true",
                         "partial: id=3 op=1 status=okay", "flush: id=4 op=3 status=okay", "discard: id=5 op=5 status=okay",
                         "bad op: id=6 status=eopnotsupp", "12 segments: id=7 status=error", "first>last: id=8 status=error",
                         "past end: id=9 op=0 status=error", "ungranted gref: id=10 op=0 status=error",
                         "still serving: id=11 op=0 status=okay",
                         "indirect read: id=12 op=0 status=okay", "indirect matches: true",
                         "indirect 257 segments: id=13 op=0 status=error", "indirect op discard: id=14 op=5 status=error",
                         "indirect page ungranted: id=15 op=0 status=error", "indirect seg ungranted: id=16 op=0 status=error",
                         "indirect first>last: id=17 op=0 status=error", "indirect past end: id=18 op=0 status=error",
                         "barrier: id=19 op=2 status=okay", "still serving: id=20 op=0 status=okay", "barrier data matches: true"] {
                #expect(log.contains(line + "\n"), "\(name): missing '\(line)' in \(log)")
            }
        }
        // The pattern reached the image: sectors 8..15 hold i*7+3.
        let disk = try Data(contentsOf: URL(fileURLWithPath: img))
        #expect(Array(disk[4096..<4104]) == (0..<8).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) })
        // The corrupting frontend was disconnected; blkback and the other frontend carry on.
        #expect(h.consoleLog("raw").contains("after corruption: backend state 6"), "\(h.consoleLog("raw"))")
        let corrupted = h.consoleLog("blkback").components(separatedBy: "blkback: vbd 2/51712: the frontend corrupted ring 0").count - 1
        #expect(corrupted == 1, "\(h.consoleLog("blkback"))")  // disconnected once, not reconnected behind its back
        #expect(h.consoleLog("blkback").contains("request 6 (") || h.consoleLog("blkback").contains("id 6"))
        #expect(eventually { h.consoleLog("neg-queues").contains("bad queues: backend state 6") && h.consoleLog("neg-order").contains("bad order: backend state 6") },
                "\(h.consoleLog("neg-queues"))\n\(h.consoleLog("neg-order"))")
        #expect(h.consoleLog("neg-queues").contains("backend offers: max-queues=1 max-ring-page-order=4 max-indirect=256"), "\(h.consoleLog("neg-queues"))")
        #expect(h.consoleLog("blkback").contains("asks for 99 queues; multi-queue-max-queues is 1"), "\(h.consoleLog("blkback"))")
        #expect(h.consoleLog("blkback").contains("asks for ring-page-order 9; max-ring-page-order is 4"), "\(h.consoleLog("blkback"))")
        #expect(h.consoleLog("blkback").contains("indirect page gref 60001"), "\(h.consoleLog("blkback"))")
        #expect(try h.list()["blkback"] != nil)
        #expect(try h.xs("read", "/local/domain/1/backend/vbd/3/51712/state").stdout == "4\n")
    }

    /// Data integrity: guests write patterns to their own disks concurrently through blkfront and
    /// verify them, against a blkback on io_uring and one forced onto the thread pool; some with
    /// one queue and a one-page ring, some with several queues, multi-page rings and indirect
    /// requests of up to 256 segments.
    @Test func blkcheckGuestsVerifyTheirDisksWithBothIOEngines() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        func sparse(_ name: String, mb: Int) -> String {
            let path = h.runDirectory + "/" + name
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            _ = truncate(path, off_t(mb) << 20)
            return path
        }
        let blkback = Products.path("blkback"), blkcheck = Products.path("blkcheck")
        #expect(try h.xl("create", "-q", h.config("bb-uring", kernel: blkback, "driver_domain = 1\nextra = \"max-queues=4\"\n")).ok)
        #expect(try h.xl("create", "-q", h.config("bb-threads", kernel: blkback,
                                                  "driver_domain = 1\nextra = \"PROCVISOR_FORCE_NO_IOURING=1 max-queues=4\"\n")).ok)
        // io_uring with the event dispatcher (what kernels without IORING_OP_FUTEX_WAIT get).
        #expect(try h.xl("create", "-q", h.config("bb-dispatch", kernel: blkback, "driver_domain = 1\nextra = \"dispatch=1 max-queues=2\"\n")).ok)
        #expect(eventually { ["bb-uring", "bb-threads", "bb-dispatch"].allSatisfy { h.consoleLog($0).contains("serving vbds") } })
        let guests: [(String, String, String)] = [
            ("c1", "", "disk = [ 'vdev=xvda, access=rw, backend=bb-uring, target=\(sparse("c1a.img", mb: 16))',\n"
                 + "         'vdev=xvdb, access=rw, backend=bb-threads, target=\(sparse("c1b.img", mb: 16))' ]\n"),
            ("c2", "", "disk = [ 'vdev=xvda, access=rw, backend=bb-threads, target=\(sparse("c2.img", mb: 16))' ]\n"),
            ("c3", "indirect=0", "disk = [ 'vdev=xvda, access=rw, backend=bb-uring, target=\(sparse("c3.img", mb: 16))' ]\n"),
            ("c4", "queues=3 order=2 indirect=256 maxio=600",
             "disk = [ 'vdev=xvda, access=rw, backend=bb-uring, target=\(sparse("c4.img", mb: 16))' ]\n"),
            ("c5", "queues=2 order=1 indirect=64 maxio=300",
             "disk = [ 'vdev=xvda, access=rw, backend=bb-threads, target=\(sparse("c5.img", mb: 16))' ]\n"),
            ("c6", "queues=2",
             "disk = [ 'vdev=xvda, access=rw, backend=bb-dispatch, target=\(sparse("c6.img", mb: 16))' ]\n"),
        ]
        for (i, (name, options, disks)) in guests.enumerated() {
            let r = try h.xl("create", "-q", h.config(name, kernel: blkcheck,
                                                      "extra = \"seed=\(i + 1) rounds=6 depth=16 span=16384 \(options)\"\nmemory = 32\n" + disks))
            #expect(r.ok, "\(name): \(r.stderr)")
        }
        #expect(eventually(timeout: 120) { (try? h.list())?.keys.filter { $0.hasPrefix("c") }.isEmpty == true },
                "still running: \(String(describing: try? h.list().keys.sorted()))")
        for (name, disk) in [("c1", "xvda"), ("c1", "xvdb"), ("c2", "xvda"), ("c3", "xvda"), ("c4", "xvda"), ("c5", "xvda"), ("c6", "xvda")] {
            #expect(h.consoleLog(name).contains("blkcheck: \(disk) OK"),
                    "\(name): \(h.consoleLog(name))\nbb-uring: \(h.consoleLog("bb-uring"))\nbb-threads: \(h.consoleLog("bb-threads"))\n\((try? h.dmesg()) ?? "")")
        }
        // What was negotiated: the defaults (one queue, one page, Linux's 32 indirect segments),
        // none, and the several-queue, multi-page ones.
        #expect(h.consoleLog("c2").contains("1 queue(s), ring-page-order 0, 32 segments per request"), "\(h.consoleLog("c2"))")
        #expect(h.consoleLog("c3").contains("1 queue(s), ring-page-order 0, 11 segments per request"), "\(h.consoleLog("c3"))")
        #expect(h.consoleLog("c4").contains("3 queue(s), ring-page-order 2, 256 segments per request"), "\(h.consoleLog("c4"))")
        #expect(h.consoleLog("c5").contains("2 queue(s), ring-page-order 1, 64 segments per request"), "\(h.consoleLog("c5"))")
        #expect(h.consoleLog("bb-uring").contains("3 queues of 128 slots"), "\(h.consoleLog("bb-uring"))")
        #expect(h.consoleLog("bb-threads").contains("2 queues of 64 slots"), "\(h.consoleLog("bb-threads"))")
        #expect(h.consoleLog("bb-uring").contains("io_uring"), "\(h.consoleLog("bb-uring"))")
        #expect(h.consoleLog("bb-threads").contains("threads"), "\(h.consoleLog("bb-threads"))")
        // Owned queues where the kernel has futex waits in io_uring; the dispatcher when asked.
        let futexWait = (try? IOUring(entries: 2))?.supportsFutexWait ?? false
        #expect(h.consoleLog("bb-uring").contains("IORING_OP_FUTEX_WAIT") == futexWait, "\(h.consoleLog("bb-uring"))")
        #expect(!h.consoleLog("bb-dispatch").contains("IORING_OP_FUTEX_WAIT") && h.consoleLog("bb-dispatch").contains("io_uring"),
                "\(h.consoleLog("bb-dispatch"))")
        if futexWait {
            // The owned queues took their transfers on the registered persistent pages (counted
            // when each queue is torn down, after its frontend has gone).
            func registered(_ log: String) -> Int {
                log.split(separator: "\n").filter { $0.hasSuffix(" staged") && $0.contains("on registered buffers") }
                    .compactMap { Int($0.split(separator: " ").dropLast(5).last ?? "") }.reduce(0, +)
            }
            #expect(eventually { registered(h.consoleLog("bb-uring")) > 100 }, "\(h.consoleLog("bb-uring"))")
        }
        // Large requests (c4's and c5's, and every guest's final 1 MiB read-back) went to the
        // disk through the contiguous staging memory, on both engines.
        func staged(_ log: String) -> Int {
            log.split(separator: "\n").filter { $0.hasSuffix(" staged") }
                .compactMap { Int($0.split(separator: " ").dropLast().last ?? "") }.reduce(0, +)
        }
        #expect(eventually { staged(h.consoleLog("bb-uring")) > 20 && staged(h.consoleLog("bb-threads")) > 20 },
                "bb-uring: \(h.consoleLog("bb-uring"))\nbb-threads: \(h.consoleLog("bb-threads"))")
        let dmesg = try h.dmesg()
        #expect(!dmesg.contains("crash") && !dmesg.contains("malformed"), "\(dmesg)")
        // Backends keep running, their device directories are gone with the frontends.
        #expect(try h.list()["bb-uring"] != nil && h.list()["bb-threads"] != nil && h.list()["bb-dispatch"] != nil)
        #expect(try h.xs("list", "/local/domain/1/backend/vbd").stdout == "")
    }

    /// Staging memory for large requests is the driver domain's own, within the supervisor's
    /// limit: unbounded (8 MiB for each of 18 queues) it got the domain killed. With a budget of
    /// two queues' worth, a four-queue disk doing large I/O stages on two queues, the other two
    /// go to the grant pages directly, and the data is right either way.
    @Test func stagingStaysWithinTheDriverDomainsBudget() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let blkback = Products.path("blkback"), blkcheck = Products.path("blkcheck")
        #expect(try h.xl("create", "-q", h.config("bb", kernel: blkback, "driver_domain = 1\nextra = \"max-queues=4 staging-mib=8\"\n")).ok)
        #expect(eventually { h.consoleLog("bb").contains("serving vbds") })
        let path = h.runDirectory + "/g.img"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        _ = truncate(path, 8 << 20)
        #expect(try h.xl("create", "-q", h.config("g", kernel: blkcheck,
            "extra = \"seed=7 rounds=3 depth=16 span=16384 queues=4 indirect=256 maxio=600\"\nmemory = 32\n"
            + "disk = [ 'vdev=xvda, access=rw, backend=bb, target=\(path)' ]\n")).ok)
        #expect(eventually(timeout: 60) { h.consoleLog("g").contains("blkcheck: xvda OK") || h.consoleLog("g").contains("FAILED") })
        #expect(h.consoleLog("g").contains("blkcheck: xvda OK"), "\(h.consoleLog("g"))")
        // Each queue's teardown line ends "…, S staged".
        func stagedPerQueue() -> [Int] {
            h.consoleLog("bb").split(separator: "\n").filter { $0.hasSuffix(" staged") }
                .compactMap { Int($0.split(separator: " ").dropLast().last ?? "") }
        }
        #expect(eventually { stagedPerQueue().count == 4 }, "\(h.consoleLog("bb"))")
        #expect(stagedPerQueue().filter { $0 > 0 }.count == 2, "\(stagedPerQueue()): \(h.consoleLog("bb"))")
        #expect(try h.list()["bb"] != nil)
    }

    /// Devices connecting on a driver domain while others disconnect: each new one gets event
    /// channel ports the finished ones just closed. blkback's dispatcher once dropped a finished
    /// device's ports from its table by number after closing them, taking the new device's
    /// entries with them: that queue was never served again (this test caught it in half its
    /// runs). Twenty-four short-lived two-queue guests, six at a time, on a thread-pool driver
    /// domain (whose queues the dispatcher serves), must all finish their checks.
    @Test func devicesComingAndGoingOnOneDriverDomainAreAllServed() throws {
        // Six debug-built guests starting at once while the rest of the suite runs on two cores:
        // one took more than the default 5 s to engage; this test is about the ports, not that.
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_ENGAGE_TIMEOUT_MS": "30000"])
        defer { h.stop() }
        let blkback = Products.path("blkback"), blkcheck = Products.path("blkcheck")
        #expect(try h.xl("create", "-q", h.config("bb", kernel: blkback,
                                                  "driver_domain = 1\nextra = \"PROCVISOR_FORCE_NO_IOURING=1 max-queues=2\"\n")).ok)
        #expect(eventually { h.consoleLog("bb").contains("serving vbds") })
        let total = 24
        var started = 0
        func start() throws {
            let name = "g\(started)"
            let path = h.runDirectory + "/\(name).img"
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            _ = truncate(path, 4 << 20)
            let r = try h.xl("create", "-q", h.config(name, kernel: blkcheck,
                "extra = \"seed=\(started + 1) rounds=2 depth=8 span=4096 maxio=64 queues=2 timeout=20\"\nmemory = 32\n"
                + "disk = [ 'vdev=xvda, access=rw, backend=bb, target=\(path)' ]\n"))
            #expect(r.ok, "\(name): \(r.stderr)")
            started += 1
        }
        while started < 6 { try start() }
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let running = try h.list().keys.filter { $0.hasPrefix("g") }.count
            if started == total && running == 0 { break }
            // A new guest as soon as one is gone: its device connects while the other's tears down.
            if running < 6 && started < total { try start(); continue }
            usleep(2_000)
        }
        for i in 0..<total {
            #expect(h.consoleLog("g\(i)").contains("blkcheck: xvda OK"), "g\(i): \(h.consoleLog("g\(i)"))\nbb: \(h.consoleLog("bb"))")
        }
        #expect(h.consoleLog("bb").components(separatedBy: "2 queues of").count - 1 == total, "\(h.consoleLog("bb"))")
        #expect(try h.list()["bb"] != nil)
    }
}

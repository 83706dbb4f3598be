import Foundation
import Glibc
import LinuxHost
import Toolstack

/// Block I/O through the split driver against fio on the same image file.
///
/// For each workload a `blkbench` guest (examples/blkbench) benchmarks its disk through blkfront
/// → ring → a `blkback` driver domain → the image file, then fio runs the same pattern on the
/// same file from the host (`--ioengine=io_uring --direct=1`, same block size, depth, span and
/// run time). Workloads: 4 KiB random read and write at depth 1 and 32, 1 MiB sequential read
/// and write at depth 4. The image is a fully written file on a real file system (not tmpfs, so
/// O_DIRECT works for fio and for the backend); its page cache is dropped before every run. The
/// backend's `connected` line says whether it opened the image with direct I/O or through the
/// page cache; the suite prints it, since buffered I/O is not comparable with fio's direct I/O.
///
/// Options (environment):
///   PROCVISOR_BLK_SECONDS   run time of each side of each workload, per round (5)
///   PROCVISOR_BLK_ROUNDS    rounds per workload, alternating which side goes first; each
///                           figure is the median of its side's rounds (3)
///   PROCVISOR_BLK_SIZE_MIB  image size (1024)
///   PROCVISOR_BLK_DIR       where the image lives (/var/tmp)
///   PROCVISOR_BLK_KEEP=1    keep the image afterwards (it is reused by the next run when the
///                           size matches)
///   PROCVISOR_BLK_SPIN      blkbench spin= (doorbell checks before sleeping; 0)
///   PROCVISOR_BLK_ONLY      comma-separated workload names to run (all by default)
///   PROCVISOR_BLK_EXTRA     more blkbench settings, e.g. "queues=2 ring_order=2 indirect=0"
///   PROCVISOR_BLK_BACKEND_EXTRA  more blkback settings, e.g. "fixed-buffers=0 poll-us=50"
///
/// Targets (issue 5), printed as met / not met and never failing the run: at depth 32, at least
/// 90% of fio's IOPS; sequential, at least 95% of its bandwidth; at depth 1, p99 latency within
/// 2× fio's.
enum BlkSuite {
    struct Workload {
        var name: String
        var rw: String
        var bs: Int
        var depth: Int
        var sequential: Bool { rw == "read" || rw == "write" }
        var label: String {
            let size = bs >= 1 << 20 ? "\(bs >> 20) MiB" : "\(bs >> 10) KiB"
            return "\(size) \(rw) qd\(depth)"
        }
    }

    static let workloads: [Workload] = [
        Workload(name: "randread_4k_qd1", rw: "randread", bs: 4096, depth: 1),
        Workload(name: "randread_4k_qd32", rw: "randread", bs: 4096, depth: 32),
        Workload(name: "randwrite_4k_qd1", rw: "randwrite", bs: 4096, depth: 1),
        Workload(name: "randwrite_4k_qd32", rw: "randwrite", bs: 4096, depth: 32),
        Workload(name: "read_1m_qd4", rw: "read", bs: 1 << 20, depth: 4),
        Workload(name: "write_1m_qd4", rw: "write", bs: 1 << 20, depth: 4),
    ]

    /// One side's figures.
    struct Figures {
        var iops: Double
        var mbps: Double
        var p50: Double  // µs
        var p99: Double
        var max: Double
        var ios: Double
        /// CPU time per IO (µs): the guest, the backend domain and the supervisor; fio's own.
        var cpuPerIO: [String: Double] = [:]
    }

    struct Options {
        var seconds = 5
        var sizeMiB = 1024
        var dir = "/var/tmp"
        var keep = false
        var spin = 0
        var only: Set<String>?
        var extra = ""
        /// blkback's settings (its `extra=`), e.g. `spin=2000 poll-us=50`.
        var backendExtra = ""
        var rounds = 3

        init() {
            let env = ProcessInfo.processInfo.environment
            if let s = env["PROCVISOR_BLK_SECONDS"], let v = Int(s), v > 0 { seconds = v }
            if let s = env["PROCVISOR_BLK_SIZE_MIB"], let v = Int(s), v >= 16 { sizeMiB = v }
            if let s = env["PROCVISOR_BLK_DIR"], !s.isEmpty { dir = s }
            keep = env["PROCVISOR_BLK_KEEP"] == "1"
            if let s = env["PROCVISOR_BLK_SPIN"], let v = Int(s), v >= 0 { spin = v }
            extra = env["PROCVISOR_BLK_EXTRA"] ?? ""
            backendExtra = env["PROCVISOR_BLK_BACKEND_EXTRA"] ?? ""
            if let s = env["PROCVISOR_BLK_ROUNDS"], let v = Int(s), v >= 1 { rounds = v }
            if let s = env["PROCVISOR_BLK_ONLY"], !s.isEmpty { only = Set(s.split(separator: ",").map(String.init)) }
        }
    }

    static func run(count _: Int) throws -> [Result] {
        let options = Options()
        let selected = workloads.filter { options.only?.contains($0.name) ?? true }
        guard !selected.isEmpty else {
            throw BenchError("PROCVISOR_BLK_ONLY names no workload; workloads: \(workloads.map(\.name).joined(separator: ", "))")
        }
        let blkback = try sibling("blkback"), blkbench = try sibling("blkbench")
        let fio = findInPath("fio")
        if fio == nil {
            print("blk: fio is not installed (not on PATH): the peer is SKIPPED, only procvisor's figures are measured. Install it with scripts/install-deps.sh or apt-get install fio.")
        }

        // The image: a real file system, fully written, O_DIRECT-capable.
        try checkFileSystem(options.dir)
        let image = options.dir + "/procvisor-blkbench-\(options.sizeMiB)M.img"
        let span = UInt64(options.sizeMiB) << 20
        try prepareImage(image, bytes: span)
        defer {
            if options.keep { print("blk: image kept at \(image)") } else { unlink(image) }
        }
        print("blk: image \(image), \(options.sizeMiB) MiB on \(fsType(options.dir)), \(options.seconds) s per run, \(options.rounds) rounds per workload (medians), blkbench spin=\(options.spin) \(options.extra)")
        fflush(stdout)

        let sup = try BenchSupervisor()
        let backendName = "blkback-bench"
        defer {
            _ = try? sup.call(.destroy(domain: backendName))
            sup.stop()
        }

        // The driver domain, from a config file as a user would write it.
        let backendConfig = sup.dir + "/\(backendName).cfg"
        try """
        name = "\(backendName)"
        kernel = "\(blkback)"
        driver_domain = 1
        memory = 64
        vcpus = 2
        extra = "\(options.backendExtra)"
        """.write(toFile: backendConfig, atomically: true, encoding: .utf8)
        try create(sup, configPath: backendConfig)
        try awaitLine(sup, backendName, containing: "serving vbds", timeout: 30)
        guard let backendPid = try domainInfo(sup, backendName)?.pid else { throw BenchError("\(backendName) is not running") }

        var rows: [(Workload, Figures, Figures?, String)] = []
        var run = 0
        for w in selected {
            // Rounds alternate which side goes first (ours, fio, then fio, ours …); each figure
            // is the median of its side's rounds, so a burst of noise on the shared machine (or a
            // lucky run of the host's cache) in one round does not decide the result.
            var ourRuns: [Figures] = [], peerRuns: [Figures] = []
            var mode = "?"
            for round in 0..<options.rounds {
                let peerFirst = round % 2 == 1
                var peer: Figures?
                if peerFirst, let fio {
                    dropCache(image)
                    peer = try runFio(fio, image: image, w, seconds: options.seconds, span: span)
                }
                run += 1
                let (ours, connected, frontLine) = try runGuest(sup, w, name: "blkbench-\(w.name)-\(round + 1)", kernel: blkbench,
                                                                backend: backendName, backendPid: backendPid, image: image,
                                                                span: span, seed: run, options: options)
                mode = connected.contains("direct I/O") ? "direct I/O" : "buffered (page cache)"
                if !peerFirst, let fio {
                    dropCache(image)
                    peer = try runFio(fio, image: image, w, seconds: options.seconds, span: span)
                }
                ourRuns.append(ours)
                if let peer { peerRuns.append(peer) }
                print("blk: \(w.label), round \(round + 1): procvisor \(fmt(ours.iops)) IOPS \(fmt1(ours.mbps)) MB/s p50 \(fmt1(ours.p50)) µs p99 \(fmt1(ours.p99)) µs"
                    + (peer.map { "; fio \(fmt($0.iops)) IOPS \(fmt1($0.mbps)) MB/s p50 \(fmt1($0.p50)) µs p99 \(fmt1($0.p99)) µs" } ?? "")
                    + "; blkfront: \(frontLine); backend: \(connected)")
                fflush(stdout)
            }
            rows.append((w, median(ourRuns), peerRuns.isEmpty ? nil : median(peerRuns), mode))
        }

        printTable(rows)
        return results(rows)
    }

    /// One blkbench guest on the image through the driver domain: its figures, the backend's
    /// `connected` line and blkfront's negotiated layout.
    static func runGuest(_ sup: BenchSupervisor, _ w: Workload, name guest: String, kernel: String, backend: String,
                         backendPid: Int32, image: String, span: UInt64, seed: Int, options: Options) throws
        -> (Figures, String, String)
    {
        let guestConfig = sup.dir + "/\(guest).cfg"
        try """
        name = "\(guest)"
        kernel = "\(kernel)"
        extra = "rw=\(w.rw) bs=\(w.bs) depth=\(w.depth) seconds=\(options.seconds) span=\(span) seed=\(seed) spin=\(options.spin) \(options.extra)"
        memory = 64
        vcpus = 1
        on_poweroff = "destroy"
        disk = [ 'format=raw, vdev=xvda, access=rw, backend=\(backend), target=\(image)' ]
        """.write(toFile: guestConfig, atomically: true, encoding: .utf8)
        dropCache(image)
        let backendCPU0 = ProcFS.cpuTimeNs(of: backendPid), supCPU0 = ProcFS.cpuTimeNs(of: sup.pid)
        try create(sup, configPath: guestConfig)
        let line: String
        do {
            line = try awaitLine(sup, guest, containing: "blkbench: rw=", timeout: Double(options.seconds) + 60)
            try awaitGone(sup, guest, timeout: 30)
        } catch {
            _ = try? sup.call(.destroy(domain: guest))
            throw error
        }
        let backendCPU = ProcFS.cpuTimeNs(of: backendPid) - backendCPU0, supCPU = ProcFS.cpuTimeNs(of: sup.pid) - supCPU0
        let v = keyValues(line)
        guard let iops = v["iops"], let ios = v["ios"] else { throw BenchError("\(guest): cannot parse '\(line)'") }
        var ours = Figures(iops: iops, mbps: v["mbps"] ?? 0, p50: v["lat_p50_us"] ?? 0, p99: v["lat_p99_us"] ?? 0,
                           max: v["lat_max_us"] ?? 0, ios: ios)
        ours.cpuPerIO = ["guest": v["cpu_us_per_io"] ?? 0, "backend": Double(backendCPU) / 1000 / ios,
                         "supervisor": Double(supCPU) / 1000 / ios]
        let connected = sup.consoleLog(backend).split(separator: "\n")
            .last { $0.contains("connected (") }.map { $0.trimmingCharacters(in: .whitespaces) } ?? "(no connected line)"
        let frontLine = sup.consoleLog(guest).split(separator: "\n").first { $0.contains("segments per request") }
            .map { String($0.drop { $0 != ";" }.dropFirst()).trimmingCharacters(in: .whitespaces) } ?? "?"
        return (ours, connected, frontLine)
    }

    // MARK: the peer

    static func runFio(_ fio: String, image: String, _ w: Workload, seconds: Int, span: UInt64) throws -> Figures {
        let args = ["--name=x", "--filename=\(image)", "--ioengine=io_uring", "--direct=1", "--rw=\(w.rw)", "--bs=\(w.bs)",
                    "--iodepth=\(w.depth)", "--runtime=\(seconds)", "--time_based", "--size=\(span)", "--norandommap",
                    "--output-format=json", "--percentile_list=50:99", "--lat_percentiles=1"]
        let p = Foundation.Process()
        p.executableURL = URL(fileURLWithPath: fio)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw BenchError("fio \(args.joined(separator: " ")) exited with \(p.terminationStatus): \(errText.suffix(500))")
        }
        // fio may print notes before the JSON object.
        guard let brace = data.firstIndex(of: UInt8(ascii: "{")),
              let json = try JSONSerialization.jsonObject(with: data[brace...]) as? [String: Any],
              let jobs = json["jobs"] as? [[String: Any]], let job = jobs.first,
              let side = job[w.rw.hasSuffix("read") ? "read" : "write"] as? [String: Any],
              let clat = side["clat_ns"] as? [String: Any]
        else {
            throw BenchError("fio printed no usable JSON: \(String(decoding: data.prefix(500), as: UTF8.self)) \(errText.suffix(300))")
        }
        func num(_ d: [String: Any], _ k: String) -> Double { (d[k] as? NSNumber)?.doubleValue ?? 0 }
        // blkbench times an IO from the call that submits it to its completion, so the peer's
        // figure is fio's total latency (lat_ns: submission + completion), not clat_ns alone.
        let lat = (side["lat_ns"] as? [String: Any]).flatMap { $0["percentile"] == nil ? nil : $0 } ?? clat
        let percentiles = lat["percentile"] as? [String: Any] ?? [:]
        func pct(_ p: String) -> Double {
            (percentiles.first { Double($0.key) == Double(p) }?.value as? NSNumber)?.doubleValue ?? 0
        }
        let ios = num(side, "total_ios")
        let runtime = num(side, "runtime") / 1000  // ms
        var f = Figures(iops: num(side, "iops"), mbps: num(side, "bw_bytes") / 1e6, p50: pct("50") / 1000, p99: pct("99") / 1000,
                        max: num(lat, "max") / 1000, ios: ios)
        // usr_cpu/sys_cpu: percent of one CPU over the run.
        f.cpuPerIO = ["fio": (num(job, "usr_cpu") + num(job, "sys_cpu")) / 100 * runtime * 1e6 / max(ios, 1)]
        return f
    }

    // MARK: the table

    static func printTable(_ rows: [(Workload, Figures, Figures?, String)]) {
        let header = ["workload", "procvisor IOPS", "MB/s", "p50 µs", "p99 µs", "fio IOPS", "MB/s", "p50 µs", "p99 µs",
                      "IOPS ratio", "p99 ratio", "target", "backend"]
        var table: [[String]] = []
        for (w, o, p, mode) in rows {
            var cells = [w.label, fmt(o.iops), fmt1(o.mbps), fmt1(o.p50), fmt1(o.p99)]
            if let p {
                cells += [fmt(p.iops), fmt1(p.mbps), fmt1(p.p50), fmt1(p.p99),
                          String(format: "%.2f×", o.iops / p.iops), String(format: "%.2f×", o.p99 / p.p99), target(w, o, p)]
            } else {
                cells += ["skipped", "", "", "", "", "", "no fio"]
            }
            table.append(cells + [mode])
        }
        printAligned(header, table)
        // Where the time goes: CPU per IO on each side.
        print("CPU time per IO (µs, medians; ticks of 10 ms over each run, so small figures are coarse):")
        let cpuHeader = ["workload", "guest", "backend domain", "supervisor", "procvisor total", "fio"]
        let cpuRows = rows.map { (w, o, p, _) -> [String] in
            let g = o.cpuPerIO["guest"] ?? 0, b = o.cpuPerIO["backend"] ?? 0, s = o.cpuPerIO["supervisor"] ?? 0
            return [w.label, fmt1(g), fmt1(b), fmt1(s), fmt1(g + b + s), p.map { fmt1($0.cpuPerIO["fio"] ?? 0) } ?? "-"]
        }
        printAligned(cpuHeader, cpuRows)
        fflush(stdout)
    }

    /// The issue's target for this workload, judged.
    static func target(_ w: Workload, _ o: Figures, _ p: Figures) -> String {
        if w.sequential {
            return (o.mbps >= 0.95 * p.mbps ? "met" : "not met") + " (MB/s ≥ 95% of fio)"
        }
        if w.depth >= 32 {
            return (o.iops >= 0.90 * p.iops ? "met" : "not met") + " (IOPS ≥ 90% of fio)"
        }
        if w.depth == 1 {
            return (o.p99 <= 2 * p.p99 ? "met" : "not met") + " (p99 ≤ 2× fio)"
        }
        return ""
    }

    static func results(_ rows: [(Workload, Figures, Figures?, String)]) -> [Result] {
        var out: [Result] = []
        for (w, o, p, mode) in rows {
            let peerName = p == nil ? "fio missing: skipped" : "fio io_uring direct, same file (backend \(mode))"
            func row(_ what: String, _ unit: String, _ ours: Double, _ theirs: Double?, higher: Bool) {
                out.append(Result(name: "\(w.name)_\(what)", unit: unit, procvisor: ours, peer: theirs ?? 0, peer_name: peerName,
                                  ratio: theirs.map { $0 > 0 ? ours / $0 : 0 } ?? 0, higher_is_better: higher))
            }
            if w.sequential {
                row("mbps", "MB/s", o.mbps, p?.mbps, higher: true)
            } else {
                row("iops", "IOPS", o.iops, p?.iops, higher: true)
            }
            row("lat_p50", "us", o.p50, p?.p50, higher: false)
            row("lat_p99", "us", o.p99, p?.p99, higher: false)
        }
        return out
    }

    // MARK: helpers

    /// Each figure's median over the rounds (the lower middle one for an even count).
    static func median(_ runs: [Figures]) -> Figures {
        func m(_ key: (Figures) -> Double) -> Double {
            let v = runs.map(key).sorted()
            return v[(v.count - 1) / 2]
        }
        var f = Figures(iops: m(\.iops), mbps: m(\.mbps), p50: m(\.p50), p99: m(\.p99), max: m(\.max), ios: m(\.ios))
        for key in Set(runs.flatMap { $0.cpuPerIO.keys }) { f.cpuPerIO[key] = m { $0.cpuPerIO[key] ?? 0 } }
        return f
    }

    static func fmt(_ v: Double) -> String { String(format: "%.0f", v) }
    static func fmt1(_ v: Double) -> String { String(format: "%.1f", v) }

    static func printAligned(_ header: [String], _ rows: [[String]]) {
        let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        print(line(header))
        print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        rows.forEach { print(line($0)) }
    }

    static func findInPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where FileIO.isExecutable("\(dir)/\(name)") { return "\(dir)/\(name)" }
        return nil
    }

    /// The file system type of `dir`: the longest mount point of /proc/self/mounts above it.
    static func fsType(_ dir: String) -> String {
        guard let real = realpath(dir, nil) else { return "?" }
        let path = String(cString: real)
        free(real)
        guard let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else { return "?" }
        var best = (length: -1, type: "?")
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 3 else { continue }
            let mountPoint = f[1].replacingOccurrences(of: "\\040", with: " ")
            let covers = mountPoint == "/" || path == mountPoint || path.hasPrefix(mountPoint + "/")
            if covers && mountPoint.count >= best.length { best = (mountPoint.count, String(f[2])) }
        }
        return best.type
    }

    /// O_DIRECT (not in Swift's Glibc module: it needs _GNU_SOURCE).
    #if arch(arm64)
    static let oDirect: Int32 = 0o200000
    #else
    static let oDirect: Int32 = 0o40000
    #endif

    /// Refuses tmpfs (no O_DIRECT, and everything is in memory anyway) and checks O_DIRECT opens.
    static func checkFileSystem(_ dir: String) throws {
        let type = fsType(dir)
        if type == "?" { throw BenchError("PROCVISOR_BLK_DIR \(dir): no such directory, or its file system is unknown") }
        if type == "tmpfs" {
            throw BenchError("\(dir) is tmpfs: the image must be on a real file system that supports O_DIRECT (set PROCVISOR_BLK_DIR, e.g. to /var/tmp)")
        }
        let probe = dir + "/procvisor-blkbench-probe-\(getpid())"
        let fd = open(probe, O_RDWR | O_CREAT | O_EXCL | oDirect, 0o600)
        if fd < 0 {
            let e = Errno.current
            unlink(probe)
            throw BenchError("\(dir) (\(type)) refuses O_DIRECT (\(e)): choose another PROCVISOR_BLK_DIR")
        }
        close(fd)
        unlink(probe)
    }

    /// Creates (or reuses, when the size matches and it is not sparse) a fully written image of
    /// pseudo-random data, written with O_DIRECT so none of it stays in the page cache.
    static func prepareImage(_ path: String, bytes: UInt64) throws {
        var st = stat()
        if stat(path, &st) == 0 && UInt64(st.st_size) == bytes && UInt64(st.st_blocks) * 512 >= bytes {
            print("blk: reusing \(path)")
            return
        }
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | oDirect, 0o600)
        guard fd >= 0 else { throw BenchError("cannot create \(path): \(Errno.current)") }
        defer { close(fd) }
        let chunk = 1 << 20
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 4096, chunk) == 0, let buffer = raw else { throw BenchError("posix_memalign failed") }
        defer { free(buffer) }
        var state: UInt64 = 0x5EED_B10C
        let words = buffer.bindMemory(to: UInt64.self, capacity: chunk / 8)
        print("blk: writing \(bytes >> 20) MiB of random data to \(path)…")
        fflush(stdout)
        var offset: UInt64 = 0
        while offset < bytes {
            for i in 0..<(chunk / 8) {  // xorshift64: fast, and no two MiB alike
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                words[i] = state
            }
            let n = Int(min(UInt64(chunk), bytes - offset))
            var done = 0
            while done < n {
                let w = pwrite(fd, buffer + done, n - done, off_t(offset) + off_t(done))
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else {
                    let e = Errno.current
                    unlink(path)
                    throw BenchError("writing \(path) at \(offset + UInt64(done)): \(e)")
                }
                done += w
            }
            offset += UInt64(n)
        }
        guard fsync(fd) == 0 else { throw BenchError("fsync \(path): \(Errno.current)") }
    }

    /// Evicts the image from the page cache, so a buffered backend starts as cold as fio.
    static func dropCache(_ path: String) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        fdatasync(fd)
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        close(fd)
    }

    static func create(_ sup: BenchSupervisor, configPath: String) throws {
        var warnings: [String] = []
        let config = try DomainConfig(try XLConfigParser.parseFile(path: configPath), warnings: &warnings)
        for w in warnings { print("blk: \(w)") }
        let r = try sup.call(.create(config: config, paused: false))
        guard case .created = r else {
            throw BenchError("create \(config.name) failed: \(r)")
        }
    }

    static func domainInfo(_ sup: BenchSupervisor, _ name: String) throws -> DomainInfo? {
        guard case let .domains(list) = try sup.call(.list(domains: [])) else { return nil }
        return list.first { $0.name == name }
    }

    /// Waits for a console line containing `text`; fails on the guest's `FAILED` line, its
    /// crash, or the timeout (with the console, the backend's and dmesg).
    @discardableResult
    static func awaitLine(_ sup: BenchSupervisor, _ name: String, containing text: String, timeout: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        var checks = 0
        while Date() < deadline {
            let log = sup.consoleLog(name)
            if let line = log.split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
            if let line = log.split(separator: "\n").first(where: { $0.contains("FAILED") }) {
                throw BenchError("\(name): \(line)\n\(diagnostics(sup, name))")
            }
            checks += 1
            if checks % 25 == 0, try domainInfo(sup, name) == nil {
                throw BenchError("\(name) is gone without printing '\(text)'\n\(diagnostics(sup, name))")
            }
            usleep(20_000)
        }
        throw BenchError("\(name) did not print '\(text)' within \(Int(timeout)) s\n\(diagnostics(sup, name))")
    }

    static func awaitGone(_ sup: BenchSupervisor, _ name: String, timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            guard let info = try domainInfo(sup, name) else { return }
            if info.shutdown && info.shutdownReason != .poweroff {
                throw BenchError("\(name) shut down with \(String(describing: info.shutdownReason))\n\(diagnostics(sup, name))")
            }
            usleep(20_000)
        }
        throw BenchError("\(name) still running \(Int(timeout)) s after its result")
    }

    static func diagnostics(_ sup: BenchSupervisor, _ name: String) -> String {
        let dmesg: String
        if case let .dmesg(text)? = try? sup.call(.dmesg(clear: false)) { dmesg = String(text.suffix(1500)) } else { dmesg = "" }
        return "console of \(name):\n\(sup.consoleLog(name).suffix(1500))\nblkback-bench:\n\(sup.consoleLog("blkback-bench").suffix(1500))\ndmesg:\n\(dmesg)"
    }

    /// `key=NUMBER` words of a line.
    static func keyValues(_ line: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for word in line.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let v = Double(kv[1]) { out[String(kv[0])] = v }
        }
        return out
    }
}

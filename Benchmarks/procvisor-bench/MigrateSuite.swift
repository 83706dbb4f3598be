import Foundation
import Glibc
import LinuxHost
import Toolstack

/// `xl save`, `xl restore` and `xl migrate` of domains whose every page holds data, each round
/// interleaved with its peer: writing / reading the same number of bytes to / from a file with
/// plain I/O, and piping 256 MiB from one process to another.
enum MigrateSuite {
    static func xl(_ sup: BenchSupervisor, _ args: [String]) throws -> Double {
        let xl = try sibling("xl")
        let null = try FileDescriptor.open("/dev/null", .readWrite)
        defer { null.close() }
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = sup.dir
        env["PROCVISOR_NO_AUTOSTART"] = "1"
        let t0 = MonotonicClock.nanoseconds()
        let pid = try Spawner.spawn(path: xl, argv: [xl] + args, env: env.map { "\($0.key)=\($0.value)" },
                                    fds: [(null, 0), (null, 1), (null, 2)], limits: [], filter: nil)
        let status = try ChildReaper.wait(pid)
        let t1 = MonotonicClock.nanoseconds()
        guard case .exited(0) = status else { throw BenchError("xl \(args.joined(separator: " ")): \(status)") }
        return Double(t1 - t0) / 1e6
    }

    static func filled(_ sup: BenchSupervisor, _ name: String, mb: Int, extra: String = "") throws {
        var config = DomainConfig(name: name, kernel: sup.guest)
        config.memory = mb
        config.maxmem = mb
        config.extra = "mode=fill-ram" + (extra.isEmpty ? "" : " " + extra)
        guard case .created = try sup.call(.create(config: config, paused: false)) else { throw BenchError("create \(name) failed") }
        _ = try sup.awaitValue(name, key: "filled")
    }

    static func run(count: Int) throws -> [Result] {
        let rounds = max(5, min(count, 7))
        let a = try BenchSupervisor()
        defer { a.stop() }
        let b = try BenchSupervisor()
        defer { b.stop() }
        let dir = "/var/tmp"
        let image = dir + "/pv-bench-\(getpid()).save", peerFile = dir + "/pv-bench-\(getpid()).peer"
        defer {
            unlink(image)
            unlink(peerFile)
        }
        var save: [Double] = [], restore: [Double] = [], write: [Double] = [], read: [Double] = []
        var migrate: [Double] = [], pipe: [Double] = []
        let receive = "PROCVISOR_RUNDIR=\(b.dir) PROCVISOR_NO_AUTOSTART=1 \(try sibling("xl")) migrate-receive"
        for i in 0..<rounds {
            try filled(a, "save\(i)", mb: 64)
            // Both write new files: ext4 flushes a file truncated and rewritten when it is closed
            // (its replace-via-truncate rule), which would time the disk, not the save.
            unlink(image)
            unlink(peerFile)
            save.append(try xl(a, ["save", "save\(i)", image]))
            // Out of the timing: each file goes to the disk before the next write, so neither
            // side meets the page cache's write-back throttling left by the other.
            try flushToDisk(image)
            let size = Int(try FileStatus(path: image).size)
            write.append(try writePeer(peerFile, bytes: size))
            try flushToDisk(peerFile)
            restore.append(try xl(a, ["restore", image]))
            guard case .ok = try a.call(.destroy(domain: "save\(i)")) else { throw BenchError("destroy save\(i) failed") }
            read.append(try readPeer(peerFile))

            try filled(a, "mig\(i)", mb: 256)
            migrate.append(try xl(a, ["migrate", "-s", "", "mig\(i)", receive]))
            guard case .ok = try b.call(.destroy(domain: "mig\(i)")) else { throw BenchError("destroy mig\(i) at the target failed") }
            pipe.append(try pipePeer(bytes: 256 << 20))
        }
        let (gaps, quiet, lost) = try downtime(rounds: rounds)
        func result(_ name: String, _ ours: [Double], _ peer: [Double], _ peerName: String) -> Result {
            let o = Sample(values: ours).median, p = Sample(values: peer).median
            return Result(name: name, unit: "ms", procvisor: o, peer: p, peer_name: peerName, ratio: o / p, higher_is_better: false)
        }
        let rows = [
            result("save_64m", save, write, "write(2) to a file"),
            result("restore_64m", restore, read, "read(2) from a file"),
            result("migrate_256m_total", migrate, pipe, "pipe to another process"),
            result("migrate_256m_downtime", gaps, quiet, "longest gap, no migration"),
            Result(name: "acked_writes_lost", unit: "count", procvisor: Double(lost), peer: 0, peer_name: "nothing lost",
                   ratio: Double(lost), higher_is_better: false),
        ]
        fputs("migrate: every round (ms): save \(fmt(save)) | write \(fmt(write)) | restore \(fmt(restore)) | read \(fmt(read)) | migrate \(fmt(migrate)) | pipe \(fmt(pipe)) | longest gap with a migration \(fmt(gaps)) | without \(fmt(quiet)) | acknowledged writes lost \(lost)\n", stderr)
        return rows
    }

    /// A kvstore of 256 MiB that dirties 10 pages a millisecond serves a kvclient writing and
    /// reading all along; in each round one client runs while the server stays put (the peer:
    /// the longest gap the network and the scheduler give anyway), and one while the server is
    /// migrated live to the same supervisor. The client reports the longest gap between answers
    /// and the acknowledged writes it could not read back.
    static func downtime(rounds: Int) throws -> (gaps: [Double], quiet: [Double], lost: Int) {
        let sup = try BenchSupervisor()
        let netback = try sibling("netback"), kvstore = try sibling("kvstore"), kvclient = try sibling("kvclient")
        let bridge = "pvmig\(getpid() % 10000)", backend = "netback-mig"
        var guests = [backend]
        defer {
            for g in guests.reversed() { _ = try? sup.call(.destroy(domain: g)) }
            sup.stop()
        }
        try RecoverySuite.startDriverDomain(sup, backend, kernel: netback, serving: "serving vifs")
        guests.append("kvstore")
        try NetSuite.write(sup, "kvstore", """
            name = "kvstore"
            kernel = "\(kvstore)"
            extra = "port=7000 dirty=10"
            memory = 256
            vcpus = 2
            vif = [ 'mac=00:16:3e:00:c0:02, ip=10.98.0.2/24, bridge=\(bridge), backend=\(backend)' ]
            """)
        _ = try BlkSuite.awaitLine(sup, "kvstore", containing: "serving 10.98.0.2:7000", timeout: 30)
        let xl = try sibling("xl")
        let receive = "PROCVISOR_RUNDIR=\(sup.dir) PROCVISOR_NO_AUTOSTART=1 \(xl) migrate-receive"
        var gaps: [Double] = [], quiet: [Double] = [], lost = 0
        for round in 0..<(2 * rounds) {
            let migrating = round % 2 == 1
            let name = "kvclient\(round)"
            guests.append(name)
            try NetSuite.write(sup, name, """
                name = "\(name)"
                kernel = "\(kvclient)"
                extra = "server=10.98.0.2 port=7000 duration=3 retry=2"
                memory = 64
                vcpus = 1
                on_poweroff = "destroy"
                vif = [ 'mac=00:16:3e:00:c1:\(String(format: "%02x", round % 256)), ip=10.98.0.\(10 + round % 200)/24, bridge=\(bridge), backend=\(backend)' ]
                """)
            _ = try BlkSuite.awaitLine(sup, name, containing: "kvclient:", timeout: 30)
            if migrating {
                usleep(1_000_000)
                _ = try MigrateSuite.xl(sup, ["migrate", "-s", "", "kvstore", receive])
            }
            let line = try BlkSuite.awaitLine(sup, name, containing: "kvclient: puts=", timeout: 60)
            let v = BlkSuite.keyValues(line)
            if migrating {
                gaps.append(v["longest_gap_ms"] ?? .infinity)
                lost += Int(v["lost"] ?? 0) + Int(v["wrong"] ?? 0)
            } else {
                quiet.append(v["longest_gap_ms"] ?? .infinity)
            }
            try? BlkSuite.awaitGone(sup, name, timeout: 30)
            guests.removeAll { $0 == name }
        }
        return (gaps, quiet, lost)
    }

    static func fmt(_ v: [Double]) -> String { v.map { String(format: "%.1f", $0) }.joined(separator: " ") }

    static func flushToDisk(_ path: String) throws {
        let fd = try FileDescriptor.open(path, .readOnly)
        defer { fd.close() }
        _ = fd.syncData()
    }

    /// The peer of a save: the same bytes written to a file (no fsync on either side).
    static func writePeer(_ path: String, bytes: Int) throws -> Double {
        let buffer = try SharedMapping(anonymous: bytes)
        memset(buffer.base, 0x5a, bytes)  // touched before timing, as the guest's RAM is
        let t0 = MonotonicClock.nanoseconds()
        let fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate])
        var done = 0
        while done < bytes { done += try fd.write(UnsafeRawBufferPointer(start: buffer.base + done, count: bytes - done)) }
        fd.close()
        return Double(MonotonicClock.nanoseconds() - t0) / 1e6
    }

    /// The peer of a restore: the file read back into memory.
    static func readPeer(_ path: String) throws -> Double {
        let size = Int(try FileStatus(path: path).size)
        let buffer = try SharedMapping(anonymous: size)
        let t0 = MonotonicClock.nanoseconds()
        let fd = try FileDescriptor.open(path, .readOnly)
        var done = 0
        while done < size {
            let n = try fd.read(into: UnsafeMutableRawBufferPointer(start: buffer.base + done, count: size - done))
            if n == 0 { break }
            done += n
        }
        fd.close()
        return Double(MonotonicClock.nanoseconds() - t0) / 1e6
    }

    /// The peer of a migration: 256 MiB through a pipe into another process (`cat`).
    static func pipePeer(bytes: Int) throws -> Double {
        let buffer = try SharedMapping(anonymous: 4 << 20)
        memset(buffer.base, 0x5a, 4 << 20)
        let null = try FileDescriptor.open("/dev/null", .readWrite)
        defer { null.close() }
        let (r, w) = try FileDescriptor.pipe()
        let t0 = MonotonicClock.nanoseconds()
        let pid = try Spawner.spawn(path: "/bin/cat", argv: ["cat"], env: [], fds: [(r, 0), (null, 1), (null, 2)], limits: [], filter: nil)
        r.close()
        var done = 0
        while done < bytes {
            let n = min(4 << 20, bytes - done)
            var off = 0
            while off < n { off += try w.write(UnsafeRawBufferPointer(start: buffer.base + off, count: n - off)) }
            done += n
        }
        w.close()
        _ = try ChildReaper.wait(pid)
        return Double(MonotonicClock.nanoseconds() - t0) / 1e6
    }
}

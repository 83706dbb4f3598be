import Foundation
import Glibc
import LinuxHost
import Toolstack

/// Driver domains killed under load: blkback is killed with SIGKILL again and again while a
/// blkcheck guest writes its disk at depth 8 (and verifies every block at the end), then netback
/// while a UDP echo stream runs between two guests; the time from each kill to the first request
/// the new incarnation completes is read off the guest's own record of its pauses. Peer,
/// interleaved with the kills: starting a fresh driver domain of the same binary until it serves
/// (what bringing a backend up costs at all).
enum RecoverySuite {
    static func run(count: Int) throws -> [Result] {
        let kills = max(20, min(count, 100))
        let sup = try BenchSupervisor(environment: ["PROCVISOR_DRIVER_RESTARTS": "1000/60"])
        defer { sup.stop() }
        return try block(sup, kills: kills) + network(sup, kills: kills) + liveUpdate(sup, rounds: max(10, kills / 2))
    }

    /// The config file of a driver domain called `name` running `kernel`, as the default ones
    /// are, written the first time only: writing a file can wait behind the guests' disk writes
    /// on the same filesystem, which is no part of starting a domain.
    static func driverDomainConfig(_ sup: BenchSupervisor, _ name: String, kernel: String) throws -> String {
        let path = sup.dir + "/\(name).cfg"
        if !FileManager.default.fileExists(atPath: path) {
            try "name = \"\(name)\"\nkernel = \"\(kernel)\"\ndriver_domain = 1\nmemory = 64\nvcpus = 2\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
        }
        return path
    }

    /// Starts that driver domain and waits until its console says `serving` (its marker).
    static func startDriverDomain(_ sup: BenchSupervisor, _ name: String, kernel: String, serving marker: String) throws {
        try BlkSuite.create(sup, configPath: try driverDomainConfig(sup, name, kernel: kernel))
        _ = try BlkSuite.awaitLine(sup, name, containing: marker, timeout: 30)
    }

    /// How many times `name`'s incarnations have printed `marker` (its console log goes on
    /// across restarts and across rounds of the same name).
    static func count(_ sup: BenchSupervisor, _ name: String, _ marker: String) -> Int {
        sup.consoleLog(name).components(separatedBy: marker).count - 1
    }

    /// Kills the driver domain `backend` (running `kernel`) `kills` times, each once the previous
    /// incarnation says `marker` again and `guest` has been served by it (a pause of its service
    /// that ends after the kill: `PREFIX gap FROM TO`), 300 ms apart; interleaved, the peer: a
    /// fresh driver domain of the same binary started until it says `marker`, only once the
    /// recovery is over (started earlier, it would compete for the CPUs with the very recovery
    /// being measured) and with the guest paused (as it is, waiting, during a recovery). Returns when each kill was sent (monotonic ns) and the fresh starts (ms).
    static func killAndStartFresh(_ sup: BenchSupervisor, backend: String, kernel: String, marker: String, kills: Int,
                                  guest: String, prefix: String, guests: inout [String]) throws -> (killedAt: [UInt64], fresh: [Double]) {
        var killedAt: [UInt64] = [], fresh: [Double] = []
        for i in 0..<kills {
            usleep(300_000)
            guard let pid = ProcFS.child(of: sup.pid, running: kernel, engaged: true) else { throw BenchError("no \(backend) process to kill (kill \(i + 1))") }
            let before = count(sup, backend, marker)
            killedAt.append(MonotonicClock.nanoseconds())
            kill(pid, SIGKILL)
            let deadline = Date().addingTimeInterval(15)
            let killed = killedAt.last!
            while count(sup, backend, marker) == before || !gaps(sup, guest: guest, prefix: prefix).contains(where: { $0.to > killed }) {
                guard Date() < deadline else { throw BenchError("\(backend) did not come back after kill \(i + 1)\n\(BlkSuite.diagnostics(sup, guest))") }
                usleep(2_000)
            }
            // Past the start of the new incarnation's standby (100 ms after it engaged), so the
            // peer does not share the CPUs with it.
            usleep(200_000)
            // The guest is paused while the peer starts: during a recovery it waits for the
            // backend and takes no CPU, so the fresh start gets an idle machine too.
            _ = try sup.call(.pause(domain: guest))
            defer { _ = try? sup.call(.unpause(domain: guest)) }
            let name = backend + "-fresh"
            guests.append(name)
            // Counted before it starts: its console log goes on from the previous round's.
            let start = count(sup, name, marker)
            let config = try driverDomainConfig(sup, name, kernel: kernel)
            let t0 = MonotonicClock.nanoseconds()
            try BlkSuite.create(sup, configPath: config)
            let freshDeadline = Date().addingTimeInterval(15)
            while count(sup, name, marker) == start {
                guard Date() < freshDeadline else { throw BenchError("a fresh \(name) did not serve within 15 s\n\(BlkSuite.diagnostics(sup, name))") }
                usleep(500)
            }
            fresh.append(Double(MonotonicClock.nanoseconds() - t0) / 1e6)
            _ = try? sup.call(.destroy(domain: name))
            guests.removeAll { $0 == name }
        }
        return (killedAt, fresh)
    }

    /// Per kill: the time to the end of the pause of the guest's service that the kill made, from
    /// the guest's `PREFIX gap FROM TO` lines: of the pauses that end after the kill and begin
    /// before 20 ms after it, the one with the most of its length after the kill (the first
    /// completion of the new incarnation ends it; it may begin a little after the kill, as
    /// answers the old one wrote before the signal landed are still taken, or before it, when the
    /// service was already waiting; a pause that ends just after the kill, or a short one of
    /// normal service after the recovery, has less of itself after the kill).
    static func recoveries(_ sup: BenchSupervisor, guest: String, prefix: String, killedAt: [UInt64]) throws -> [Double] {
        let gaps = gaps(sup, guest: guest, prefix: prefix)
        return try killedAt.map { k in
            let around = gaps.filter { $0.to > k && $0.from < k + 20_000_000 }
            func afterKill(_ g: (from: UInt64, to: UInt64)) -> UInt64 { g.to - max(g.from, k) }
            guard let g = around.max(by: { afterKill($0) < afterKill($1) }) else {
                throw BenchError("no pause of \(guest)'s service around the kill at \(k): \(gaps.count) pauses recorded")
            }
            return Double(g.to - k) / 1e6
        }
    }

    /// The pauses `guest` reported (`PREFIX gap FROM TO`, monotonic ns).
    static func gaps(_ sup: BenchSupervisor, guest: String, prefix: String) -> [(from: UInt64, to: UInt64)] {
        sup.consoleLog(guest).split(separator: "\n").compactMap { line in
            guard let r = line.range(of: prefix + " gap ") else { return nil }
            let f = line[r.upperBound...].split(separator: " ")
            guard f.count == 2, let a = UInt64(f[0]), let b = UInt64(f[1]) else { return nil }
            return (a, b)
        }
    }

    /// blkback killed while a blkcheck guest writes its disk at depth 8 (and verifies every block
    /// at the end).
    static func block(_ sup: BenchSupervisor, kills: Int) throws -> [Result] {
        let blkback = try sibling("blkback"), blkcheck = try sibling("blkcheck")
        let backend = "blkback-recovery"
        var guests = [backend]
        defer { for g in guests.reversed() { _ = try? sup.call(.destroy(domain: g)) } }
        try startDriverDomain(sup, backend, kernel: blkback, serving: "serving vbds")
        let image = sup.dir + "/recovery.img"
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, 64 << 20) == 0 else {
            throw BenchError("cannot make \(image)")
        }
        defer { unlink(image) }
        let duration = Int(Double(kills) * 0.8) + 5
        guests.append("soak")
        try NetSuite.write(sup, "soak", """
            name = "soak"
            kernel = "\(blkcheck)"
            extra = "mode=soak duration=\(duration) depth=8 span=65536 gaps=2"
            memory = 32
            disk = [ 'vdev=xvda, access=rw, backend=\(backend), target=\(image)' ]
            """)
        try BlkSuite.awaitLine(sup, "soak", containing: "soak: xvda", timeout: 30)
        let (killedAt, fresh) = try killAndStartFresh(sup, backend: backend, kernel: blkback, marker: "serving vbds", kills: kills,
                                                      guest: "soak", prefix: "soak:", guests: &guests)
        var lost = 0
        do {
            try BlkSuite.awaitLine(sup, "soak", containing: "soak OK", timeout: Double(duration) + 60)
        } catch {
            // The soak stops at the first block that does not hold what it was told was written.
            lost = 1
            fputs("recovery: the soak failed: \(error)\n", stderr)
        }
        let recovery = try recoveries(sup, guest: "soak", prefix: "soak:", killedAt: killedAt)
        fputs("recovery: blkback, every kill (ms to the first completed write): \(MigrateSuite.fmt(recovery)) | fresh driver domain start: \(MigrateSuite.fmt(fresh))\n", stderr)
        let ours = Sample(values: recovery), peer = Sample(values: fresh)
        return [
            Result(name: "blk_recovery_ms", unit: "ms", procvisor: ours.median, peer: peer.median, peer_name: "fresh blkback driver domain start (median)",
                   ratio: ours.median / peer.median, higher_is_better: false),
            Result(name: "blk_recovery_p99_ms", unit: "ms", procvisor: ours.percentile(99), peer: peer.percentile(99),
                   peer_name: "fresh blkback driver domain start (p99)", ratio: ours.percentile(99) / peer.percentile(99), higher_is_better: false),
            Result(name: "blk_lost_writes", unit: "count", procvisor: Double(lost), peer: 0, peer_name: "nothing lost",
                   ratio: Double(lost), higher_is_better: false),
        ]
    }

    /// netback killed while a udp-echo client guest sends datagram after datagram (200 bytes, one
    /// at a time, each sent again when not answered within 5 ms) to a udp-echo server guest on
    /// the same bridge: the time from each kill to the first answer that comes back through the
    /// new incarnation.
    static func network(_ sup: BenchSupervisor, kills: Int) throws -> [Result] {
        let netback = try sibling("netback")
        let backend = "netback-recovery"
        var guests: [String] = []
        defer { for g in guests.reversed() { _ = try? sup.call(.destroy(domain: g)) } }
        let duration = Int(Double(kills) * 0.8) + 5
        try startEchoPair(sup, backend: backend, prefix: "echo", net: "2e", subnet: "10.215.0", seconds: duration, guests: &guests)
        // The client has had answers once its stack is up; give it a moment of steady service.
        usleep(500_000)
        let (killedAt, fresh) = try killAndStartFresh(sup, backend: backend, kernel: netback, marker: "serving vifs", kills: kills,
                                                      guest: "echo-client", prefix: "udp-echo:", guests: &guests)
        let summary = try BlkSuite.awaitLine(sup, "echo-client", containing: "udp-echo: OK", timeout: Double(duration) + 60)
        let recovery = try recoveries(sup, guest: "echo-client", prefix: "udp-echo:", killedAt: killedAt)
        fputs("recovery: netback, every kill (ms to the first answer through the new incarnation): \(MigrateSuite.fmt(recovery)) "
              + "| fresh driver domain start: \(MigrateSuite.fmt(fresh)) | \(summary)\n", stderr)
        let ours = Sample(values: recovery), peer = Sample(values: fresh)
        return [
            Result(name: "net_recovery_ms", unit: "ms", procvisor: ours.median, peer: peer.median, peer_name: "fresh netback driver domain start (median)",
                   ratio: ours.median / peer.median, higher_is_better: false),
            Result(name: "net_recovery_p99_ms", unit: "ms", procvisor: ours.percentile(99), peer: peer.percentile(99),
                   peer_name: "fresh netback driver domain start (p99)", ratio: ours.percentile(99) / peer.percentile(99), higher_is_better: false),
        ]
    }

    /// The supervisor replaced (`.liveUpdate`, the same binary) `rounds` times, 400 ms apart,
    /// while a guest makes XenStore round trips one after another (served by the supervisor:
    /// each update pauses them) and a UDP echo stream runs between two guests through netback
    /// (a path the supervisor is not on). Ours: per update, the longest pause either client
    /// saw. Peer, interleaved: starting a fresh procvisord (in a run directory of its own) until
    /// its control socket answers, the least any restart of the supervisor could cost.
    static func liveUpdate(_ sup: BenchSupervisor, rounds: Int) throws -> [Result] {
        let procvisord = try sibling("procvisord")
        var guests: [String] = []
        defer { for g in guests.reversed() { _ = try? sup.call(.destroy(domain: g)) } }
        let seconds = Int(Double(rounds) * 0.9) + 6
        try startEchoPair(sup, backend: "netback-lu", prefix: "lu", net: "2f", subnet: "10.218.0", seconds: seconds, guests: &guests)
        guests.append("xs-echo")
        try sup.create("xs-echo", extra: "mode=xs-echo seconds=\(seconds) gaps=2")
        try BlkSuite.awaitLine(sup, "xs-echo", containing: "xs-echo: running", timeout: 30)
        usleep(500_000)
        var windows: [(UInt64, UInt64)] = [], reported: [Double] = [], fresh: [Double] = []
        for i in 0..<rounds {
            usleep(400_000)
            let t0 = MonotonicClock.nanoseconds()
            guard case let .liveUpdated(_, pauseMs) = try sup.call(.liveUpdate(binary: nil)) else {
                throw BenchError("live update \(i + 1) failed\n\(BlkSuite.diagnostics(sup, "xs-echo"))")
            }
            windows.append((t0, MonotonicClock.nanoseconds()))
            reported.append(pauseMs)
            fresh.append(try freshSupervisorStart(procvisord))
        }
        try BlkSuite.awaitLine(sup, "xs-echo", containing: "xs-echo: OK", timeout: Double(seconds) + 30)
        try BlkSuite.awaitLine(sup, "lu-client", containing: "udp-echo: OK", timeout: Double(seconds) + 30)
        func longest(_ guest: String, _ prefix: String) -> [Double] {
            let g = gaps(sup, guest: guest, prefix: prefix)
            return windows.map { w in
                g.filter { $0.to > w.0 && $0.from < w.1 }.map { Double($0.to - $0.from) / 1e6 }.max() ?? 0
            }
        }
        let xs = longest("xs-echo", "xs-echo:"), udp = longest("lu-client", "udp-echo:")
        let worst = zip(xs, udp).map { max($0, $1) }
        fputs("recovery: live update, every round (longest XenStore pause ms): \(MigrateSuite.fmt(xs)) | UDP through netback: \(MigrateSuite.fmt(udp)) "
              + "| as the supervisor measured it: \(MigrateSuite.fmt(reported)) | fresh procvisord start: \(MigrateSuite.fmt(fresh))\n", stderr)
        // Where the pause went, as each new binary logged it.
        let log = (try? String(contentsOfFile: sup.dir + "/procvisord.log", encoding: .utf8)) ?? ""
        for line in log.split(separator: "\n") where line.contains("where the pause went") {
            fputs("recovery: live update: \(line.split(separator: ":").last.map { String($0) } ?? "")\n", stderr)
        }
        let ours = Sample(values: worst), peer = Sample(values: fresh)
        return [
            Result(name: "live_update_pause_ms", unit: "ms", procvisor: ours.median, peer: peer.median, peer_name: "fresh procvisord start (median)",
                   ratio: ours.median / peer.median, higher_is_better: false),
            Result(name: "live_update_pause_max_ms", unit: "ms", procvisor: ours.percentile(100), peer: peer.percentile(100),
                   peer_name: "fresh procvisord start (max)", ratio: ours.percentile(100) / peer.percentile(100), higher_is_better: false),
        ]
    }

    /// A netback driver domain `backend` of its own, a udp-echo server guest PREFIX-server
    /// (SUBNET.2) and a client guest PREFIX-client (SUBNET.3) sending it 200-byte datagrams one
    /// at a time for `seconds` (each sent again when not answered in 5 ms) and recording its
    /// pauses of 2 ms or more; on a bridge of their own. Each domain's name goes into `guests`
    /// as it is created.
    static func startEchoPair(_ sup: BenchSupervisor, backend: String, prefix: String, net: String, subnet: String,
                              seconds: Int, guests: inout [String]) throws {
        let udpEcho = try sibling("udp-echo")
        guests.append(backend)
        try startDriverDomain(sup, backend, kernel: try sibling("netback"), serving: "serving vifs")
        let bridge = "pv\(prefix)\(getpid() % 10_000)"
        func vif(_ n: Int) -> String { "vif = [ 'mac=00:16:3e:00:\(net):0\(n), ip=\(subnet).\(n)/24, bridge=\(bridge), backend=\(backend)' ]" }
        guests.append("\(prefix)-server")
        try NetSuite.write(sup, "\(prefix)-server", "name = \"\(prefix)-server\"\nkernel = \"\(udpEcho)\"\nextra = \"port=7\"\nmemory = 32\n\(vif(2))\n")
        try BlkSuite.awaitLine(sup, "\(prefix)-server", containing: "listening on", timeout: 30)
        guests.append("\(prefix)-client")
        try NetSuite.write(sup, "\(prefix)-client", """
            name = "\(prefix)-client"
            kernel = "\(udpEcho)"
            extra = "client=\(subnet).2 port=7 duration=\(seconds) size=200 retry=5 gaps=2"
            memory = 32
            \(vif(3))
            """)
    }

    /// Starts procvisord in a run directory of its own and returns the ms until its control
    /// socket answers a ping; then stops it.
    static func freshSupervisorStart(_ procvisord: String) throws -> Double {
        var template = Array("/tmp/pvb-fresh.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = dir
        env["PROCVISOR_NO_AUTOSTART"] = "1"
        let t0 = MonotonicClock.nanoseconds()
        let pid = try Spawner.spawnPlain(path: procvisord, argv: [procvisord], env: env.map { "\($0.key)=\($0.value)" })
        defer {
            kill(pid, SIGTERM)
            _ = try? ChildReaper.wait(pid)
        }
        let deadline = t0 + 10_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            if let fd = try? UnixSocket.connect(path: dir + "/control") {
                defer { fd.close() }
                try fd.writeAll(try ControlFraming.encode(ControlRequest.ping))
                var buffer: [UInt8] = []
                while true {
                    if case .pong? = try ControlFraming.decode(ControlResponse.self, from: &buffer) {
                        return Double(MonotonicClock.nanoseconds() - t0) / 1e6
                    }
                    let chunk = try fd.read(upTo: 4096)
                    if chunk.isEmpty { break }
                    buffer += chunk
                }
            }
            usleep(200)
        }
        throw BenchError("a fresh procvisord did not answer within 10 s")
    }
}

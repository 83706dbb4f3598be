import Foundation
import Glibc
import LinuxHost
import Toolstack

/// A thousand idle domains on one host.
/// - `create_rate`: domains per second while creating N idle 16 MiB domains one after another
///   (each `create` returns once the guest's main runs), against the rate of starting the same
///   binary N times with util-linux `unshare` into the namespaces a domain's jail has, each left
///   running idle as well, until its main runs.
/// - `xl_list_1000`: the wall time of `xl list` (the real binary, process start included) with
///   the N domains up, median of 10; against the 100 ms asked.
/// - `supervisor_rss_per_domain`: the supervisor's resident memory growth over the N domains, per
///   domain, KiB; `domain_rss_idle`: the median resident memory of one idle domain process, KiB,
///   against the same binary's as a bare idle process.
/// Everything is destroyed after, and the suite fails if a domain process is left.
/// `--count N` is the number of domains (default 1000).
enum DensitySuite {
    static func run(count: Int) throws -> [Result] {
        let n = count == 200 ? 1000 : count
        let sup = try BenchSupervisor()
        defer { sup.stop() }
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        usleep(200_000)
        let rss0 = ProcFS.residentKB(of: sup.pid)

        var created: [String] = []
        defer {
            for name in created { _ = try? sup.call(.destroy(domain: name)) }
        }
        let t0 = MonotonicClock.nanoseconds()
        for i in 0..<n {
            var config = DomainConfig(name: "idle\(i)", kernel: sup.guest)
            config.memory = 16
            config.maxmem = 16
            switch try sup.call(.create(config: config, paused: false)) {
            case .created: created.append("idle\(i)")
            case let .error(msg): throw BenchError("domain \(i + 1) of \(n): \(msg)")
            case let other: throw BenchError("domain \(i + 1) of \(n): \(other)")
            }
        }
        let createSeconds = Double(MonotonicClock.nanoseconds() - t0) / 1e9
        usleep(500_000)
        let rss1 = ProcFS.residentKB(of: sup.pid)

        guard case let .domains(list) = try sup.call(.list(domains: [])) else { throw BenchError("list failed") }
        let domainRSS = Sample(values: list.filter { $0.domid != 0 && $0.pid > 0 }.map { Double(ProcFS.residentKB(of: $0.pid)) }).median

        // xl list, the real command.
        let xl = try sibling("xl")
        var listTimes: [Double] = []
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = sup.dir
        env["PROCVISOR_NO_AUTOSTART"] = "1"
        let envList = env.map { "\($0.key)=\($0.value)" }
        var lines = 0
        for _ in 0..<11 {
            let (r, w) = try FileDescriptor.pipe()
            let t = MonotonicClock.nanoseconds()
            let pid = try Spawner.spawn(path: xl, argv: [xl, "list"], env: envList, fds: [(null, 0), (w, 1), (null, 2)], limits: [], filter: nil)
            w.close()
            var out: [UInt8] = []
            while true {
                let chunk = try r.read(upTo: 1 << 20)
                if chunk.isEmpty { break }
                out += chunk
            }
            r.close()
            let status = try ChildReaper.wait(pid)
            listTimes.append(Double(MonotonicClock.nanoseconds() - t) / 1e6)
            guard case .exited(0) = status else { throw BenchError("xl list failed: \(status)") }
            lines = out.split(separator: UInt8(ascii: "\n")).count
        }
        guard lines == n + 2 else { throw BenchError("xl list printed \(lines) lines for \(n) domains") }
        let listMs = Sample(values: Array(listTimes.dropFirst())).median

        for name in created { _ = try sup.call(.destroy(domain: name)) }
        created.removeAll()
        guard case let .domains(after) = try sup.call(.list(domains: [])), after.count == 1 else { throw BenchError("domains left after destroy") }
        usleep(200_000)
        let leftover = ProcFS.children(of: sup.pid).filter { ProcFS.state(of: $0) != "Z" }
        if !leftover.isEmpty { throw BenchError("supervisor children left after destroying every domain: \(leftover)") }

        // Peer: the same binary, bare, in the jail's namespaces, left idle.
        let unshare = "/usr/bin/unshare"
        let namespaces = ["--mount", "--pid", "--net", "--ipc", "--uts", "--cgroup"] + (geteuid() == 0 ? [] : ["--user", "--map-root-user"])
        var peers: [pid_t] = []
        defer {
            for p in peers { kill(p, SIGKILL) }
            for p in peers { _ = try? ChildReaper.wait(p) }
        }
        let t1 = MonotonicClock.nanoseconds()
        for _ in 0..<n {
            let (r, w) = try FileDescriptor.pipe()
            let pid = try Spawner.spawn(path: unshare, argv: [unshare] + namespaces + ["--fork", "--kill-child", "--", sup.guest, "--idle"], env: [],
                                        fds: [(null, 0), (w, 1), (null, 2)], limits: [], filter: nil)
            w.close()
            peers.append(pid)
            guard try r.read(upTo: 1) == [UInt8(ascii: "R")] else { r.close(); throw BenchError("the unshare peer did not start") }
            r.close()
        }
        let peerSeconds = Double(MonotonicClock.nanoseconds() - t1) / 1e9
        // The idle peer's own RSS: the child of the first unshare.
        let peerRSS = ProcFS.children(of: peers[0]).first.map { Double(ProcFS.residentKB(of: $0)) } ?? .nan

        let ours = Double(n) / createSeconds, theirs = Double(n) / peerSeconds
        let perDomain = Double(Int64(rss1) - Int64(rss0)) / Double(n)
        fputs("density: \(n) domains created in \(String(format: "%.1f", createSeconds)) s; supervisor RSS \(rss0) → \(rss1) KiB\n", stderr)
        return [
            Result(name: "create_rate", unit: "domains/s", procvisor: ours, peer: theirs, peer_name: "unshare+exec, left idle",
                   ratio: ours / theirs, higher_is_better: true),
            Result(name: "xl_list_\(n)", unit: "ms", procvisor: listMs, peer: 100, peer_name: "asked",
                   ratio: listMs / 100, higher_is_better: false),
            Result(name: "supervisor_rss_per_domain", unit: "KiB", procvisor: perDomain, peer: 0, peer_name: "(none)",
                   ratio: 0, higher_is_better: false),
            Result(name: "domain_rss_idle", unit: "KiB", procvisor: domainRSS, peer: peerRSS, peer_name: "same binary bare, idle",
                   ratio: domainRSS / peerRSS, higher_is_better: false),
        ]
    }
}

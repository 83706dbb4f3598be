import Foundation
import Glibc
import LinuxHost
import Toolstack

/// `xl create` → guest `main` running, against two peers: a bare fork+exec of the same binary
/// until its `main` runs, and the same binary started by util-linux `unshare` in the namespaces a
/// domain's jail has (mount, pid, net, ipc, uts, cgroup; user too when not root). Alternates the
/// three so machine noise hits all alike.
enum LifecycleSuite {
    static func run(count: Int) throws -> [Result] {
        let sup = try BenchSupervisor()
        defer { sup.stop() }
        let guest = sup.guest
        func call(_ r: ControlRequest) throws -> ControlResponse { try sup.call(r) }
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }

        var ours: [Double] = [], bare: [Double] = [], unshared: [Double] = []
        let unshare = "/usr/bin/unshare"
        let namespaces = ["--mount", "--pid", "--net", "--ipc", "--uts", "--cgroup"] + (geteuid() == 0 ? [] : ["--user", "--map-root-user"])
        let haveUnshare = FileIO.isExecutable(unshare)
        for i in 0..<(count + 5) {
            // Procvisor: request sent → supervisor verified the sandbox and main is running.
            var config = DomainConfig(name: "bench\(i)", kernel: guest)
            config.memory = 16
            config.maxmem = 16
            let t0 = MonotonicClock.nanoseconds()
            guard case .created = try call(.create(config: config, paused: false)) else { throw BenchError("create failed") }
            let t1 = MonotonicClock.nanoseconds()
            guard case .ok = try call(.destroy(domain: "bench\(i)")) else { throw BenchError("destroy failed") }

            // Peer: fork+exec of the same binary until its main writes "R".
            let (r, w) = try FileDescriptor.pipe()
            let t2 = MonotonicClock.nanoseconds()
            let pid = try Spawner.spawn(path: guest, argv: [guest], env: [], fds: [(null, 0), (w, 1), (null, 2)], limits: [], filter: nil)
            w.close()
            _ = try r.read(upTo: 1)
            let t3 = MonotonicClock.nanoseconds()
            r.close()
            _ = try ChildReaper.wait(pid)

            // Peer 2: unshare(1) into the same namespaces, then the same binary until "R".
            var t5: UInt64 = 0, t4: UInt64 = 0
            if haveUnshare {
                let (r2, w2) = try FileDescriptor.pipe()
                t4 = MonotonicClock.nanoseconds()
                let upid = try Spawner.spawn(path: unshare, argv: [unshare] + namespaces + ["--fork", "--", guest], env: [],
                                             fds: [(null, 0), (w2, 1), (null, 2)], limits: [], filter: nil)
                w2.close()
                _ = try r2.read(upTo: 1)
                t5 = MonotonicClock.nanoseconds()
                r2.close()
                _ = try ChildReaper.wait(upid)
            }
            if i >= 5 {  // the first few warm the page cache and the supervisor
                ours.append(Double(t1 - t0) / 1e6)
                bare.append(Double(t3 - t2) / 1e6)
                if haveUnshare { unshared.append(Double(t5 - t4) / 1e6) }
            }
        }
        let o = Sample(values: ours), b = Sample(values: bare)
        var results: [Result] = []
        if !unshared.isEmpty {
            let u = Sample(values: unshared)
            results = [
                Result(name: "create_to_main_median", unit: "ms", procvisor: o.median, peer: u.median, peer_name: "unshare+exec",
                       ratio: o.median / u.median, higher_is_better: false),
                Result(name: "create_to_main_p99", unit: "ms", procvisor: o.percentile(99), peer: u.percentile(99), peer_name: "unshare+exec",
                       ratio: o.percentile(99) / u.percentile(99), higher_is_better: false),
            ]
        }
        return results + [
            Result(name: "create_to_main_median", unit: "ms", procvisor: o.median, peer: b.median, peer_name: "fork+exec",
                   ratio: o.median / b.median, higher_is_better: false),
            Result(name: "create_to_main_p99", unit: "ms", procvisor: o.percentile(99), peer: b.percentile(99), peer_name: "fork+exec",
                   ratio: o.percentile(99) / b.percentile(99), higher_is_better: false),
        ]
    }
}

import Foundation
import Glibc
import LinuxHost
import Toolstack

enum Suites {
    static let all: [String: (Int) throws -> [Result]] = ["lifecycle": LifecycleSuite.run]
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// `xl create` → guest `main` running, against a bare fork+exec of the same binary until its
/// `main` runs. Alternates the two so machine noise hits both alike.
enum LifecycleSuite {
    static func sibling(_ name: String) throws -> String {
        let me = Process.executablePath() ?? CommandLine.arguments[0]
        let path = String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
        guard FileIO.isExecutable(path) else {
            throw BenchError("\(path) is missing: build everything first (swift build -c release, or scripts/bench)")
        }
        return path
    }

    static func run(count: Int) throws -> [Result] {
        let guest = try sibling("bench-guest")
        let supervisorPath = try sibling("procvisord")
        var template = Array("/tmp/pvb.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = dir
        let sup = try Spawner.spawnPlain(path: supervisorPath, argv: [supervisorPath], env: env.map { "\($0.key)=\($0.value)" })
        defer {
            kill(sup, SIGTERM)
            _ = try? ChildReaper.wait(sup)
        }
        var control: FileDescriptor?
        for _ in 0..<500 where control == nil {
            control = try? UnixSocket.connect(path: dir + "/control")
            if control == nil { usleep(10_000) }
        }
        guard let fd = control else { throw BenchError("the supervisor did not start") }
        var buffer: [UInt8] = []
        func call(_ r: ControlRequest) throws -> ControlResponse {
            try fd.writeAll(try ControlFraming.encode(r))
            while true {
                if let resp = try ControlFraming.decode(ControlResponse.self, from: &buffer) { return resp }
                let chunk = try fd.read(upTo: 65536)
                if chunk.isEmpty { throw BenchError("supervisor closed the connection") }
                buffer += chunk
            }
        }
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }

        var ours: [Double] = [], bare: [Double] = []
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
            if i >= 5 {  // the first few warm the page cache and the supervisor
                ours.append(Double(t1 - t0) / 1e6)
                bare.append(Double(t3 - t2) / 1e6)
            }
        }
        fd.close()
        let o = Sample(values: ours), b = Sample(values: bare)
        return [
            Result(name: "create_to_main_median", unit: "ms", procvisor: o.median, peer: b.median, peer_name: "fork+exec",
                   ratio: o.median / b.median, higher_is_better: false),
            Result(name: "create_to_main_p99", unit: "ms", procvisor: o.percentile(99), peer: b.percentile(99), peer_name: "fork+exec",
                   ratio: o.percentile(99) / b.percentile(99), higher_is_better: false),
        ]
    }
}

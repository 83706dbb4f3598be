import Foundation
import Glibc
import LinuxHost
import Toolstack

/// Guest → netback → guest against two plain processes over an AF_UNIX SOCK_DGRAM socketpair.
///
/// A `netback` driver domain serves two `netbench` guests (examples/netbench) on one bridge.
/// For each datagram size the sender puts UDP datagrams of that payload on its tx ring for the
/// run time; the receiver counts those that arrive (rate = delivered datagrams / time from the
/// first to the stop mark). Then two bench-guest processes do the same over a socketpair (send
/// blocks when the receiver lags, so nothing is lost there; the guests' path drops what the
/// receiver's ring cannot take, and only what arrived counts). Payload bytes count for Gbit/s on
/// both sides.
///
/// Options (environment): PROCVISOR_NET_SECONDS (3), PROCVISOR_NET_ROUNDS (3; medians),
/// PROCVISOR_NET_SIZES ("64,1500"), PROCVISOR_NET_BACKEND_EXTRA (netback settings, e.g.
/// "spin=2000 budget=128").
///
/// Targets (issue 6), printed as met / not met: at 64 bytes at least 2× the socketpair's
/// packets/s; at 1500 bytes at least 1.5× its Gbit/s.
enum NetSuite {
    struct Figures {
        var pps: Double
        var gbps: Double
    }

    static func run(count _: Int) throws -> [Result] {
        let env = ProcessInfo.processInfo.environment
        let seconds = env["PROCVISOR_NET_SECONDS"].flatMap(Int.init).map { max(1, $0) } ?? 3
        let rounds = env["PROCVISOR_NET_ROUNDS"].flatMap(Int.init).map { max(1, $0) } ?? 3
        let sizes = (env["PROCVISOR_NET_SIZES"] ?? "64,1500").split(separator: ",").compactMap { Int($0) }.map { min(max($0, 18), 1472) }
        let backendExtra = env["PROCVISOR_NET_BACKEND_EXTRA"] ?? ""
        let netback = try sibling("netback"), netbench = try sibling("netbench")
        let sup = try BenchSupervisor()
        let backendName = "netback-bench", bridge = "pvbench\(getpid() % 10000)"
        var guests: [String] = []
        defer {
            for g in guests { _ = try? sup.call(.destroy(domain: g)) }
            _ = try? sup.call(.destroy(domain: backendName))
            sup.stop()
        }
        try write(sup, backendName, """
            name = "\(backendName)"
            kernel = "\(netback)"
            driver_domain = 1
            memory = 64
            vcpus = 2
            extra = "\(backendExtra)"
            """)
        try BlkSuite.awaitLine(sup, backendName, containing: "serving vifs", timeout: 30)
        guests.append("netbench-recv")
        try write(sup, "netbench-recv", """
            name = "netbench-recv"
            kernel = "\(netbench)"
            extra = "role=recv port=9000"
            memory = 64
            vcpus = 1
            vif = [ 'mac=00:16:3e:00:b0:02, ip=10.99.0.2/24, bridge=\(bridge), backend=\(backendName)' ]
            """)
        try BlkSuite.awaitLine(sup, "netbench-recv", containing: "recv listening", timeout: 30)
        print("net: \(seconds) s per run, \(rounds) rounds per size (medians), bridge \(bridge), netback \(backendExtra)")
        fflush(stdout)

        var rows: [(Int, Figures, Figures)] = []
        var run = 0
        for size in sizes {
            var ours: [Figures] = [], peers: [Figures] = []
            for round in 0..<rounds {
                run += 1
                let sender = "netbench-send-\(run)"
                guests.append(sender)
                try write(sup, sender, """
                    name = "\(sender)"
                    kernel = "\(netbench)"
                    extra = "role=send peer=10.99.0.2 port=9000 size=\(size) seconds=\(seconds)"
                    memory = 64
                    vcpus = 1
                    on_poweroff = "destroy"
                    vif = [ 'mac=00:16:3e:00:b1:\(String(format: "%02x", run % 256)), ip=10.99.0.\(10 + run % 200)/24, bridge=\(bridge), backend=\(backendName)' ]
                    """)
                let line = try awaitNth(sup, "netbench-recv", containing: "recv datagrams=", n: run, timeout: Double(seconds) + 60)
                try? BlkSuite.awaitGone(sup, sender, timeout: 30)
                guests.removeAll { $0 == sender }
                let v = BlkSuite.keyValues(line)
                let o = Figures(pps: v["pps"] ?? 0, gbps: v["gbps"] ?? 0)
                let p = try socketpair(size: size, seconds: seconds)
                let sent = BlkSuite.keyValues(sup.consoleLog(sender).split(separator: "\n").last { $0.contains("send datagrams=") }.map(String.init) ?? "")
                print("net: \(size) B, round \(round + 1): procvisor \(fmt(o.pps)) pps \(fmt3(o.gbps)) Gbit/s (sender offered \(fmt(sent["pps"] ?? 0)) pps); socketpair \(fmt(p.pps)) pps \(fmt3(p.gbps)) Gbit/s")
                fflush(stdout)
                ours.append(o)
                peers.append(p)
            }
            rows.append((size, median(ours), median(peers)))
        }
        print(sup.consoleLog(backendName).split(separator: "\n").filter { $0.contains("disconnected") }.suffix(2).joined(separator: "\n"))
        let header = ["size", "procvisor pps", "Gbit/s", "socketpair pps", "Gbit/s", "pps ratio", "Gbit/s ratio", "target"]
        var table: [[String]] = []
        var results: [Result] = []
        for (size, o, p) in rows {
            let ppsRatio = p.pps > 0 ? o.pps / p.pps : 0, gbpsRatio = p.gbps > 0 ? o.gbps / p.gbps : 0
            var target = ""
            if size <= 64 { target = (ppsRatio >= 2 ? "met" : "not met") + " (pps ≥ 2× socketpair)" }
            if size >= 1400 { target = (gbpsRatio >= 1.5 ? "met" : "not met") + " (Gbit/s ≥ 1.5× socketpair)" }
            table.append(["\(size) B", fmt(o.pps), fmt3(o.gbps), fmt(p.pps), fmt3(p.gbps), String(format: "%.2f×", ppsRatio),
                          String(format: "%.2f×", gbpsRatio), target])
            let peerName = "AF_UNIX SOCK_DGRAM socketpair, two processes"
            results.append(Result(name: "udp_\(size)b_pps", unit: "packets/s", procvisor: o.pps, peer: p.pps, peer_name: peerName,
                                  ratio: ppsRatio, higher_is_better: true))
            results.append(Result(name: "udp_\(size)b_gbps", unit: "Gbit/s", procvisor: o.gbps, peer: p.gbps, peer_name: peerName,
                                  ratio: gbpsRatio, higher_is_better: true))
        }
        BlkSuite.printAligned(header, table)
        fflush(stdout)
        return results
    }

    static func write(_ sup: BenchSupervisor, _ name: String, _ text: String) throws {
        let path = sup.dir + "/\(name).cfg"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        try BlkSuite.create(sup, configPath: path)
    }

    /// The `n`th console line containing `text`.
    static func awaitNth(_ sup: BenchSupervisor, _ name: String, containing text: String, n: Int, timeout: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let lines = sup.consoleLog(name).split(separator: "\n").filter { $0.contains(text) }
            if lines.count >= n { return String(lines[n - 1]) }
            usleep(50_000)
        }
        throw BenchError("\(name) did not print '\(text)' (\(n)) within \(Int(timeout)) s\n\(BlkSuite.diagnostics(sup, name))\nnetback:\n\(sup.consoleLog("netback-bench").suffix(1500))")
    }

    /// The peer: two bench-guest processes over an AF_UNIX SOCK_DGRAM socketpair.
    static func socketpair(size: Int, seconds: Int) throws -> Figures {
        var fds: [Int32] = [0, 0]
        guard Glibc.socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw BenchError("socketpair: \(Errno.current)")
        }
        let a = FileDescriptor(rawValue: fds[0]), b = FileDescriptor(rawValue: fds[1])
        let recv: (pid: pid_t, output: FileDescriptor)
        let send: (pid: pid_t, output: FileDescriptor)
        do {
            recv = try runPeer(["--dgram-recv"], fds: [b])
            send = try runPeer(["--dgram-send", "\(size)", "\(seconds)"], fds: [a])
        } catch {
            a.close()
            b.close()
            throw error
        }
        a.close()
        b.close()
        _ = try peerValue(send, key: "sent")
        let text = try peerOutput(recv)
        let v = BlkSuite.keyValues(text.replacingOccurrences(of: "\n", with: " "))
        return Figures(pps: v["pps"] ?? 0, gbps: v["gbps"] ?? 0)
    }

    static func median(_ runs: [Figures]) -> Figures {
        func m(_ key: (Figures) -> Double) -> Double {
            let v = runs.map(key).sorted()
            return v[(v.count - 1) / 2]
        }
        return Figures(pps: m(\.pps), gbps: m(\.gbps))
    }

    static func fmt(_ v: Double) -> String { String(format: "%.0f", v) }
    static func fmt3(_ v: Double) -> String { String(format: "%.3f", v) }
}

import Glibc
import LinuxHost

/// Event round trip between two domains (bind + send/wait through shared pages and futexes),
/// against a raw futex ping-pong and an eventfd ping-pong between two plain processes.
enum EvtchnSuite {
    static func run(count: Int) throws -> [Result] {
        let rounds = max(count, 100) * 100
        var results: [Result] = []
        // Three runs each, best of three, alternating so noise hits all alike.
        var ours: [Double] = [], ourSpin: [Double] = [], futex: [Double] = [], futexSpin: [Double] = [], efd: [Double] = []
        for i in 0..<3 {
            ours.append(try domainRoundTrip(rounds: rounds, spin: 0, tag: "a\(i)"))
            futex.append(try futexRoundTrip(rounds: rounds, spin: 0))
            efd.append(try eventfdRoundTrip(rounds: rounds))
            ourSpin.append(try domainRoundTrip(rounds: rounds, spin: spinCount, tag: "s\(i)"))
            futexSpin.append(try futexRoundTrip(rounds: rounds, spin: spinCount))
        }
        let o = ours.min()!, f = futex.min()!, e = efd.min()!, s = ourSpin.min()!, fs = futexSpin.min()!
        results.append(Result(name: "evtchn_rtt", unit: "us", procvisor: o / 1000, peer: f / 1000, peer_name: "futex ping-pong",
                              ratio: o / f, higher_is_better: false))
        results.append(Result(name: "evtchn_rtt_vs_eventfd", unit: "us", procvisor: o / 1000, peer: e / 1000, peer_name: "eventfd ping-pong",
                              ratio: e / o, higher_is_better: true))
        results.append(Result(name: "evtchn_rtt_spin", unit: "us", procvisor: s / 1000, peer: fs / 1000, peer_name: "futex ping-pong, same spin",
                              ratio: s / fs, higher_is_better: false))
        results.append(Result(name: "evtchn_rtt_spin_vs_eventfd", unit: "us", procvisor: s / 1000, peer: e / 1000, peer_name: "eventfd ping-pong",
                              ratio: e / s, higher_is_better: true))
        return results
    }

    /// Doorbell checks before sleeping in the spin-then-sleep runs (both sides, both peers).
    static let spinCount = 2000

    static func domainRoundTrip(rounds: Int, spin: Int, tag: String) throws -> Double {
        let sup = try BenchSupervisor()
        defer { sup.stop() }
        try sup.create("offer-\(tag)", extra: "mode=evtchn-offer peer=2 spin=\(spin)")
        try sup.create("bind-\(tag)", extra: "mode=evtchn-bind peer=1 rounds=\(rounds) spin=\(spin)")
        return try sup.awaitValue("bind-\(tag)", key: "rtt_ns")
    }

    static func futexRoundTrip(rounds: Int, spin: Int) throws -> Double {
        let mem = try MemFD.create(name: "futex-peer", size: 4096)
        defer { mem.close() }
        let pong = try runPeer(["--futex-pong", "spin=\(spin)"], fds: [mem])
        let ping = try runPeer(["--futex-ping", String(rounds), "spin=\(spin)"], fds: [mem])
        let v = try peerValue(ping, key: "rtt_ns")
        pong.output.close()
        _ = try ChildReaper.wait(pong.pid)
        return v
    }

    static func eventfdRoundTrip(rounds: Int) throws -> Double {
        let a = try FileDescriptor.eventfd()
        let b = try FileDescriptor.eventfd()
        defer { a.close(); b.close() }
        let pong = try runPeer(["--eventfd-pong"], fds: [a, b])
        let ping = try runPeer(["--eventfd-ping", String(rounds)], fds: [a, b])
        let v = try peerValue(ping, key: "rtt_ns")
        pong.output.close()
        _ = try ChildReaper.wait(pong.pid)
        return v
    }
}

import Foundation
import Glibc
import LinuxHost
import Toolstack

/// The credit scheduler's weight and cap as the kernel enforces them: CPU-bound domains, their
/// CPU time measured from /proc over a window, against what was asked.
/// - `credit_weight_share`: two spinners, weights 256 and 512, both held to CPU 0 (every thread's
///   affinity): the heavier one's CPU time over the lighter one's, against 2.0.
/// - `credit_cap`: one spinner capped at 50, free to run on any CPU: its CPU percentage,
///   against 50.
/// - `timer_latency_p99`: how late 2000 one-shot VIRQ_TIMER events 1 ms apart arrive in a
///   domain (`set_timer_op` with an absolute deadline, the guest blocked on the event), p99 in
///   µs, against a timerfd in a plain process doing the same (run before and after ours; the
///   mean of its two p99s).
/// `--count` is the window in tenths of a second (default 200 → 3 s; at least 1 s).
enum SchedSuite {
    static func run(count: Int) throws -> [Result] {
        let window = count == 200 ? 3.0 : max(1.0, Double(count) / 10)
        let sup = try BenchSupervisor()
        defer { sup.stop() }

        func spinner(_ name: String, weight: Int? = nil, cap: Int? = nil) throws -> pid_t {
            var config = DomainConfig(name: name, kernel: sup.guest)
            config.memory = 16
            config.maxmem = 16
            config.extra = "mode=spin"
            config.cpuWeight = weight
            config.cap = cap
            guard case .created = try sup.call(.create(config: config, paused: false)) else { throw BenchError("create \(name) failed") }
            _ = try sup.awaitLine(name, "spinning")
            guard case let .domains(list) = try sup.call(.list(domains: [name])), let pid = list.first?.pid, pid > 0 else {
                throw BenchError("\(name): no process")
            }
            return pid
        }
        /// CPU seconds each process used over the window.
        func measure(_ pids: [pid_t]) -> [Double] {
            let before = pids.map { Int64(ProcFS.cpuTimeNs(of: $0)) }
            let t0 = Int64(MonotonicClock.nanoseconds())
            usleep(useconds_t(window * 1e6))
            let elapsed = Double(Int64(MonotonicClock.nanoseconds()) - t0) / 1e9
            return zip(pids, before).map { Double(Int64(ProcFS.cpuTimeNs(of: $0.0)) - $0.1) / 1e9 / elapsed }
        }

        let light = try spinner("light", weight: 256)
        let heavy = try spinner("heavy", weight: 512)
        for pid in [light, heavy] { try pinToCPU0(pid) }
        usleep(300_000)
        let shares = measure([light, heavy])
        guard shares[0] > 0 else { throw BenchError("the weight-256 spinner got no CPU at all") }
        let ratio = shares[1] / shares[0]
        _ = try sup.call(.destroy(domain: "light"))
        _ = try sup.call(.destroy(domain: "heavy"))
        fputs("sched: weight 512 got \(Int(shares[1] * 100))% of CPU 0, weight 256 got \(Int(shares[0] * 100))%\n", stderr)

        let capped = try spinner("capped", cap: 50)
        usleep(300_000)
        let percent = measure([capped])[0] * 100
        _ = try sup.call(.destroy(domain: "capped"))

        // Timer lateness: 2000 one-shot timers 1 ms apart, VIRQ_TIMER in a domain against a
        // timerfd in a plain process; the peer runs before and after ours, their p99s averaged.
        func peerTimer() throws -> (p50: Double, p99: Double) {
            let text = try peerOutput(try runPeer(["--timerfd", "2000", "1000"], fds: []))
            func value(_ key: String) throws -> Double {
                guard let r = text.range(of: key + "="), let v = Double(text[r.upperBound...].prefix { $0.isNumber }) else {
                    throw BenchError("the timerfd peer printed no \(key): \(text)")
                }
                return v / 1000
            }
            return (try value("p50_ns"), try value("p99_ns"))
        }
        let peerBefore = try peerTimer()
        var timerConfig = DomainConfig(name: "timer", kernel: sup.guest)
        timerConfig.memory = 16
        timerConfig.maxmem = 16
        timerConfig.extra = "mode=timer rounds=2000 period_us=1000"
        guard case .created = try sup.call(.create(config: timerConfig, paused: false)) else { throw BenchError("create timer failed") }
        let ourP99 = try sup.awaitValue("timer", key: "p99_ns") / 1000
        let ourP50 = try sup.awaitValue("timer", key: "p50_ns") / 1000
        _ = try sup.call(.destroy(domain: "timer"))
        let peerAfter = try peerTimer()
        let peerP99 = (peerBefore.p99 + peerAfter.p99) / 2
        fputs("sched: timer lateness p50 \(ourP50) µs vs timerfd \(peerBefore.p50)/\(peerAfter.p50) µs; p99 \(ourP99) vs \(peerBefore.p99)/\(peerAfter.p99) µs\n", stderr)

        return [
            Result(name: "credit_weight_share", unit: "ratio", procvisor: ratio, peer: 2.0, peer_name: "weights asked (512/256)",
                   ratio: ratio / 2.0, higher_is_better: true, goal: "target 1.00 within 10%"),
            Result(name: "credit_cap", unit: "%cpu", procvisor: percent, peer: 50, peer_name: "cap asked",
                   ratio: percent / 50, higher_is_better: false, goal: "target 50% within 5 points"),
            Result(name: "timer_latency_p99", unit: "us", procvisor: ourP99, peer: peerP99, peer_name: "timerfd, mean of before/after",
                   ratio: ourP99 / peerP99, higher_is_better: false),
        ]
    }

    /// Every thread of `pid` on CPU 0 only (sched_setaffinity(2); glibc's wrapper is not
    /// visible from Swift).
    static func pinToCPU0(_ pid: pid_t) throws {
        guard let nr = Syscalls.number("sched_setaffinity") else { throw BenchError("no sched_setaffinity") }
        var mask: UInt64 = 1
        for name in FileIO.names(in: "/proc/\(pid)/task") {
            guard let tid = pid_t(name) else { continue }
            let rc = withUnsafeMutablePointer(to: &mask) { Syscalls.raw(nr, [Int(tid), 8, Int(bitPattern: $0)]) }
            if rc < 0 { throw BenchError("sched_setaffinity(\(tid)): errno \(-rc)") }
        }
    }
}

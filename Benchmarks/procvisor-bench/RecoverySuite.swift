import Foundation
import Glibc
import LinuxHost
import Toolstack

/// A driver domain killed under load: blkback is killed with SIGKILL again and again while a
/// blkcheck guest writes its disk at depth 8 (and verifies every block at the end); the time from
/// each kill to the first write the new incarnation completes is read off the guest's own record
/// of its pauses. Peer, interleaved with the kills: starting a fresh blkback driver domain until
/// it serves (what bringing a backend up costs at all).
enum RecoverySuite {
    static func run(count: Int) throws -> [Result] {
        let kills = max(20, min(count, 100))
        let sup = try BenchSupervisor(environment: ["PROCVISOR_DRIVER_RESTARTS": "1000/60"])
        defer { sup.stop() }
        let blkback = try sibling("blkback"), blkcheck = try sibling("blkcheck")
        let backend = "blkback-recovery"
        var guests = [backend]
        defer { for g in guests.reversed() { _ = try? sup.call(.destroy(domain: g)) } }
        /// A blkback driver domain called `name`, as the default one is.
        func startBlkback(_ name: String) throws {
            try NetSuite.write(sup, name, "name = \"\(name)\"\nkernel = \"\(blkback)\"\ndriver_domain = 1\nmemory = 64\nvcpus = 2\n")
        }
        try startBlkback(backend)
        try BlkSuite.awaitLine(sup, backend, containing: "serving vbds", timeout: 30)
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
        /// How many times `name`'s incarnations have said they serve (its console log goes on
        /// across restarts and across rounds of the same name).
        func serving(_ name: String) -> Int { sup.consoleLog(name).components(separatedBy: "serving vbds").count - 1 }
        var killedAt: [UInt64] = [], fresh: [Double] = []
        for i in 0..<kills {
            usleep(300_000)
            guard let pid = ProcFS.child(of: sup.pid, running: blkback) else { throw BenchError("no \(backend) process to kill (kill \(i + 1))") }
            let before = serving(backend)
            killedAt.append(MonotonicClock.nanoseconds())
            kill(pid, SIGKILL)
            let deadline = Date().addingTimeInterval(15)
            while serving(backend) == before {
                guard Date() < deadline else { throw BenchError("\(backend) did not come back after kill \(i + 1)\n\(BlkSuite.diagnostics(sup, "soak"))") }
                usleep(2_000)
            }
            // The peer: a fresh driver domain of the same binary, until it serves.
            let name = "blkback-fresh"
            guests.append(name)
            // Counted before it starts: its console log goes on from the previous round's.
            let start = serving(name)
            let t0 = MonotonicClock.nanoseconds()
            try startBlkback(name)
            let freshDeadline = Date().addingTimeInterval(15)
            while serving(name) == start {
                guard Date() < freshDeadline else { throw BenchError("a fresh \(name) did not serve within 15 s\n\(BlkSuite.diagnostics(sup, name))") }
                usleep(500)
            }
            fresh.append(Double(MonotonicClock.nanoseconds() - t0) / 1e6)
            _ = try? sup.call(.destroy(domain: name))
            guests.removeAll { $0 == name }
        }
        var lost = 0
        do {
            try BlkSuite.awaitLine(sup, "soak", containing: "soak OK", timeout: Double(duration) + 60)
        } catch {
            // The soak stops at the first block that does not hold what it was told was written.
            lost = 1
            fputs("recovery: the soak failed: \(error)\n", stderr)
        }
        let gaps: [(from: UInt64, to: UInt64)] = sup.consoleLog("soak").split(separator: "\n").compactMap { line in
            guard let r = line.range(of: "soak: gap ") else { return nil }
            let f = line[r.upperBound...].split(separator: " ")
            guard f.count == 2, let a = UInt64(f[0]), let b = UInt64(f[1]) else { return nil }
            return (a, b)
        }
        var recovery: [Double] = []
        for k in killedAt {
            // The first completion of the new incarnation ends the longest pause around the kill
            // (which may begin a little after it: answers the old one wrote before the signal
            // landed are still taken; short pauses of normal service come and go around it).
            let around = gaps.filter { $0.to > k && $0.from < k + 20_000_000 && $0.from + 50_000_000 > k }
            guard let g = around.max(by: { $0.to - $0.from < $1.to - $1.from }) else {
                throw BenchError("no pause of the guest's writes around the kill at \(k): \(gaps.count) pauses recorded")
            }
            recovery.append(Double(g.to - k) / 1e6)
        }
        fputs("recovery: every kill (ms to the first completed write): \(MigrateSuite.fmt(recovery)) | fresh driver domain start: \(MigrateSuite.fmt(fresh))\n", stderr)
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
}

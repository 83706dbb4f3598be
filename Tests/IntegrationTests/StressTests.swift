import Foundation
import Glibc
import LinuxHost
import Testing

/// Many domains created and destroyed concurrently; the supervisor must end where it started.
/// Serialized: the two stress tests together would put 400 domains on two cores at once.
@Suite(.serialized) struct StressTests {
    @Test func twoHundredDomainsInParallelBatchesLeakNothing() throws {
        // A 4 GiB machine keeps the (sparse) M2P small, so RSS growth would show a real leak.
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_MEMORY_MB": "4096"])
        defer { h.stop() }
        // Warm up with a batch so lazily allocated supervisor state (and the M2P pages the
        // scattered frame allocator touches) is not mistaken for a leak.
        for i in 0..<10 { try h.create("warmup\(i)", mode: "run") }
        for i in 0..<10 { #expect(try h.xl("destroy", "warmup\(i)").ok) }
        let fdsBefore = h.settledFDCount()
        let rssBefore = ProcFS.residentKB(of: h.pid)
        #expect(h.children.isEmpty)

        let total = 200, batch = 10
        final class Failures: @unchecked Sendable {
            let lock = NSLock()
            var messages: [String] = []
            func add(_ m: String) { lock.lock(); messages.append(m); lock.unlock() }
        }
        let failures = Failures()
        for start in stride(from: 0, to: total, by: batch) {
            // Create a batch concurrently, check they all run, destroy them concurrently.
            DispatchQueue.concurrentPerform(iterations: batch) { i in
                let name = "s\(start + i)"
                let mode = (start + i) % 3 == 0 ? "busy" : "run"
                do {
                    let r = try h.xl(args: ["create", "-q", h.config(name, mode: mode, "vcpus = 2\n")])
                    if !r.ok { failures.add("create \(name): \(r.stderr)") }
                } catch { failures.add("create \(name): \(error)") }
            }
            let list = try h.list()
            for i in 0..<batch where list["s\(start + i)"] == nil { failures.add("s\(start + i) missing from xl list") }
            DispatchQueue.concurrentPerform(iterations: batch) { i in
                let name = "s\(start + i)"
                do {
                    let r = try h.xl("destroy", name)
                    if !r.ok { failures.add("destroy \(name): \(r.stderr)") }
                } catch { failures.add("destroy \(name): \(error)") }
            }
        }
        #expect(failures.messages.isEmpty, "\(failures.messages.prefix(5))")
        #expect(try h.list().keys.sorted() == ["Domain-0"])
        #expect(eventually { h.children.isEmpty }, "domain processes left: \(h.children)")
        #expect(eventually(timeout: 30) { h.controlSocketCount() == 1 && ProcFS.openFDCount(of: h.pid) == fdsBefore },
                "supervisor fds: \(fdsBefore) before, \(ProcFS.openFDCount(of: h.pid)) after")
        let rssAfter = ProcFS.residentKB(of: h.pid)
        #expect(rssAfter < rssBefore + 16 * 1024, "supervisor RSS grew from \(rssBefore) KiB to \(rssAfter) KiB")
        let consoleLogs = try FileManager.default.contentsOfDirectory(atPath: h.runDirectory + "/console")
        #expect(consoleLogs.count == total + 10)
    }

    static func fdTargets(_ pid: pid_t) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")
        }.sorted()
    }

    /// Memfd mappings in the supervisor's address space (pair pages, grant tables and pages).
    static func memfdMappings(_ pid: pid_t) -> Int {
        ((try? FileIO.readString("/proc/\(pid)/maps")) ?? "").split(separator: "\n").filter { $0.contains("/memfd:") }.count
    }

    @Test func hundredPairsMapUnmapAndPingPongWithVerifiedData() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let fdsBefore = h.settledFDCount()
        let mapsBefore = Self.memfdMappings(h.pid)
        let pairs = 100
        // Created in order, so pair i is dom 2i-1 (server) and dom 2i (client).
        for i in 1...pairs {
            try h.create("srv\(i)", mode: "pair-server", "extra = \"mode=pair-server peer=\(2 * i)\"\n")
            try h.create("cli\(i)", mode: "pair-client", "extra = \"mode=pair-client peer=\(2 * i - 1) seconds=3\"\n")
        }
        #expect(eventually(timeout: 120) { (try? h.list())?.count == 1 }, "pairs still running: \((try? h.list())?.count ?? -1)")
        var totalRounds = 0
        for i in 1...pairs {
            let cli = h.consoleLog("cli\(i)"), srv = h.consoleLog("srv\(i)")
            #expect(cli.contains("errors=0"), "cli\(i): \(cli)")
            #expect(srv.contains("errors=0"), "srv\(i): \(srv)")
            if let r = cli.split(separator: " ").first(where: { $0.hasPrefix("rounds=") }) { totalRounds += Int(r.dropFirst(7)) ?? 0 }
        }
        #expect(totalRounds > pairs, "only \(totalRounds) rounds in all")
        #expect(!(try h.dmesg()).contains("crashed"))
        #expect(eventually { h.children.isEmpty })
        #expect(eventually(timeout: 30) { h.controlSocketCount() == 1 && ProcFS.openFDCount(of: h.pid) == fdsBefore },
                "supervisor fds: \(fdsBefore) before, \(ProcFS.openFDCount(of: h.pid)) after: \(Self.fdTargets(h.pid))")
        #expect(Self.memfdMappings(h.pid) == mapsBefore, "memfd mappings: \(mapsBefore) before, \(Self.memfdMappings(h.pid)) after")
    }
}

import Foundation
import Glibc
import LinuxHost
import Testing

/// Many domains created and destroyed concurrently; the supervisor must end where it started.
@Suite struct StressTests {
    @Test func twoHundredDomainsInParallelBatchesLeakNothing() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        // Warm up once so lazily allocated supervisor state is not mistaken for a leak.
        try h.create("warmup", mode: "run")
        #expect(try h.xl("destroy", "warmup").ok)
        let fdsBefore = ProcFS.openFDCount(of: h.pid)
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
        // Control connections close asynchronously after xl exits.
        #expect(eventually { ProcFS.openFDCount(of: h.pid) == fdsBefore },
                "supervisor fds: \(fdsBefore) before, \(ProcFS.openFDCount(of: h.pid)) after")
        let rssAfter = ProcFS.residentKB(of: h.pid)
        #expect(rssAfter < rssBefore + 16 * 1024, "supervisor RSS grew from \(rssBefore) KiB to \(rssAfter) KiB")
        let consoleLogs = try FileManager.default.contentsOfDirectory(atPath: h.runDirectory + "/console")
        #expect(consoleLogs.count == total + 1)
    }
}

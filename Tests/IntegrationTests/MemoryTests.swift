import Foundation
import Glibc
import LinuxHost
import Testing

/// Reservations through real domains: memory given back really leaves the host, the supervisor's
/// accounting follows, limits hold, and a domain that cheats is crashed.
@Suite struct MemoryTests {
    func line(_ h: SupervisorHarness, _ domain: String, _ prefix: String) -> String? {
        var found: String?
        _ = eventually(timeout: 20) {
            found = h.consoleLog(domain).split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
            return found != nil
        }
        return found
    }

    @Test func balloonReturnsMemoryToTheHostAndTakesItAgain() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_MEMORY_MB": "1024"])
        defer { h.stop() }
        try h.create("bal", mode: "balloon", "memory = 48\nmaxmem = 64\n")
        #expect(line(h, "bal", "start:") == "start: host=48MiB reservation=48MiB max=64MiB")
        #expect(line(h, "bal", "decreased 4096 pages") != nil)
        #expect(line(h, "bal", "ballooned pfn has no mfn") == "ballooned pfn has no mfn: true")
        #expect(line(h, "bal", "after decrease:") == "after decrease: host=32MiB reservation=32MiB max=64MiB")
        #expect(line(h, "bal", "after populate:") == "after populate: host=48MiB reservation=48MiB max=64MiB")
        #expect(line(h, "bal", "grow into the rest of maxmem:") == "grow into the rest of maxmem: 4096 pages")
        #expect(line(h, "bal", "populate outside the domain:") == "populate outside the domain: 0 pages")
        #expect(line(h, "bal", "populate an already populated pfn:") == "populate an already populated pfn: 0 pages")
        #expect(line(h, "bal", "translate:")?.contains("-> pfn 0") == true)
        _ = line(h, "bal", "waiting")
        // The toolstack sees it too.
        #expect(try h.list()["bal"]?.mem == 64)
        #expect(try h.xl("info", "free_memory").stdout == "\(1024 - 64)\n")
        #expect(try h.xl("mem-max", "bal", "63").ok)
        let bad = try h.xl("mem-max", "bal", "100")
        #expect(!bad.ok && bad.stderr.contains("pseudo-physical space is 64 MiB"))
        #expect(try !h.xl("mem-max", "bal", "lots").ok)
        // Below the balloon target (48 MiB): refused, as libxl_domain_setmaxmem does.
        let low = try h.xl("mem-max", "bal", "16")
        #expect(!low.ok && low.stderr.contains("memory_static_max must be greater than or equal to memory_dynamic_max: 16 MiB is below the target of dom") && low.stderr.contains(", 48 MiB"),
                "\(low.stderr)")
        let r = try h.xl("console", "bal", stdin: "go\n\u{1d}", timeout: 10)
        #expect(r.ok)
        #expect(line(h, "bal", "populate above mem-max:") == "populate above mem-max: 0 pages")
        // Populated but never written pages cost the host nothing yet.
        #expect(line(h, "bal", "after mem-max:") == "after mem-max: host=48MiB reservation=63MiB max=63MiB")
        #expect(eventually { (try? h.list())?["bal"] == nil })
        #expect(try h.xl("info", "free_memory").stdout == "1024\n", "frames went back to the machine")
    }

    @Test func aDomainThatWritesMemoryItGaveBackIsCrashed() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("cheat", mode: "balloon", "extra = \"mode=balloon then=cheat\"\nmemory = 32\nmaxmem = 32\non_crash = \"preserve\"\n")
        _ = line(h, "cheat", "waiting")
        #expect(try h.xl("console", "cheat", stdin: "go\n\u{1d}", timeout: 10).ok)
        #expect(eventually(timeout: 10) { (try? h.dmesg())?.contains("(cheat): crashed: holds") == true }, "\((try? h.dmesg()) ?? "")")
        #expect(try h.dmesg().contains("but its reservation is 31744 KiB"))
    }

    @Test func domainsCannotTakeMoreThanTheMachineHas() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_MEMORY_MB": "100"])
        defer { h.stop() }
        try h.create("m1", mode: "run", "memory = 60\n")
        let r = try h.xl("create", h.config("m2", mode: "run", "memory = 60\n"))
        #expect(!r.ok && r.stderr.contains("memory=60 MiB is more than the free machine memory (40 MiB of 100 MiB)"))
        #expect(try h.list()["m1"]?.mem == 60)
    }
}

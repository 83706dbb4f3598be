import Foundation
import Glibc
import LinuxHost
import Testing

/// `xl top -b` (xentop's batch mode) through a real supervisor, a real blkback and guests doing
/// I/O or spinning: the columns parsed back and checked against what the guests did.
@Suite struct TopTests {
    static let header = ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)", "MAXMEM(%)", "VCPUS", "NETS",
                         "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO", "VBD_RD", "VBD_WR", "VBD_RSECT", "VBD_WSECT", "SSID"]

    /// Each iteration of `xl top -b`: its rows as name → column → text.
    func iterations(_ out: String) -> [[String: [String: String]]] {
        var result: [[String: [String: String]]] = []
        for line in out.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            if f == Self.header { result.append([:]); continue }
            guard f.count == Self.header.count, !result.isEmpty else { continue }
            result[result.count - 1][f[0]] = Dictionary(uniqueKeysWithValues: zip(Self.header, f))
        }
        return result
    }

    @Test func batchModeShowsEachDomainsCPUMemoryAndDeviceTotals() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        // A disk blkcheck keeps writing (its soak mode) through blkback.
        #expect(try h.xl("create", "-q", h.config("bb", kernel: Products.path("blkback"), "driver_domain = 1\n")).ok)
        #expect(eventually { h.consoleLog("bb").contains("serving vbds") })
        let img = h.runDirectory + "/t.img"
        _ = FileManager.default.createFile(atPath: img, contents: nil)
        _ = truncate(img, 32 << 20)
        #expect(try h.xl("create", "-q", h.config("disky", kernel: Products.path("blkcheck"),
            "extra = \"mode=soak duration=120 depth=4\"\nmemory = 32\ndisk = [ 'vdev=xvda, access=rw, backend=bb, target=\(img)' ]\n")).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("bb").contains("connected") }, "\(h.consoleLog("bb"))")
        // blkback publishes its counts once a second.
        #expect(eventually(timeout: 30) {
            let once = (try? h.xl(args: ["top", "-b", "-i", "1"]))?.stdout ?? ""
            return Int(iterations(once).last?["disky"]?["VBD_WR"] ?? "") ?? 0 > 0
        }, "\(h.consoleLog("disky"))")
        // A spinner.
        try h.create("spin", mode: "busy", "maxmem = 48\n")
        #expect(eventually { h.consoleLog("spin").contains("busy dom") })

        let r = try h.xl(args: ["top", "-b", "-i", "2", "-d", "1"], timeout: 30)
        #expect(r.ok, "\(r.stderr)")
        let its = iterations(r.stdout)
        #expect(its.count == 2, "\(r.stdout)")
        let last = try #require(its.last)
        #expect(Set(last.keys) == ["Domain-0", "bb", "disky", "spin"], "\(r.stdout)\ndisky: \(h.consoleLog("disky"))\nbb: \(h.consoleLog("bb"))")
        // Header exactly as xentop's: right-aligned names, one space apart.
        #expect(r.stdout.hasPrefix("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID\n"), "\(r.stdout.prefix(300))")
        let spin = try #require(last["spin"])
        #expect(spin["STATE"]?.hasSuffix("r") == true || spin["STATE"]?.contains("b") == true, "\(spin)")
        #expect(spin["MAXMEM(k)"] == "\(48 * 1024)")
        let pct = try #require(Double(spin["CPU(%)"] ?? ""))
        #expect(pct > 5 && pct <= 100.5, "a spinner on one vCPU shows \(pct)% between two samples")
        #expect(its.first?["spin"]?["CPU(%)"] == "0.0", "the first sample has no previous one (as xentop)")
        let disky = try #require(last["disky"])
        #expect(disky["VBDS"] == "1" && disky["NETS"] == "0")
        // The soak writes: the counts are blkback's, published once a second.
        #expect(Int(disky["VBD_WR"] ?? "") ?? 0 > 0 && Int(disky["VBD_RD"] ?? "") != nil, "\(disky)")
        #expect(Int(disky["VBD_WSECT"] ?? "") ?? 0 >= Int(disky["VBD_WR"] ?? "") ?? 0, "\(disky)")
        #expect(disky["VBD_OO"] == "0")
        // A domain without disks shows zeros, as xentop.
        #expect(spin["VBD_RD"] == "0" && spin["VBD_OO"] == "0" && spin["VBDS"] == "0")
        // Bad arguments are refused, naming them.
        for (args, message) in [(["-d", "0"], "invalid delay '0'"), (["-i", "x"], "invalid iterations 'x'"), (["-n"], "-n, -x, -v")] {
            let bad = try h.xl(args: ["top", "-b"] + args)
            #expect(!bad.ok && bad.stderr.contains(message), "\(args): \(bad.stderr)")
        }
    }
}

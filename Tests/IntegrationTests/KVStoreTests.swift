import Foundation
import Glibc
import LinuxHost
import Testing

/// examples/kvstore and examples/kvclient through a real supervisor and the netback driver
/// domain: acknowledged writes read back, malformed requests refused while the server serves on,
/// and the balloon leaving the RAM heap's pages alone.
@Suite struct KVStoreTests {
    /// A bridge name unique to this test process (it may become a host tap: ≤ 15 characters).
    func bridge(_ tag: String) -> String { "pk\(tag)\(getpid() % 100_000)" }

    func vif(_ mac: String, _ ip: String, _ bridge: String) -> String {
        "vif = [ 'mac=00:16:3e:00:\(mac), ip=\(ip)/24, bridge=\(bridge)' ]\n"
    }

    /// Starts kvstore at `ip` and waits for its serving line.
    func server(_ h: SupervisorHarness, mac: String, ip: String, bridge: String) throws {
        let path = h.config("kvstore", kernel: Products.path("kvstore"), "extra = \"port=7000\"\n" + vif(mac, ip, bridge))
        let r = try h.xl("create", "-q", path)
        #expect(r.ok, "\(r.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog("kvstore").contains("kvstore: serving \(ip):7000, new table") },
                "\(h.consoleLog("kvstore"))")
    }

    func client(_ h: SupervisorHarness, _ name: String, extra: String, mac: String, ip: String, bridge: String) throws {
        let path = h.config(name, kernel: Products.path("kvclient"), "extra = \"\(extra)\"\n" + vif(mac, ip, bridge))
        let r = try h.xl("create", "-q", path)
        #expect(r.ok, "\(r.stderr)")
    }

    /// The `key=value` fields of the client's summary line, once it is there.
    func summary(_ h: SupervisorHarness, _ name: String, timeout: Double = 60) -> [String: String]? {
        var fields: [String: String]?
        _ = eventually(timeout: timeout) {
            guard let line = h.consoleLog(name).split(separator: "\n").first(where: { $0.hasPrefix("kvclient: puts=") }) else { return false }
            fields = Dictionary(line.dropFirst("kvclient: ".count).split(separator: " ").compactMap { word -> (String, String)? in
                let kv = word.split(separator: "=", maxSplits: 1)
                return kv.count == 2 ? (String(kv[0]), String(kv[1])) : nil
            }, uniquingKeysWith: { $1 })
            return true
        }
        return fields
    }

    @Test func everyAcknowledgedPutIsReadBack() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("a")
        try server(h, mac: "20:20", ip: "10.0.0.20", bridge: br)
        try client(h, "kvclient", extra: "server=10.0.0.20 port=7000 count=200", mac: "20:21", ip: "10.0.0.21", bridge: br)
        let s = summary(h, "kvclient")
        #expect(s?["puts"] == "200" && s?["acked"] == "200" && s?["lost"] == "0" && s?["wrong"] == "0",
                "\(h.consoleLog("kvclient"))\n\(h.consoleLog("kvstore"))")
        #expect(s?["longest_gap_ms"].flatMap(Double.init) != nil, "\(h.consoleLog("kvclient"))")
        // The client powered off; the server serves on with the 200 keys (keys= wraps at 2000).
        #expect(eventually(timeout: 20) { (try? h.list())?["kvclient"] == nil })
        #expect(try h.list()["kvstore"] != nil)
        #expect(!h.consoleLog("kvstore").contains("FAILED"), "\(h.consoleLog("kvstore"))")
        // A second run against the same table overwrites the same keys and reads them back.
        try client(h, "again", extra: "server=10.0.0.20 port=7000 count=100 size=1024", mac: "20:22", ip: "10.0.0.22", bridge: br)
        let t = summary(h, "again")
        #expect(t?["acked"] == "100" && t?["lost"] == "0" && t?["wrong"] == "0", "\(h.consoleLog("again"))")
    }

    @Test func malformedRequestsGetErrAndTheServerServesOn() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("m")
        try server(h, mac: "21:20", ip: "10.0.0.20", bridge: br)
        try client(h, "bad", extra: "server=10.0.0.20 port=7000 mode=malformed", mac: "21:21", ip: "10.0.0.21", bridge: br)
        #expect(eventually(timeout: 60) { h.consoleLog("bad").contains("kvclient: malformed=14 err=14 then PUT/GET ok") },
                "\(h.consoleLog("bad"))\n\(h.consoleLog("kvstore"))")
        let log = h.consoleLog("bad")
        #expect(log.contains("ERR 0 unknown command HELLO"), "\(log)")
        #expect(log.contains("ERR 77 unknown command HELLO"), "\(log)")
        #expect(log.contains("ERR 0 empty request"), "\(log)")
        #expect(log.contains("ERR 0 bad sequence number"), "\(log)")
        #expect(log.contains("ERR 901 key of 65 bytes"), "\(log)")
        #expect(log.contains("ERR 902 value of 1025 bytes"), "\(log)")
        #expect(log.contains("ERR 905 PUT without a value"), "\(log)")
        // A writer after it finds the server as it should be.
        try client(h, "good", extra: "server=10.0.0.20 port=7000 count=50", mac: "21:22", ip: "10.0.0.22", bridge: br)
        let s = summary(h, "good")
        #expect(s?["acked"] == "50" && s?["lost"] == "0" && s?["wrong"] == "0", "\(h.consoleLog("good"))")
        #expect(try h.list()["kvstore"] != nil)
        #expect(!h.consoleLog("kvstore").contains("FAILED"), "\(h.consoleLog("kvstore"))")
    }

    /// memory=16: the heap is pfns 0 ..< 2048 (8 MiB). Asked to go to 4 MiB, the balloon stops at
    /// 8; writes into the heap afterwards do not get the domain crashed (they would if its pages
    /// had been given away), and the data reads back.
    @Test func theBalloonLeavesTheHeapsPages() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("b")
        try server(h, mac: "22:20", ip: "10.0.0.20", bridge: br)
        #expect(h.consoleLog("kvstore").contains("heap of 2048 pages at pfn 0 (new)"), "\(h.consoleLog("kvstore"))")
        #expect(try h.list()["kvstore"]?.mem == 16)
        #expect(try h.xl("mem-set", "kvstore", "4").ok)
        #expect(eventually(timeout: 10) { (try? h.list())?["kvstore"]?.mem == 8 }, "\(String(describing: try? h.list()["kvstore"]))")
        usleep(500_000)
        #expect(try h.list()["kvstore"]?.mem == 8, "the balloon went below the heap")
        try client(h, "kvclient", extra: "server=10.0.0.20 port=7000 count=300 size=1024", mac: "22:21", ip: "10.0.0.21", bridge: br)
        let s = summary(h, "kvclient")
        #expect(s?["acked"] == "300" && s?["lost"] == "0" && s?["wrong"] == "0", "\(h.consoleLog("kvclient"))\n\(h.consoleLog("kvstore"))")
        #expect(try h.list()["kvstore"] != nil, "\((try? h.dmesg()) ?? "")")
    }
}

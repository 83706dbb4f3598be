import Foundation
import Glibc
import LinuxHost
import Testing

/// The network split driver end to end: a real supervisor, the netback driver domain it starts
/// on demand, and guests (examples/ping, examples/udp-echo, testguest's net modes) on bridges.
@Suite struct NetworkTests {
    /// A bridge name unique to this test process (it may become a host tap: ≤ 15 characters).
    func bridge(_ tag: String) -> String { "pv\(tag)\(getpid() % 100_000)" }

    func vif(_ mac: String, _ ip: String, _ bridge: String, extra: String = "") -> String {
        "vif = [ 'mac=00:16:3e:00:\(mac), ip=\(ip)/24, bridge=\(bridge)\(extra)' ]\n"
    }

    func echo(_ h: SupervisorHarness, _ name: String, mac: String, ip: String, bridge: String) throws {
        let path = h.config(name, kernel: Products.path("udp-echo"), "extra = \"port=7\"\n" + vif(mac, ip, bridge))
        let r = try h.xl("create", "-q", path)
        #expect(r.ok, "\(r.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog(name).contains("listening on \(ip):7") }, "\(h.consoleLog(name))")
    }

    func run(_ h: SupervisorHarness, _ name: String, kernel: String, extra: String, vif v: String) throws {
        let path = h.config(name, kernel: Products.path(kernel), "extra = \"\(extra)\"\n" + v)
        let r = try h.xl("create", "-q", path)
        #expect(r.ok, "\(r.stderr)")
    }

    func netback(_ h: SupervisorHarness) -> String { h.consoleLog("netback") }

    /// The last `key=N` value on lines of `name`'s console that contain `prefix`.
    func lastValue(_ h: SupervisorHarness, _ name: String, _ prefix: String, _ key: String) -> Int? {
        guard let line = h.consoleLog(name).split(separator: "\n").last(where: { $0.contains(prefix) }) else { return nil }
        for word in line.split(separator: " ") where word.hasPrefix(key + "=") { return Int(word.dropFirst(key.count + 1)) }
        return nil
    }

    @Test func pingAndUDPEchoBetweenGuestsOnOneBridge() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("a")
        try echo(h, "server", mac: "0a:02", ip: "10.0.0.2", bridge: br)
        // The default driver domain was started for the first vif without backend=.
        #expect(try h.list()["netback"] != nil)
        #expect(netback(h).contains("vif1.0") || netback(h).contains("connected: mac 00:16:3e:00:0a:02"), "\(netback(h))")
        try run(h, "pinger", kernel: "ping", extra: "target=10.0.0.2 count=3 interval=0.1 timeout=20", vif: vif("0a:01", "10.0.0.1", br))
        #expect(eventually(timeout: 30) { h.consoleLog("pinger").contains("packet loss") }, "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("pinger").contains("3 packets transmitted, 3 received, 0% packet loss"), "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("pinger").contains("64 bytes from 10.0.0.2: icmp_seq=1"))
        try run(h, "client", kernel: "udp-echo", extra: "client=10.0.0.2 port=7 count=20 size=1400", vif: vif("0a:03", "10.0.0.3", br))
        #expect(eventually(timeout: 30) { h.consoleLog("client").contains("OK 20 datagrams of 1400 bytes echoed by 10.0.0.2:7") },
                "\(h.consoleLog("client"))\n\(netback(h))")
        // Both short-lived guests powered off and their vifs went away with them.
        #expect(eventually(timeout: 20) { (try? h.list())?.keys.sorted() == ["Domain-0", "netback", "server"] })
        #expect(eventually(timeout: 10) { netback(h).components(separatedBy: "disconnected (").count == 3 }, "\(netback(h))")
    }

    @Test func jumboFramesSpanSeveralRingSlots() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("j")
        // mtu=9000: 8000-byte datagrams are two-slot frames on both rings (feature-sg).
        let path = h.config("server", kernel: Products.path("udp-echo"), "extra = \"port=7\"\n" + vif("13:02", "10.0.0.2", br, extra: ", mtu=9000"))
        #expect(try h.xl("create", "-q", path).ok)
        #expect(eventually(timeout: 30) { h.consoleLog("server").contains("listening on 10.0.0.2:7") }, "\(h.consoleLog("server"))")
        try run(h, "client", kernel: "udp-echo", extra: "client=10.0.0.2 port=7 count=20 size=8000",
                vif: vif("13:03", "10.0.0.3", br, extra: ", mtu=9000"))
        #expect(eventually(timeout: 30) { h.consoleLog("client").contains("OK 20 datagrams of 8000 bytes echoed by 10.0.0.2:7") },
                "\(h.consoleLog("client"))\n\(netback(h))")
    }

    @Test func guestsOnDifferentBridgesCannotReachEachOther() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try echo(h, "server", mac: "0b:02", ip: "10.0.0.2", bridge: bridge("b"))
        try run(h, "pinger", kernel: "ping", extra: "target=10.0.0.2 count=2 interval=0.1 timeout=3", vif: vif("0b:01", "10.0.0.1", bridge("c")))
        #expect(eventually(timeout: 30) { h.consoleLog("pinger").contains("packet loss") }, "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("pinger").contains("2 packets transmitted, 0 received, 100% packet loss"), "\(h.consoleLog("pinger"))")
    }

    @Test func antiSpoofingDropsForgedFramesAndAFilterRuleDropsWhatItShould() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("d")
        try run(h, "sink", kernel: "testguest", extra: "mode=net-sink port=9", vif: vif("0d:09", "10.0.0.9", br))
        #expect(eventually(timeout: 30) { h.consoleLog("sink").contains("net-sink: listening") }, "\(h.consoleLog("sink"))")
        // Honest, forged source IP, forged source MAC: only the first arrives.
        try run(h, "honest", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20", vif: vif("0d:01", "10.0.0.1", br))
        try run(h, "forgedip", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20 srcip=10.0.0.77",
                vif: vif("0d:02", "10.0.0.2", br))
        try run(h, "forgedmac", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20 srcmac=00:16:3e:66:66:66",
                vif: vif("0d:03", "10.0.0.3", br))
        for g in ["honest", "forgedip", "forgedmac"] {
            #expect(eventually(timeout: 30) { h.consoleLog(g).contains("net-send: sent 20") }, "\(g): \(h.consoleLog(g))")
        }
        #expect(eventually(timeout: 10) { lastValue(h, "sink", "from 10.0.0.1 ", "datagrams") == 20 }, "\(h.consoleLog("sink"))")
        usleep(500_000)
        #expect(!h.consoleLog("sink").contains("from 10.0.0.77"), "\(h.consoleLog("sink"))")
        #expect(!h.consoleLog("sink").contains("from 10.0.0.3 "), "\(h.consoleLog("sink"))")
        #expect(netback(h).contains("dropped a forged frame (forgedIP"), "\(netback(h))")
        #expect(netback(h).contains("dropped a forged frame (forgedMAC"), "\(netback(h))")

        // A filter rule set from dom0: UDP from 10.0.0.4 to port 9 is dropped, 10.0.0.5's passes.
        let add = try h.xl("network-filter", "add", br, "drop", "proto=udp", "src-ip=10.0.0.4", "dst-port=9")
        #expect(add.ok, "\(add.stderr)")
        #expect(eventually(timeout: 10) { netback(h).contains("bridge \(br): 1 filter rule") }, "\(netback(h))")
        try run(h, "blocked", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20", vif: vif("0d:04", "10.0.0.4", br))
        try run(h, "allowed", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20", vif: vif("0d:05", "10.0.0.5", br))
        for g in ["blocked", "allowed"] {
            #expect(eventually(timeout: 30) { h.consoleLog(g).contains("net-send: sent 20") }, "\(g): \(h.consoleLog(g))")
        }
        #expect(eventually(timeout: 10) { lastValue(h, "sink", "from 10.0.0.5 ", "datagrams") == 20 }, "\(h.consoleLog("sink"))")
        usleep(500_000)
        #expect(!h.consoleLog("sink").contains("from 10.0.0.4 "), "\(h.consoleLog("sink"))")
        // The rule is gone after a flush: 10.0.0.4 gets through again.
        #expect(try h.xl("network-filter", "flush", br).ok)
        #expect(eventually(timeout: 10) { netback(h).contains("bridge \(br): 0 filter rules") }, "\(netback(h))")
        try run(h, "unblocked", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=20", vif: vif("0d:06", "10.0.0.4", br))
        #expect(eventually(timeout: 30) { lastValue(h, "sink", "from 10.0.0.4 ", "datagrams") == 20 }, "\(h.consoleLog("sink"))")
    }

    @Test func multiQueueVifsWithSplitEventChannels() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("m")
        try run(h, "sink", kernel: "testguest", extra: "mode=net-sink port=9 queues=2 split=1", vif: vif("12:09", "10.0.0.9", br))
        #expect(eventually(timeout: 30) { h.consoleLog("sink").contains("net-sink: listening") }, "\(h.consoleLog("sink"))")
        #expect(h.consoleLog("sink").contains("vif 0 connected: 2 queue(s), split event channels"), "\(h.consoleLog("sink"))")
        // Several flows (source ports differ by sender) spread over the queues; all arrive.
        for i in 1...3 {
            try run(h, "s\(i)", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 count=50 queues=2",
                    vif: vif("12:0\(i)", "10.0.0.\(i)", br))
        }
        for i in 1...3 {
            #expect(eventually(timeout: 30) { lastValue(h, "sink", "from 10.0.0.\(i) ", "datagrams") == 50 }, "\(h.consoleLog("sink"))")
        }
        #expect(netback(h).contains("vif2.0 connected: mac 00:16:3e:00:12:09, bridge \(br), 2 queues, split event channels"), "\(netback(h))")
        // Senders asked for two queues as well.
        #expect(eventually(timeout: 10) { netback(h).contains("vif3.0 connected: mac 00:16:3e:00:12:01, bridge \(br), 2 queues") },
                "\(netback(h))")
    }

    @Test func aRateLimitedVifIsHeldToItsRate() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("r")
        try run(h, "sink", kernel: "testguest", extra: "mode=net-sink port=9", vif: vif("0e:09", "10.0.0.9", br))
        #expect(eventually(timeout: 30) { h.consoleLog("sink").contains("net-sink: listening") }, "\(h.consoleLog("sink"))")
        // 8 Mbit/s = 1,000,000 bytes/s of frames, in 50 ms credits of 50,000 bytes.
        let size = 1000, seconds = 4
        try run(h, "sender", kernel: "testguest", extra: "mode=net-send dst=10.0.0.9 dport=9 size=\(size) seconds=\(seconds)",
                vif: vif("0e:01", "10.0.0.1", br, extra: ", rate=8Mb/s@50ms"))
        #expect(eventually(timeout: 40) { h.consoleLog("sender").contains("net-send: sent") }, "\(h.consoleLog("sender"))")
        usleep(500_000)
        guard let n = lastValue(h, "sink", "from 10.0.0.1 ", "datagrams"), let span = lastValue(h, "sink", "from 10.0.0.1 ", "span_ms"),
              span > 1000 else {
            Issue.record("no datagrams measured: \(h.consoleLog("sink"))")
            return
        }
        // What the vif was charged: whole frames (Ethernet + IPv4 + UDP headers and the payload).
        let rate = Double(n * (size + 42)) / (Double(span) / 1000)
        #expect(abs(rate - 1_000_000) / 1_000_000 <= 0.10, "measured \(Int(rate)) bytes/s over \(span) ms (\(n) datagrams)")
        #expect(netback(h).contains("rate 50000 bytes per 50000 us"), "\(netback(h))")
    }

    @Test(arguments: ["io_uring", "threads"])
    func theHostReachesAGuestThroughTheTap(engine: String) throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge(engine == "threads" ? "u" : "t")
        let subnet = "10.213.\(getpid() % 120 + (engine == "threads" ? 120 : 0))"
        if engine == "threads" {
            // A netback of our own, told not to use io_uring: the uplink thread's fallback.
            let nb = h.config("netback", kernel: Products.path("netback"), "driver_domain = 1\nextra = \"PROCVISOR_FORCE_NO_IOURING=1\"\n")
            #expect(try h.xl("create", "-q", nb).ok)
            #expect(eventually(timeout: 20) { netback(h).contains("serving vifs") })
        }
        try echo(h, "server", mac: "0f:02", ip: "\(subnet).2", bridge: br)
        #expect(eventually(timeout: 10) { netback(h).contains("bridge \(br): ") }, "\(netback(h))")
        if netback(h).contains("guest-only") {
            // Without CAP_NET_ADMIN the supervisor cannot create the tap: netback says so.
            print("NetworkTests: SKIPPED host ↔ guest: no tap here: \(netback(h))")
            return
        }
        #expect(netback(h).contains("bridge \(br): uplink is tap \(br) (\(engine))"), "\(netback(h))")
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first { FileIO.isExecutable($0) }
        guard let ip else {
            Issue.record("no ip(8) to configure tap \(br)")
            return
        }
        let r = try runCommand(ip, ["addr", "add", "\(subnet).254/24", "dev", br], env: [:])
        #expect(r.ok, "\(r.stderr)")
        let message = Array("hello from the host".utf8)
        let echo = hostUDPEcho(to: "\(subnet).2", message)
        #expect(echo.count == message.count && echo.bytes == message, "no echo through tap \(br): \(netback(h))")
        // The guest's stack pings back too: the host learned its MAC through ARP.
        #expect(try h.xl("destroy", "netback").ok)
        #expect(eventually(timeout: 10) { !FileIO.exists("/sys/class/net/\(br)") }, "tap \(br) outlived netback")
    }

    @Test func aHostileFrontendCannotCrashNetbackOrStallOtherGuests() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("h")
        try echo(h, "server", mac: "10:02", ip: "10.0.0.2", bridge: br)
        // A guest that never gives its rx ring a page (it only runs the checks), then one that
        // also floods broadcasts: every one of them is for the first as well.
        try run(h, "deaf", kernel: "testguest", extra: "mode=net-hostile flood=0", vif: vif("10:65", "10.0.0.65", br))
        #expect(eventually(timeout: 30) { h.consoleLog("deaf").contains("good-again ->") }, "\(h.consoleLog("deaf"))")
        try run(h, "hostile", kernel: "testguest", extra: "mode=net-hostile flood=30000", vif: vif("10:66", "10.0.0.66", br))
        #expect(eventually(timeout: 30) { h.consoleLog("hostile").contains("good-again ->") }, "\(h.consoleLog("hostile"))")
        let log = h.consoleLog("hostile")
        #expect(log.contains("net-hostile: good -> OKAY"), "\(log)")
        for bad in ["size-0", "past-page", "ungranted-gref"] {
            #expect(log.contains("net-hostile: \(bad) -> ERROR\n"), "\(bad): \(log)")
        }
        #expect(log.contains("net-hostile: size-past-64k -> ERROR,ERROR"), "\(log)")
        #expect(log.contains("net-hostile: bad-extra -> ERROR,NULL"), "\(log)")
        #expect(log.contains("net-hostile: 19-slots -> " + Array(repeating: "ERROR", count: 18).joined(separator: ",")), "\(log)")
        #expect(log.contains("net-hostile: good-again -> OKAY"), "\(log)")
        // While it floods broadcasts and never refills its rx ring, the others are served.
        try run(h, "pinger", kernel: "ping", extra: "target=10.0.0.2 count=5 interval=0.1 timeout=20", vif: vif("10:01", "10.0.0.1", br))
        #expect(eventually(timeout: 40) { h.consoleLog("pinger").contains("packet loss") }, "\(h.consoleLog("pinger"))")
        // The flood's broadcasts reach the server too, whose rx ring may overflow and drop one echo
        // request as a busy host would; a stall would lose them all.
        let received = h.consoleLog("pinger").split(separator: "\n").first { $0.hasPrefix("5 packets transmitted, ") }
            .flatMap { Int($0.split(separator: " ")[3]) } ?? 0
        #expect(received >= 4, "\(h.consoleLog("pinger"))\n\(netback(h))")
        #expect(eventually(timeout: 60) { h.consoleLog("hostile").contains("net-hostile: flooded 30000") }, "\(h.consoleLog("hostile"))")
        let nb = netback(h)
        #expect(nb.contains("vif3.0: malformed tx packet: packet size 0"), "\(nb)")
        #expect(nb.contains("runs past the 4096-byte page"), "\(nb)")
        #expect(nb.contains("cannot be mapped"), "\(nb)")
        #expect(nb.contains("rx ring not refilled"), "\(nb)")
        #expect(nb.contains("vif4.0: flooding over 20000 frames/s; dropping the excess"), "\(nb)")
        #expect(try h.list()["netback"] != nil)
        try run(h, "pinger2", kernel: "ping", extra: "target=10.0.0.2 count=2 interval=0.1 timeout=20", vif: vif("10:03", "10.0.0.3", br))
        #expect(eventually(timeout: 30) { h.consoleLog("pinger2").contains("2 received") }, "\(h.consoleLog("pinger2"))")
    }

    @Test func vifsHotPlugWhileTrafficFlows() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let br = bridge("p")
        try echo(h, "server", mac: "11:02", ip: "10.0.0.2", bridge: br)
        // Traffic: a sender streaming 20,000 datagrams a second at the server for the whole test
        // (a flat-out flood would make the server itself drop the pings below: loss, not a stall).
        try run(h, "stream", kernel: "testguest", extra: "mode=net-send dst=10.0.0.2 dport=5000 seconds=30 pps=20000",
                vif: vif("11:05", "10.0.0.5", br))
        try h.create("plug", mode: "net-hotplug target=10.0.0.2")
        #expect(eventually(timeout: 20) { h.consoleLog("plug").contains("waiting for vifs") })
        let a = try h.xl("network-attach", "plug", "mac=00:16:3e:00:11:31", "ip=10.0.0.31", "bridge=\(br)")
        #expect(a.ok, "\(a.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog("plug").contains("vif 0 ping 10.0.0.2 ok") }, "\(h.consoleLog("plug"))\n\(netback(h))")
        let b = try h.xl("network-attach", "plug", "mac=00:16:3e:00:11:32", "ip=10.0.0.32", "bridge=\(br)")
        #expect(b.ok, "\(b.stderr)")
        #expect(eventually(timeout: 30) { h.consoleLog("plug").contains("vif 1 ping 10.0.0.2 ok") }, "\(h.consoleLog("plug"))")
        let list = try h.xl("network-list", "plug")
        #expect(list.stdout.contains("00:16:3e:00:11:31") && list.stdout.contains("00:16:3e:00:11:32"), "\(list.stdout)")
        let d = try h.xl("network-detach", "plug", "0")
        #expect(d.ok, "\(d.stderr)")
        #expect(eventually(timeout: 20) { h.consoleLog("plug").contains("vif 0 closed by the backend") }, "\(h.consoleLog("plug"))")
        #expect(!(try h.xl("network-list", "plug").stdout.contains("00:16:3e:00:11:31")))
        // The stream kept flowing and the server still answers.
        try run(h, "pinger", kernel: "ping", extra: "target=10.0.0.2 count=2 interval=0.1 timeout=20", vif: vif("11:01", "10.0.0.1", br))
        #expect(eventually(timeout: 30) { h.consoleLog("pinger").contains("2 received") }, "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("stream").isEmpty || !h.consoleLog("stream").contains("failed"), "\(h.consoleLog("stream"))")
    }
}

import Foundation
import Glibc
import LinuxHost
import Testing

/// Grant tables and event channels between real domains: data moves only through what is
/// granted, events only through ports bound to the sender, and bad requests get GNTST/errno
/// answers while the supervisor keeps serving.
@Suite struct GrantEventTests {
    /// Sends one line to a domain's console input through `xl console`, then detaches.
    func type(_ h: SupervisorHarness, _ domain: String, _ line: String) throws {
        let r = try h.xl("console", domain, stdin: line + "\n\u{1d}", timeout: 10)
        #expect(r.ok, "xl console \(domain): \(r.stderr)")
    }

    func line(_ h: SupervisorHarness, _ domain: String, prefix: String) -> String? {
        var found: String?
        _ = eventually { found = h.consoleLog(domain).split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init); return found != nil }
        return found
    }

    @Test func eventChannelPingPongBetweenTwoDomains() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("offer", mode: "evtchn-offer", "extra = \"mode=evtchn-offer peer=2\"\n")
        try h.create("binder", mode: "evtchn-bind", "extra = \"mode=evtchn-bind rounds=2000\"\n")
        // Port 1 of every domain is its XenStore port (bound to dom0, as store_evtchn in Xen),
        // port 2 the suspend event channel the runtime offers dom0: a guest's own start at 3.
        #expect(line(h, "offer", prefix: "offer port=") == "offer port=3")
        try type(h, "binder", "peer=1 port=3")
        #expect(line(h, "binder", prefix: "bound") == "bound port=3 status=interdomain remote=1:3")
        #expect(line(h, "binder", prefix: "pingpong rounds=2000 rtt_ns=") != nil)
        // Closing one end is seen by the other, which then stops.
        // (The close notice may race one last echo.)
        let echoed = line(h, "offer", prefix: "echoed") ?? ""
        #expect(echoed.hasSuffix("events; peer closed"))
        #expect((Int(echoed.split(separator: " ")[1]) ?? 0) >= 2000)
        #expect(eventually { (try? h.list())?.count == 1 })
    }

    /// A domain binding and closing another's port in a loop while that one is paused (it
    /// cannot read what the supervisor tells it) does not get it crashed: the changes wait,
    /// only the latest per port, and the port works once it reads again.
    @Test func aPeerTogglingAPortCannotOverflowItsOwnersEvents() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("offer", mode: "evtchn-offer", "extra = \"mode=evtchn-offer peer=2 stay=1\"\non_crash = \"preserve\"\n")
        try h.create("toggler", mode: "evtchn-toggle", "extra = \"mode=evtchn-toggle times=5000\"\n")
        #expect(line(h, "offer", prefix: "offer port=") == "offer port=3")
        #expect(try h.xl("pause", "offer").ok)
        try type(h, "toggler", "peer=1 port=3")
        #expect(line(h, "toggler", prefix: "toggled") == "toggled 5000 times (0 errors)", "\(h.consoleLog("toggler"))")
        #expect(try h.xl("unpause", "offer").ok)
        try type(h, "toggler", "go")
        #expect(line(h, "toggler", prefix: "echo") == "echo ok", "\(h.consoleLog("toggler"))\n\(h.consoleLog("offer"))\n\((try? h.dmesg()) ?? "")\n\((try? h.xl("list").stdout) ?? "")")
        let dmesg = try h.dmesg()
        #expect(!dmesg.contains("(offer): crashed"), "\(dmesg)")
        #expect(try h.list()["offer"]?.state.contains("c") == false)
    }

    @Test func grantsMapCopyAndRevokeOnlyAsGranted() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("granter", mode: "grant-offer", "extra = \"mode=grant-offer peer=2\"\n")
        try h.create("grantee", mode: "grant-map", "extra = \"mode=grant-map action=lie\"\n")
        let offer = try #require(line(h, "granter", prefix: "offer "))
        try type(h, "grantee", "peer=1 " + offer.dropFirst("offer ".count))
        #expect(line(h, "grantee", prefix: "grant-map done") != nil, "\(h.consoleLog("grantee"))")
        let log = h.consoleLog("grantee")
        for expected in [
            "mapped pattern ok: true", "bad gref: badGntref", "granted to another domain: permissionDenied",
            "write map of read-only grant: permissionDenied", "forged frame: badPage", "unknown domain: badDomain",
            "own domain: badDomain", "copy into read-only grant: [ProcvisorABI.GNTST.permissionDenied]",
            "copy across page end: [ProcvisorABI.GNTST.badCopyArg]",
            "copy from another domain's frame: [ProcvisorABI.GNTST.permissionDenied]",
            "unmap while still mapped: okay", "map after end-access: badGntref",
        ] {
            #expect(log.contains(expected + "\n"), "missing \(expected)")
        }
        #expect(log.contains("copy from grant: [ProcvisorABI.GNTST.okay] data ok: true"))
        let granter = h.consoleLog("granter")
        #expect(granter.contains("granter saw write: true"))
        #expect(granter.contains("end-while-mapped: refused"))
        #expect(granter.contains("ended\n"))
        #expect(eventually { (try? h.list())?.count == 1 })
    }

    @Test func writingThroughAReadOnlyGrantFaults() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("granter", mode: "grant-offer", "extra = \"mode=grant-offer peer=2\"\n")
        try h.create("writer", mode: "grant-map", "extra = \"mode=grant-map action=write-ro\"\non_crash = \"preserve\"\n")
        let offer = try #require(line(h, "granter", prefix: "offer "))
        try type(h, "writer", "peer=1 " + offer.dropFirst("offer ".count))
        #expect(eventually { (try? h.dmesg())?.contains("dom2 (writer): crashed: killed by SIGSEGV") == true })
        #expect(!h.consoleLog("writer").contains("isolation failed"))
        #expect(h.consoleLog("writer").contains("ro byte 90"))
        #expect(try h.list()["granter"] != nil, "the granter keeps running")
    }

    @Test func aDomainCanSignalOnlyPortsBoundToIt() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        // The port is offered to dom3; dom2 tries to take it.
        try h.create("offer", mode: "evtchn-offer", "extra = \"mode=evtchn-offer peer=3\"\n")
        let offered = line(h, "offer", prefix: "offer port=").map { String($0.dropFirst("offer port=".count)) } ?? "?"
        try h.create("intruder", mode: "evtchn-intrude", "extra = \"mode=evtchn-intrude peer=1 port=\(offered)\"\nvcpus = 2\n")
        #expect(line(h, "intruder", prefix: "unmasked ipi delivered") != nil, "\(h.consoleLog("intruder"))")
        let log = h.consoleLog("intruder")
        for expected in [
            "bind to a port offered to someone else: EINVAL", "bind to a domain that does not exist: ESRCH",
            "send on a port never allocated: EINVAL", "send on an unbound port: ENOTCONN", "send on a closed port: EINVAL",
            "close a closed port: EINVAL", "status of a closed port: closed", "hypercall send on a foreign port: [-22]",
            "bind virq twice: succeeded then EEXIST", "bind virq on a vcpu that does not exist: ENOENT",
            "timer virq delivered: true", "ipi delivered: true", "masked ipi held back: true", "unmasked ipi delivered: true",
        ] {
            #expect(log.contains(expected + "\n"), "missing \(expected)")
        }
        #expect(try h.list()["offer"] != nil)
        // VIRQ_DOM_EXC fires when another domain dies.
        _ = line(h, "intruder", prefix: "waiting for dom_exc")
        #expect(try h.xl("destroy", "offer").ok)
        #expect(line(h, "intruder", prefix: "dom_exc delivered") == "dom_exc delivered: true")
    }

    @Test func aGrantedPageOutlivesItsGranterUntilUnmapped() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("granter", mode: "grant-offer", "extra = \"mode=grant-offer peer=2\"\n")
        try h.create("holder", mode: "grant-map", "extra = \"mode=grant-map action=outlive\"\n")
        let offer = try #require(line(h, "granter", prefix: "offer "))
        try type(h, "holder", "peer=1 " + offer.dropFirst("offer ".count))
        _ = line(h, "holder", prefix: "mapped; destroy")
        #expect(try h.xl("destroy", "granter").ok)
        #expect(line(h, "holder", prefix: "granter gone") == "granter gone; page still intact: true")
        #expect(line(h, "holder", prefix: "unmap after") == "unmap after the granter died: [ProcvisorABI.GNTST.okay]")
        #expect(line(h, "holder", prefix: "map from the dead granter") == "map from the dead granter: badDomain")
    }

    @Test func consoleInputRaisesVirqConsole() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("con", mode: "console-virq")
        #expect(line(h, "con", prefix: "console virq bound") != nil)
        try type(h, "con", "typed text")
        #expect(line(h, "con", prefix: "console virq delivered") == "console virq delivered: true", "\(h.consoleLog("con"))")
        #expect(line(h, "con", prefix: "console input") == "console input: typed text")
    }

    @Test func thePingpongExampleBouncesThroughAGrantedRing() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let kernel = Products.path("pingpong")
        #expect(try h.xl("create", h.config("pong", kernel: kernel, "extra = \"role=pong\"\n")).ok)
        #expect(try h.xl("create", h.config("ping", kernel: kernel, "extra = \"role=ping peer=1 rounds=2000\"\n")).ok)
        // They meet through XenStore: ping leaves its offer in pong's mailbox.
        #expect(line(h, "ping", prefix: "offer peer=2 gref=8 port=3 written to /local/domain/1/data/pingpong/dom2") != nil, "\(h.consoleLog("ping"))")
        #expect(line(h, "ping", prefix: "pingpong: 2000 round trips through a granted ring") != nil, "\(h.consoleLog("ping"))")
        #expect(line(h, "pong", prefix: "pong: served 2000 requests") != nil, "\(h.consoleLog("pong"))")
        #expect(eventually { (try? h.list())?.count == 1 })
    }

    @Test func theBalloonDemoExampleRuns() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let r = try h.xl("create", "-c", h.config("bd", kernel: Products.path("balloon-demo"), "memory = 16\nmaxmem = 32\n"), timeout: 20)
        #expect(r.ok)
        #expect(r.stdout.contains("ballooned out 8 MiB: host backs 8 MiB, reservation 8 MiB of max 32 MiB"), "\(r.stdout)")
        #expect(r.stdout.contains("touched again: host backs 16 MiB, reservation 16 MiB of max 32 MiB"))
    }
}

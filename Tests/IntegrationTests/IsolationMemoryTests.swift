import Foundation
import Glibc
import LinuxHost
import Testing

/// Shared memory against hostile domains (testguest's AttackGrantModes.swift): revocation holds
/// whatever the grantee kept, no shared page can be resized by a domain, and one domain cannot
/// use up the supervisor's descriptors. Every attack is made by a real domain through a real
/// supervisor, and everybody else must keep running.
@Suite(.serialized) struct IsolationMemoryTests {
    func type(_ h: SupervisorHarness, _ domain: String, _ line: String) throws {
        let r = try h.xl("console", domain, stdin: line + "\n\u{1d}", timeout: 10)
        #expect(r.ok, "xl console \(domain): \(r.stderr)")
    }

    func line(_ h: SupervisorHarness, _ domain: String, prefix: String, timeout: Double = 20) -> String? {
        var found: String?
        _ = eventually(timeout: timeout) {
            found = h.consoleLog(domain).split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
            return found != nil
        }
        return found
    }

    /// The grantee keeps a mapping of the page, its descriptor and a dup of it, and a mapping of
    /// a page the granter also sees through a contiguous view; it reports all of them unmapped.
    /// After the granter's endAccess nothing the grantee kept shows what the granter writes, and
    /// nothing the grantee writes reaches the granter; a new grant of the page maps its new
    /// backing.
    @Test func aGranteeThatKeepsItsPageLosesItAtEndAccess() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("granter", mode: "attack-granter", "extra = \"mode=attack-granter peer=2\"\n")
        try h.create("keeper", mode: "attack-keep")
        let offer = try #require(line(h, "granter", prefix: "offer "))
        try type(h, "keeper", "peer=1 " + offer.dropFirst("offer ".count))
        let regrant = try #require(line(h, "granter", prefix: "regrant gref="), "granter:\n\(h.consoleLog("granter"))\nkeeper:\n\(h.consoleLog("keeper"))\n\((try? h.dmesg()) ?? "")")
        try type(h, "keeper", "regrant=" + regrant.dropFirst("regrant gref=".count))
        #expect(line(h, "keeper", prefix: "attack-keep done") != nil, "\(h.consoleLog("keeper"))")
        #expect(line(h, "granter", prefix: "attack-granter done") != nil, "\(h.consoleLog("granter"))")
        let keeper = h.consoleLog("keeper"), granter = h.consoleLog("granter")
        for expected in [
            "mapped pattern ok: true", "unmap (kept mapping): okay", "unmap (kept mapping, run): okay",
            "unmap (kept descriptor): okay", "grantee saw the secret: false", "grantee still sees its own write: true",
            "regranted page shows the granter's data: true",
        ] {
            #expect(keeper.contains(expected + "\n"), "keeper: missing \(expected)\n\(keeper)")
        }
        for expected in [
            "end access: ok", "contents kept across re-backing: true", "view and page agree: true",
            "grantee writes reached the granter: false",
        ] {
            #expect(granter.contains(expected + "\n"), "granter: missing \(expected)\n\(granter)")
        }
        #expect(eventually { (try? h.list())?.count == 1 })
        #expect(!(try h.dmesg()).contains("crash"))
    }

    /// A driver domain that kept every shared descriptor tries to grow each with fallocate (its
    /// bound never allows ftruncate: SeccompPolicyTests), and to map the read-only ones writable. Each attempt fails; the supervisor (which then serves the
    /// domain's XenStore ring), and a bystander domain keep running.
    @Test func resizingSharedMemoryFailsAndEverybodyKeepsRunning() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("bystander", mode: "run")
        #expect(line(h, "bystander", prefix: "running dom") != nil)
        try h.create("attacker", mode: "be-attack-resize", "driver_domain = 1\n")
        let done = line(h, "attacker", prefix: "attack-resize done")
        let log = h.consoleLog("attacker")
        let dmesg = try h.dmesg()
        #expect(done != nil, "attacker: \(log)\n\(dmesg)")
        print("attacker's console:\n\(log)")
        func result(_ name: String) -> [String: String] {
            guard let l = log.split(separator: "\n").first(where: { $0.hasPrefix("resize \(name): ") }) else { return [:] }
            return settings(String(l.dropFirst("resize \(name): ".count)))
        }
        for name in ["RAM", "doorbell", "pair page", "XenStore page"] {
            let r = result(name)
            #expect(r["seals"] == "[seal,shrink,grow]", "\(name): \(r)")
            #expect(r["fallocate"] == "EPERM", "\(name): \(r)")
            #expect(r["size"] == "kept", "\(name): \(r)")
        }
        for name in ["P2M", "M2P"] {
            let r = result(name)
            #expect(r["seals"] == "[seal,shrink,grow]", "\(name): \(r)")
            // A read-only descriptor: refused for that before the seal is even looked at.
            #expect(["EPERM", "EBADF"].contains(r["fallocate"] ?? "ok"), "\(name): \(r)")
            #expect(r["size"] == "kept", "\(name): \(r)")
        }
        for name in ["grant table frame", "grantable page"] {
            let r = result(name)
            #expect(r["seals"] == "[seal,shrink,grow]", "\(name): \(r)")
            #expect(r["fallocate"] == "EPERM" && r["size"] == "kept", "\(name): \(r)")
        }
        let exposure = result("exposure map")
        #expect(exposure["seals"] == "[seal,shrink,grow]", "exposure map: \(exposure)")
        #expect(["EPERM", "EBADF"].contains(exposure["fallocate"] ?? "ok"), "exposure map: \(exposure)")
        for name in ["P2M", "M2P", "exposure map"] {
            let l = log.split(separator: "\n").first { $0.hasPrefix("writable map \(name): ") }
            #expect(l != nil && !l!.hasSuffix(": ok"), "writable map \(name): \(l ?? "missing")")
        }
        #expect(h.supervisor.isRunning)
        let list = try h.list()
        #expect(list["bystander"]?.state.hasPrefix("r") == true || list["bystander"]?.state.hasPrefix("-b") == true,
                "bystander: \(String(describing: list["bystander"]))")
        #expect(eventually { (try? h.list())?["attacker"] == nil })
    }

    /// A domain allocating grantable pages without end is refused at its budget with ENOMEM and a
    /// line in `xl dmesg` naming it, what it holds and the budget; meanwhile another client's
    /// `xl list` answers at once, and other domains can still allocate.
    @Test func grantablePageExhaustionIsRefusedClearlyAndXlStaysResponsive() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("hog", mode: "attack-exhaust")
        let got = try #require(line(h, "hog", prefix: "exhausted after ", timeout: 60), "\(h.consoleLog("hog"))")
        #expect(got.hasSuffix("alloc_grant_pages failed: ENOMEM"), "\(got)")
        let count = Int(got.dropFirst("exhausted after ".count).prefix { $0.isNumber }) ?? 0
        #expect(count == 4096, "\(got)")
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("dom1 (hog): grantable pages refused: it holds 4096, its budget is 4096"), "\(dmesg)")
        let t0 = Date()
        let listed = try h.list()
        #expect(Date().timeIntervalSince(t0) < 2, "xl list took \(Date().timeIntervalSince(t0)) s")
        #expect(listed["hog"] != nil)
        // Another domain still gets grantable pages (it maps one in the grant-offer mode).
        try h.create("granter", mode: "grant-offer", "extra = \"mode=grant-offer peer=3\"\n")
        #expect(line(h, "granter", prefix: "offer gref=") != nil, "\(h.consoleLog("granter"))")
        #expect(try h.xl("destroy", "hog").ok)
        #expect(try h.xl("destroy", "granter").ok)
        #expect(h.supervisor.isRunning)
    }
}

private func settings(_ line: String) -> [String: String] {
    var out: [String: String] = [:]
    for word in line.split(separator: " ") {
        guard let eq = word.firstIndex(of: "=") else { continue }
        out[String(word[..<eq])] = String(word[word.index(after: eq)...])
    }
    return out
}

import Foundation
import Glibc
import LinuxHost
import ProcvisorABI
import Testing
import XenStoreSocket

/// Virtual network interfaces, toolstack side: `vif=` at `xl create`, `xl network-attach`,
/// `-list`, `-detach`, `xl network-filter`, and the tap uplink handed only to a vif's backend.
/// The backends here are testguest driver domains (`be-peek` serves nothing; `be-uplink` only
/// takes uplinks), so nothing depends on netback moving traffic.
@Suite struct NetworkToolTests {
    /// A driver domain that serves nothing (its vifs stay at Initialising).
    func idleBackend(_ h: SupervisorHarness, _ name: String = "nb") throws {
        try h.create(name, mode: "be-peek", "driver_domain = 1\n")
        #expect(eventually { h.consoleLog(name).contains("be-peek ready") })
    }

    func store(_ h: SupervisorHarness) throws -> XSSocketClient { try XSSocketClient(path: h.xenstoreSocket) }

    /// Every node of a device directory and its value.
    func nodes(_ c: XSSocketClient, _ dir: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for k in try c.directory(dir) { out[k] = try c.read(dir + "/" + k) }
        return out
    }

    func perms(_ c: XSSocketClient, _ path: String) throws -> [String] {
        try c.request(.getPerms, [path]).payloadStrings
    }

    func read(_ h: SupervisorHarness, _ path: String) throws -> String? {
        let r = try h.xs("read", path)
        return r.ok ? r.stdout.trimmingCharacters(in: .newlines) : nil
    }

    /// printf's `%-Nd` / `%Nd`.
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

    static let header = "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       "

    /// The row xl_nic.c prints, from the store as it is now.
    func listRow(_ h: SupervisorHarness, fe: Int, be: Int, devid: Int) throws -> String {
        let f = "/local/domain/\(fe)/device/vif/\(devid)"
        let mac = try read(h, f + "/mac") ?? "?"
        let evtch = try read(h, f + "/event-channel") ?? read(h, f + "/event-channel-tx") ?? "-1"
        return pad("\(devid)", 3) + " " + pad("\(be)", 2) + " " + mac + lpad("\(devid)", 6) + " "
            + lpad(try read(h, f + "/state") ?? "-1", 5) + " " + lpad(evtch, 6) + " "
            + lpad(try read(h, f + "/tx-ring-ref") ?? "-1", 5) + "/" + pad(try read(h, f + "/rx-ring-ref") ?? "-1", 11) + " "
            + pad("/local/domain/\(be)/backend/vif/\(fe)/\(devid)", 30)
    }

    @Test func createWritesLibxlsNicNodesWithTheirPermissions() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try idleBackend(h)
        try h.create("g", mode: "run", """
            vif = [ 'backend=nb, bridge=pvbr0, mac=00:16:3E:00:00:01, ip=10.0.0.2/24 10.0.0.3, gateway=10.0.0.1, rate=10Mb/s@20ms, vifname=web0, script=vif-route, mtu=9000, gatewaydev=eth0',
                    'backend=nb, untrusted', 'backend=nb, devid=7, type=ioemu, model=e1000' ]

            """)
        let c = try store(h)
        // libxl's numbering: vifs without devid= continue after the highest given one.
        #expect(try c.directory("/local/domain/2/device/vif").sorted() == ["7", "8", "9"])
        let b8 = "/local/domain/1/backend/vif/2/8", f8 = "/local/domain/2/device/vif/8"
        #expect(try nodes(c, b8) == [
            "frontend": f8, "frontend-id": "2", "online": "1", "state": "1", "script": "vif-route",
            "mac": "00:16:3e:00:00:01", "bridge": "pvbr0", "handle": "8", "type": "vif", "mtu": "9000",
            "ip": "10.0.0.2/24 10.0.0.3", "rate": "25000,20000", "vifname": "web0", "gatewaydev": "eth0", "gateway": "10.0.0.1",
        ])
        #expect(try nodes(c, f8) == [
            "backend": b8, "backend-id": "1", "state": "1", "handle": "8", "mac": "00:16:3e:00:00:01", "trusted": "1",
            "mtu": "9000", "ip": "10.0.0.2/24 10.0.0.3", "gateway": "10.0.0.1",
        ])
        // Backend directory: owner the backend, read for the frontend; frontend directory the
        // other way round, except what the guest must not change (mtu, ip, gateway: libxl's
        // read-only frontend nodes, owned by the backend).
        #expect(try perms(c, b8) == ["n1", "r2"])
        for k in try c.directory(b8) { #expect(try perms(c, b8 + "/" + k) == ["n1", "r2"], "\(k)") }
        #expect(try perms(c, f8) == ["n2", "r1"])
        for k in try c.directory(f8) {
            #expect(try perms(c, f8 + "/" + k) == (["mtu", "ip", "gateway"].contains(k) ? ["n1", "r2"] : ["n2", "r1"]), "\(k)")
        }
        // Defaults: a random MAC with Xen's OUI, the same at both ends; xenbr0, vif-bridge, 1500.
        let b9 = try nodes(c, "/local/domain/1/backend/vif/2/9"), f9 = try nodes(c, "/local/domain/2/device/vif/9")
        let mac9 = b9["mac"] ?? ""
        #expect(mac9.hasPrefix("00:16:3e:") && MACAddress(mac9) != nil && (MACAddress(mac9)?.octets[3] ?? 0xff) < 0x80, "\(mac9)")
        #expect(f9["mac"] == mac9 && f9["trusted"] == "0")
        #expect(b9["bridge"] == "xenbr0" && b9["script"] == "vif-bridge" && b9["mtu"] == "1500" && b9["type"] == "vif")
        #expect(b9["ip"] == nil && b9["rate"] == nil && b9["vifname"] == nil && b9["gateway"] == nil && f9["ip"] == nil)
        // type=ioemu and model= mean nothing for a PV guest: a plain vif.
        #expect(try c.read("/local/domain/1/backend/vif/2/7/type") == "vif")
        #expect(try h.dmesg().contains("dom2 (g): vif 8 mac 00:16:3e:00:00:01 bridge pvbr0 ip 10.0.0.2/24 10.0.0.3, backend dom1"))
        // Destroying the frontend removes its backend nodes.
        #expect(try h.xl("destroy", "g").ok)
        #expect(eventually { (try? h.xs("exists", "/local/domain/1/backend/vif/2").status) == 1 })
        #expect(try h.xl("network-list", "nb").stdout == Self.header + "\n")
    }

    @Test func badVifsAreRefusedWithTheReasonAndNothingIsStarted() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        func create(_ name: String, _ vifs: String) throws -> CommandResult {
            try h.xl("create", "-q", h.config(name, mode: "run", "vif = [ \(vifs) ]\n"))
        }
        func refused(_ r: CommandResult, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(r.status == 1, sourceLocation: sourceLocation)
            #expect(r.stderr.contains(message), "\(r.stderr)", sourceLocation: sourceLocation)
        }
        // Without backend= both would go to the default netback: refused before it is started.
        refused(try create("g", "'mac=00:16:3e:00:00:01', 'mac=00:16:3E:00:00:01'"),
                "vif 1 (mac=00:16:3E:00:00:01): MAC address 00:16:3e:00:00:01 is already used on bridge xenbr0 of backend the default netback by vif 0 of the same config")
        refused(try create("g", "'ip=10.0.0.256'"),
                "config parsing error in vif: invalid ip `10.0.0.256' in `ip=10.0.0.256' (`10.0.0.256' is not an IPv4 address A.B.C.D or network A.B.C.D/N")
        refused(try create("g", "'ip=10.0.0.2,10.0.0.3'"), "config parsing error in vif: unrecognized argument `10.0.0.3'")
        refused(try create("g", "'ip=10.0.0.2/33'"), "invalid ip `10.0.0.2/33'")
        refused(try create("g", "'gateway=10.0.0'"), "config parsing error in vif: invalid gateway `10.0.0' in `gateway=10.0.0' (expected an IPv4 address A.B.C.D)")
        refused(try create("g", "'bridge=a-bridge-name-too-long'"),
                "invalid bridge name `a-bridge-name-too-long' in `bridge=a-bridge-name-too-long' (an interface name has at most 15 bytes)")
        refused(try create("g", "'bridge=..'"), "invalid bridge name `..'")
        refused(try create("g", "'bridge=br 0'"), "invalid bridge name `br 0'")
        refused(try create("g", "'devid=1', 'devid=1'"), "vif 1 (devid=1): devid 1 is given twice (vif entries 1 and 2; each vif needs its own)")
        refused(try create("g", "'backend=ghost'"), "vif 0 (backend=ghost): backend domain \"ghost\" is not running")
        #expect(try h.list().keys.sorted() == ["Domain-0"])
        #expect(!(try h.dmesg().contains("started the default driver domain")))

        // One MAC per bridge of a backend, across domains; the same MAC on another bridge is fine.
        try idleBackend(h)
        try h.create("g1", mode: "run", "vif = [ 'backend=nb, bridge=br0, mac=00:16:3e:00:00:02' ]\n")
        refused(try create("g2", "'backend=nb, bridge=br0, mac=00:16:3e:00:00:02'"),
                "vif 0 (backend=nb, bridge=br0, mac=00:16:3e:00:00:02): MAC address 00:16:3e:00:00:02 is already used on bridge br0 of backend dom1 (nb) by dom2 (g1)'s vif 0")
        refused(try create("g2", "'backend=g1'"), "vif 0 (backend=g1): domain \"g1\" is not a driver domain (set driver_domain = 1 in its config)")
        #expect(try h.list().keys.sorted() == ["Domain-0", "g1", "nb"])
        try h.create("g2", mode: "run", "vif = [ 'backend=nb, bridge=br1, mac=00:16:3e:00:00:02' ]\n")
        #expect(try read(h, "/local/domain/1/backend/vif/3/0/mac") == "00:16:3e:00:00:02")
    }

    @Test func attachListAndDetachAgainstABackendThatDoesNotServe() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS": "1500"])
        defer { h.stop() }
        try idleBackend(h)
        try h.create("g", mode: "run", "vif = [ 'backend=nb, mac=00:16:3e:00:00:01' ]\n")

        // Attach: the words are one spec; devid is the next after the highest.
        let attach = try h.xl("network-attach", "g", "backend=nb", "bridge=br1", "ip=192.0.2.5", "gateway=192.0.2.1")
        #expect(attach.ok && attach.stdout.isEmpty && attach.stderr.isEmpty, "\(attach.stderr)")
        #expect(try read(h, "/local/domain/1/backend/vif/2/1/bridge") == "br1")
        #expect(try read(h, "/local/domain/2/device/vif/1/ip") == "192.0.2.5")
        #expect(try read(h, "/local/domain/2/device/vif/1/gateway") == "192.0.2.1")
        let refusedAttach = try h.xl("network-attach", "g", "backend=nb", "devid=1")
        #expect(refusedAttach.status == 1 && refusedAttach.stderr.hasSuffix("\nlibxl_device_nic_add failed.\n"), "\(refusedAttach.stderr)")
        #expect(refusedAttach.stderr.hasPrefix("vif 1 (backend=nb,devid=1): devid 1 is already in use by dom2 (g)"), "\(refusedAttach.stderr)")
        let badWord = try h.xl("network-attach", "g", "backend=nb", "colour=red")
        #expect(badWord.status == 1 && badWord.stderr.contains("unrecognized argument `colour=red'"), "\(badWord.stderr)")
        let ghostAttach = try h.xl("network-attach", "ghost", "backend=nb")
        #expect(ghostAttach.status == 1 && ghostAttach.stderr == "ghost is an invalid domain identifier (rc=-6)\n", "\(ghostAttach.stderr)")

        // List: xl's header and columns; what the frontend published shows up (split event
        // channels: event-channel-tx).
        var list = try h.xl("network-list", "g")
        #expect(list.ok)
        #expect(list.stdout == [Self.header, try listRow(h, fe: 2, be: 1, devid: 0), try listRow(h, fe: 2, be: 1, devid: 1)]
            .joined(separator: "\n") + "\n", "\(list.stdout)")
        #expect(list.stdout.contains("\n0   1  00:16:3e:00:00:01     0     1     -1    -1/-1          /local/domain/1/backend/vif/2/0"), "\(list.stdout)")
        for (k, v) in [("state", "4"), ("event-channel", "5"), ("tx-ring-ref", "8"), ("rx-ring-ref", "9")] {
            #expect(try h.xs("write", "/local/domain/2/device/vif/0/\(k)", v).ok)
        }
        for (k, v) in [("state", "3"), ("event-channel-tx", "11"), ("event-channel-rx", "12"), ("tx-ring-ref", "1024"), ("rx-ring-ref", "1025")] {
            #expect(try h.xs("write", "/local/domain/2/device/vif/1/\(k)", v).ok)
        }
        list = try h.xl("network-list", "g", "77")
        let mac1 = try read(h, "/local/domain/2/device/vif/1/mac") ?? ""
        let expected = [Self.header,
                        "0   1  00:16:3e:00:00:01     0     4      5     8/9           /local/domain/1/backend/vif/2/0",
                        "1   1  " + mac1 + "     1     3     11  1024/1025        /local/domain/1/backend/vif/2/1"]
        #expect(list.ok && list.stdout == expected.joined(separator: "\n") + "\n", "\(list.stdout)")
        // An unknown name ends the command, as xl's find_domain does.
        let ghost = try h.xl("network-list", "g", "ghost")
        #expect(ghost.status == 1 && ghost.stderr == "ghost is an invalid domain identifier (rc=-6)\n" && ghost.stdout == list.stdout)

        // Detach from a backend that never answers: libxl's removal times out, is forced (the
        // frontend goes), times out again, and the nodes go anyway; xl reports the failure.
        let started = Date()
        let detach = try h.xl("network-detach", "g", "1")
        let took = Date().timeIntervalSince(started)
        #expect(detach.status == 1)
        #expect(detach.stderr == "unable to remove device with path /local/domain/1/backend/vif/2/1: the backend did not reach Closed (6) within 1500 ms, nor within 1500 ms more once the removal was forced (state 5); its nodes were removed anyway\nlibxl_device_nic_del failed.\n", "\(detach.stderr)")
        #expect(took >= 2.9 && took < 8, "network-detach took \(took) s")
        #expect(try h.xs("exists", "/local/domain/2/device/vif/1").status == 1)
        #expect(try h.xs("exists", "/local/domain/1/backend/vif/2/1").status == 1)
        let dmesg = try h.dmesg()
        #expect(dmesg.contains("dom2: vif 1 (") && dmesg.contains("timeout reached, initiating forced remove"), "\(dmesg)")

        // A backend that closes the device: detach by MAC returns as soon as it reads Closed.
        // (It closes once the removal asked it to, whenever xl gets there on a loaded machine; a
        // thread of its own, as runCommand waits on the global dispatch queue.)
        Thread.detachNewThread {
            _ = eventually(timeout: 10) { (try? h.xs("read", "/local/domain/1/backend/vif/2/0/online").stdout) == "0\n" }
            _ = try? h.xs("write", "/local/domain/1/backend/vif/2/0/state", "6")
        }
        let byMAC = try h.xl("network-detach", "g", "00:16:3E:00:00:01")
        #expect(byMAC.ok && byMAC.stderr.isEmpty, "\(byMAC.stderr)")
        #expect(try h.xs("exists", "/local/domain/2/device/vif/0").status == 1)
        #expect(try h.xs("exists", "/local/domain/1/backend/vif/2").status == 1)
        #expect(try h.dmesg().contains("dom2: vif 0 (00:16:3e:00:00:01) detached from backend dom1"))
        #expect(try h.xl("network-list", "g").stdout == Self.header + "\n")

        // Unknown devices and domains, with xl's messages.
        for dev in ["0", "00:16:3e:00:00:01", "nonsense", "zz:zz"] {
            let r = try h.xl("network-detach", "g", dev)
            #expect(r.status == 1 && r.stderr == "Unknown device \(dev).\n", "\(r.stderr)")
        }
        let noDomain = try h.xl("network-detach", "ghost", "0")
        #expect(noDomain.status == 1 && noDomain.stderr == "ghost is an invalid domain identifier (rc=-6)\n")
        #expect(try h.list().keys.sorted() == ["Domain-0", "g", "nb"])
    }

    @Test func filterRulesAreKeptForTheBackendAlone() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        // No netback runs: nothing to list, nothing to delete.
        let empty = try h.xl("network-filter", "list")
        #expect(empty.ok && empty.stdout.isEmpty, "\(empty.stderr)")
        let noRule = try h.xl("network-filter", "del", "br0", "1")
        #expect(noRule.status == 1 && noRule.stderr.contains("bridge br0 has no rule 1"), "\(noRule.stderr)")
        try idleBackend(h)
        try h.create("g", mode: "run")
        func filter(_ args: String...) throws -> CommandResult { try h.xl(args: ["network-filter", "-b", "nb"] + args) }

        #expect(try filter("add", "br0", "drop", "proto=udp", "dst-port=7").ok)
        #expect(try filter("add", "br0", "accept src-ip=10.0.0.5/24").ok)
        #expect(try filter("insert", "br0", "1", "drop", "src-mac=00:16:3E:00:00:09").ok)
        #expect(try filter("add", "br1", "drop").ok)
        let all = try filter("list")
        #expect(all.ok && all.stdout == """
            br0:
               1  drop src-mac=00:16:3e:00:00:09
               2  drop proto=udp dst-port=7
               3  accept src-ip=10.0.0.0/24
            br1:
               1  drop

            """, "\(all.stdout)")
        // Where netback reads them: one rule per line, dom0's node, readable by the backend only.
        let c = try store(h)
        #expect(try c.read("/local/domain/1/netfilter/br0") == "drop src-mac=00:16:3e:00:00:09\ndrop proto=udp dst-port=7\naccept src-ip=10.0.0.0/24")
        #expect(try perms(c, "/local/domain/1/netfilter") == ["n0", "r1"])
        #expect(try perms(c, "/local/domain/1/netfilter/br0") == ["n0", "r1"])
        #expect(try perms(c, "/local/domain/1/netfilter/br1") == ["n0", "r1"])

        // Refusals: the rule, the position, the backend, the bridge name.
        let bad = try filter("add", "br0", "reject", "all")
        #expect(bad.status == 1 && bad.stderr == "bad rule \"reject all\": unknown action \"reject\" (expected accept or drop)\n", "\(bad.stderr)")
        let badPort = try filter("add", "br0", "drop", "dst-port=7")
        #expect(badPort.status == 1 && badPort.stderr.contains("needs proto=tcp or proto=udp"), "\(badPort.stderr)")
        let farInsert = try filter("insert", "br0", "5", "drop")
        #expect(farInsert.status == 1 && farInsert.stderr == "bridge br0: cannot insert at 5: it has 3 rules (positions 1 to 4)\n", "\(farInsert.stderr)")
        let farDel = try filter("del", "br0", "4")
        #expect(farDel.status == 1 && farDel.stderr == "bridge br0 has no rule 4 (it has 3 rules)\n", "\(farDel.stderr)")
        let notDriver = try h.xl("network-filter", "-b", "g", "add", "br0", "drop")
        #expect(notDriver.status == 1 && notDriver.stderr.contains("domain \"g\" is not a driver domain"), "\(notDriver.stderr)")
        let ghost = try h.xl("network-filter", "-b", "ghost", "list")
        #expect(ghost.status == 1 && ghost.stderr == "backend domain \"ghost\" is not running\n", "\(ghost.stderr)")
        let badBridge = try filter("add", "br.0", "drop")
        #expect(badBridge.status == 1 && badBridge.stderr.contains("bridge br.0: filter rules can only be kept"), "\(badBridge.stderr)")
        let noVerb = try h.xl("network-filter", "frob")
        #expect(noVerb.status != 0 && noVerb.stderr.contains("unknown network-filter command `frob'"), "\(noVerb.stderr)")

        // Delete and flush; a bridge without rules has no node.
        #expect(try filter("del", "br0", "2").ok)
        #expect(try filter("list", "br0").stdout == "br0:\n   1  drop src-mac=00:16:3e:00:00:09\n   2  accept src-ip=10.0.0.0/24\n")
        #expect(try filter("flush", "br0").ok)
        #expect(try h.xs("exists", "/local/domain/1/netfilter/br0").status == 1)
        #expect(try filter("list", "br0").stdout == "br0:\n")
        #expect(try filter("list").stdout == "br1:\n   1  drop\n")
        #expect(try h.dmesg().contains("network-filter: dom1 (nb) bridge br0: rule 1 inserted: drop src-mac=00:16:3e:00:00:09"))
    }

    @Test func vifsWithoutABackendGoToANetbackStartedOnDemand() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        // Rules for the default netback start it too.
        #expect(try h.xl("network-filter", "add", "pvnb0", "drop", "proto=udp", "dst-port=9").ok)
        #expect(try h.list()["netback"]?.domid == 1)
        #expect(try h.dmesg().contains("network-filter: no backend= given: started the default driver domain dom1 (netback) from \(Products.path("netback"))"))
        #expect(try h.xs("read", "/local/domain/1/netfilter/pvnb0").stdout == "drop proto=udp dst-port=9\n")
        try h.create("g1", mode: "run", "vif = [ '' ]\n")
        try h.create("g2", mode: "run")
        #expect(try h.xl("network-attach", "g2", "bridge=pvnb0").ok)
        #expect(try read(h, "/local/domain/2/device/vif/0/backend-id") == "1")
        #expect(try read(h, "/local/domain/1/backend/vif/3/0/bridge") == "pvnb0")
        #expect(try h.xl("network-filter", "list").stdout == "pvnb0:\n   1  drop proto=udp dst-port=9\n")
        #expect(try h.list().keys.sorted() == ["Domain-0", "g1", "g2", "netback"])
        #expect(try h.dmesg().components(separatedBy: "started the default driver domain").count == 2)
    }

    @Test func theDefaultNetbackMustBeThereToBeStarted() throws {
        // A supervisor with no netback next to it.
        var template = Array("/tmp/pvbin.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: Products.path("procvisord"), toPath: dir + "/procvisord")
        let h = try SupervisorHarness(supervisor: dir + "/procvisord")
        defer { h.stop() }
        let r = try h.xl("create", "-q", h.config("g", mode: "run", "vif = [ 'mac=00:16:3e:00:00:01' ]\n"))
        #expect(r.status == 1)
        #expect(r.stderr.contains("vif 0 (mac=00:16:3e:00:00:01): no backend= given and the default driver domain cannot be started: \(dir)/netback is missing or not executable (install netback next to procvisord, or start a driver domain and name it with backend=)"), "\(r.stderr)")
        // A domain called netback that is no driver domain is not taken for one.
        try h.create("netback", mode: "run")
        let r2 = try h.xl("create", "-q", h.config("g", mode: "run", "vif = [ '' ]\n"))
        #expect(r2.stderr.contains("vif 0: no backend= given, and the default driver domain \"netback\" (dom1) is not a running driver domain"), "\(r2.stderr)")
        let r3 = try h.xl("network-filter", "add", "br0", "drop")
        #expect(r3.status == 1 && r3.stderr.contains("is not a running driver domain"), "\(r3.stderr)")
        #expect(try h.list().keys.sorted() == ["Domain-0", "netback"])
    }

    /// libxl keeps a generated MAC in the domain's config: a restarted domain has the same one.
    @Test func aRestartedDomainKeepsItsGeneratedMAC() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try idleBackend(h)
        try h.create("rb", mode: "run", "on_reboot = \"restart\"\nvif = [ 'backend=nb', 'backend=nb, mac=00:16:3e:00:00:07' ]\n")
        let before = try read(h, "/local/domain/2/device/vif/0/mac")
        #expect(try h.xl("reboot", "-w", "rb").ok)
        #expect(eventually { (try? h.list())?["rb"]?.domid == 3 })
        let after = try read(h, "/local/domain/3/device/vif/0/mac")
        #expect(before != nil && after == before)
        #expect(try read(h, "/local/domain/3/device/vif/1/mac") == "00:16:3e:00:00:07")
        #expect(try h.xs("exists", "/local/domain/1/backend/vif/2").status == 1)
    }

    /// A name no other test run uses for the tap.
    static let bridge = "pvup\(getpid() % 100_000)"

    @Test(.enabled(if: Tap.canCreate, "needs /dev/net/tun and CAP_NET_ADMIN to create tap devices"))
    func theUplinkTapGoesToTheVifsBackendOnly() throws {
        let h = try SupervisorHarness()
        let br = Self.bridge
        defer {
            h.stop()
            #expect(access("/sys/class/net/\(br)", F_OK) != 0, "tap \(br) outlived the supervisor")
        }
        try h.create("nb", mode: "be-uplink", "driver_domain = 1\nextra = \"mode=be-uplink release=\(br)\"\n")
        #expect(eventually { h.consoleLog("nb").contains("nettool: ready dom1") })
        try h.create("g", mode: "run", "vif = [ 'backend=nb, bridge=\(br), mtu=1400', 'backend=nb, bridge=\(br)', 'backend=nb, bridge=lo' ]\n")
        // The backend got the tap: named after the bridge, up, with the vif's MTU.
        #expect(eventually { h.consoleLog("nb").contains("nettool: uplink 2/0 bridge=\(br): ok") }, "\(h.consoleLog("nb"))")
        #expect(access("/sys/class/net/\(br)", F_OK) == 0)
        #expect((try? FileIO.readString("/sys/class/net/\(br)/mtu")) == "1400\n")
        let flags = (try? FileIO.readString("/sys/class/net/\(br)/flags")).flatMap { UInt32($0.dropFirst(2).dropLast(), radix: 16) } ?? 0
        #expect(flags & 1 == 1, "IFF_UP not set: \(String(flags, radix: 16))")
        #expect(try h.dmesg().contains("dom1 (nb): tap \(br) created as the uplink of bridge \(br) (asked for through dom2's vif 0) and handed over"))
        // The same bridge again: the same tap (the supervisor keeps it for the driver domain);
        // a bridge named like an interface the host has: the kernel's EBUSY, logged with the reason.
        #expect(eventually { h.consoleLog("nb").contains("nettool: again 2/1 bridge=\(br): ok") }, "\(h.consoleLog("nb"))")
        #expect(try h.dmesg().contains("dom1 (nb): tap \(br) handed over again as the uplink of bridge \(br)"))
        #expect(eventually { h.consoleLog("nb").contains("nettool: uplink 2/2 bridge=lo: device_fd uplink 2/2 failed: EBUSY") }, "\(h.consoleLog("nb"))")
        #expect(try h.dmesg().contains("dom1 (nb): cannot create tap lo as the uplink of bridge lo: Device or resource busy (errno 16) (an interface of that name exists already, or the tap is open)"))

        // Anyone else asking is refused and named; unknown vifs and kind vif are errors too.
        try h.create("snoop", mode: "net-snoop", "extra = \"mode=net-snoop frontend=2 devid=0\"\n")
        #expect(eventually { h.consoleLog("snoop").contains("nettool: snoop vif:") }, "\(h.consoleLog("snoop"))")
        let snoop = h.consoleLog("snoop")
        #expect(snoop.contains("nettool: snoop uplink: device_fd uplink 2/0 failed: EACCES"), "\(snoop)")
        #expect(snoop.contains("nettool: snoop unknown: device_fd uplink 2/4242 failed: ENOENT"), "\(snoop)")
        #expect(snoop.contains("nettool: snoop vif: device_fd vif 2/0 failed: EINVAL"), "\(snoop)")
        #expect(try h.dmesg().contains("dom3 (snoop): asked for the uplink of dom2's vif 0 (bridge \(br)), which dom1 serves: refused"))

        // The tap lives as long as the driver domain, not as long as its descriptors (a
        // restarted backend finds it again, with what the host configured on it): the backend
        // closing it changes nothing; the domain going takes it away.
        #expect(try h.xs("write", "/local/domain/1/data/release", "1").ok)
        #expect(eventually { h.consoleLog("nb").contains("nettool: released \(br)") }, "\(h.consoleLog("nb"))")
        Thread.sleep(forTimeInterval: 0.2)
        #expect(access("/sys/class/net/\(br)", F_OK) == 0, "tap \(br) went with the backend's descriptor")
        #expect(try h.xl("destroy", "nb").ok)
        #expect(eventually { access("/sys/class/net/\(br)", F_OK) != 0 }, "tap \(br) still there after its driver domain was destroyed")
    }
}

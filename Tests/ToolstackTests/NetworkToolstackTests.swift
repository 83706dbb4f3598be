import Testing
import Toolstack

/// The vif keys Procvisor checks harder than xl (ip=, gateway=, bridge=, vifname=), libxl's devid
/// numbering, the `rate` node, and the `xl network-list` / `xl network-filter list` text.
@Suite struct NetworkToolstackTests {
    // MARK: vif keys

    @Test(arguments: [
        ("ip=10.0.0.2", "10.0.0.2"),
        ("ip=10.0.0.0/24", "10.0.0.0/24"),
        ("ip=10.0.0.2/24 192.0.2.7  198.51.100.0/32", "10.0.0.2/24 192.0.2.7 198.51.100.0/32"),
        ("ip=0.0.0.0/0", "0.0.0.0/0"),
    ])
    func ipAddressesAndNetworksAreAccepted(_ spec: String, _ stored: String) throws {
        #expect(try VifSpec.parse(spec).ip == stored)
    }

    @Test(arguments: [
        ("ip=10.0.0.256", "`10.0.0.256' is not an IPv4 address A.B.C.D or network A.B.C.D/N"),
        ("ip=10.0.0", "`10.0.0' is not an IPv4 address"),
        ("ip=10.0.0.1/33", "`10.0.0.1/33' is not an IPv4 address"),
        ("ip=10.0.0.1/", "`10.0.0.1/' is not an IPv4 address"),
        ("ip=fe80::1", "`fe80::1' is not an IPv4 address"),
        ("ip=host.example", "`host.example' is not an IPv4 address"),
        ("ip=10.0.0.1;rm", "`10.0.0.1;rm' is not an IPv4 address"),
        ("ip=", "expected one or more IPv4 addresses"),
        ("ip= ", "expected one or more IPv4 addresses"),
    ])
    func badIPsAreRefused(_ spec: String, _ reason: String) {
        do {
            _ = try VifSpec.parse(spec)
            Issue.record("accepted \(spec)")
        } catch {
            let text = "\(error)"
            #expect(text.hasPrefix("config parsing error in vif: invalid ip `"), "\(text)")
            #expect(text.contains(reason), "\(text)")
        }
    }

    @Test func gatewayIsAProcvisorKeyApartFromGatewaydev() throws {
        let v = try VifSpec.parse("ip=10.0.0.2/24,gateway=10.0.0.1,gatewaydev=eth0")
        #expect(v.gateway == "10.0.0.1" && v.gatewaydev == "eth0" && v.ip == "10.0.0.2/24")
        #expect(try VifSpec.parse("netdev=eth1").gatewaydev == "eth1")
        for bad in ["gateway=10.0.0", "gateway=10.0.0.1/24", "gateway=", "gateway=router"] {
            #expect(throws: XLConfigError.self, "\(bad)") { try VifSpec.parse(bad) }
        }
        do {
            _ = try VifSpec.parse("gateway=10.0.0.300")
        } catch {
            #expect("\(error)" == "config parsing error in vif: invalid gateway `10.0.0.300' in `gateway=10.0.0.300' (expected an IPv4 address A.B.C.D)")
        }
    }

    @Test(arguments: ["xenbr0", "br-lan_1", "a", "123456789012345", "br0.100", "tap@x"])
    func interfaceNamesLinuxTakesAreAccepted(_ name: String) throws {
        #expect(try VifSpec.parse("bridge=\(name)").bridge == name)
        #expect(try VifSpec.parse("vifname=\(name)").vifname == name)
    }

    @Test(arguments: [
        ("bridge=1234567890123456", "invalid bridge name `1234567890123456' in `bridge=1234567890123456' (an interface name has at most 15 bytes)"),
        ("bridge=", "invalid bridge name `' in `bridge=' (an interface name must not be empty)"),
        ("bridge=.", "invalid bridge name `.' in `bridge=.' (an interface name cannot be \".\" or \"..\")"),
        ("bridge=..", "invalid bridge name `..' in `bridge=..' (an interface name cannot be \".\" or \"..\")"),
        ("bridge=br/0", "invalid bridge name `br/0' in `bridge=br/0' (an interface name cannot contain '/', ':', whitespace or control characters)"),
        ("bridge=br:0", "invalid bridge name `br:0' in `bridge=br:0' (an interface name cannot contain '/', ':', whitespace or control characters)"),
        ("bridge=br 0", "invalid bridge name `br 0' in `bridge=br 0' (an interface name cannot contain '/', ':', whitespace or control characters)"),
        ("bridge=brüüüüüüü", "invalid bridge name `brüüüüüüü' in `bridge=brüüüüüüü' (an interface name has at most 15 bytes)"),
        ("vifname=web/0", "invalid vifname `web/0' in `vifname=web/0' (an interface name cannot contain '/', ':', whitespace or control characters)"),
    ])
    func badInterfaceNamesAreRefused(_ spec: String, _ message: String) {
        do {
            _ = try VifSpec.parse(spec)
            Issue.record("accepted \(spec)")
        } catch {
            #expect("\(error)" == "config parsing error in vif: " + message)
        }
    }

    @Test func typeAndModelAreAcceptedAsXlDoes() throws {
        let v = try VifSpec.parse("type=ioemu,model=e1000")
        #expect(v.type == "ioemu" && v.model == "e1000" && v.validationProblem() == nil)
    }

    @Test func commandLineWordsAreOneSpec() throws {
        let v = try VifSpec.parse(components: ["mac=00:16:3e:00:00:01", "bridge=br1", "ip=10.0.0.2 10.0.0.3"])
        #expect(v.mac == "00:16:3e:00:00:01" && v.bridge == "br1" && v.ip == "10.0.0.2 10.0.0.3")
        #expect(try VifSpec.parse(components: []) == VifSpec(spec: ""))
    }

    /// Specs that did not come from `parse` (a control request) are checked the same way.
    @Test func validationCatchesWhatParseWouldHaveRefused() {
        func problem(_ change: (inout VifSpec) -> Void) -> String? {
            var v = VifSpec()
            change(&v)
            return v.validationProblem()
        }
        #expect(problem { _ in } == nil)
        #expect(problem { $0.mac = "00:16:3e:00:00:01"; $0.ip = "10.0.0.1"; $0.gateway = "10.0.0.254"; $0.bridge = "br0" } == nil)
        #expect(problem { $0.mac = "00:16:3E:00:00:01" } == "invalid MAC address `00:16:3E:00:00:01'")
        #expect(problem { $0.mac = "01:00:5e:00:00:01" }?.contains("multicast") == true)
        #expect(problem { $0.mac = "00:00:00:00:00:00" } == "invalid MAC address `00:00:00:00:00:00'")
        #expect(problem { $0.bridge = "../../etc" }?.hasPrefix("invalid bridge name") == true)
        #expect(problem { $0.ip = "10.0.0.1\n10.0.0.2" }?.hasPrefix("invalid ip") == true)
        #expect(problem { $0.gateway = "x" }?.hasPrefix("invalid gateway") == true)
        #expect(problem { $0.mtu = 0 } == "invalid mtu 0")
        #expect(problem { $0.devid = -1 } == "invalid devid -1")
        #expect(problem { $0.type = "e1000" } == "invalid type `e1000'")
        #expect(problem { $0.script = "vif-bridge\nrm -rf" }?.contains("control characters") == true)
    }

    // MARK: libxl's numbering and nodes

    @Test(arguments: [
        ([String](), [Int]()),
        (["", "", ""], [0, 1, 2]),
        (["devid=5", ""], [5, 6]),
        (["", "devid=0"], [1, 0]),
        (["", "", "devid=7"], [8, 9, 7]),
        (["devid=3", "devid=1", ""], [3, 1, 4]),
    ])
    func devidsAreNumberedAsLibxlDoes(_ specs: [String], _ devids: [Int]) throws {
        #expect(VifSpec.assignDevids(try specs.map(VifSpec.parse)) == devids)
    }

    @Test func rateNodeIsLibxlsBytesCommaMicroseconds() throws {
        #expect(VifSpec.rateNode(try #require(try VifSpec.parse("rate=10Mb/s@20ms").rate)) == "25000,20000")
        #expect(VifSpec.rateNode(try #require(try VifSpec.parse("rate=250KB/s").rate)) == "12500,50000")
    }

    // MARK: xl output

    @Test func networkListMatchesXlsPrintf() {
        // printf("%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s\n", ...) in xl_nic.c.
        #expect(XLFormat.networkListHeader == "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       ")
        // printf("%-3d %-2d ", ...); LIBXL_MAC_FMT; printf("%6d %5d %6d %5d/%-11d %-30s\n", ...).
        let connected = NetworkDeviceInfo(devid: 0, backendID: 1, frontendID: 2, mac: "00:16:3e:12:34:56", state: 4, eventChannel: 10,
                                          txRingRef: 768, rxRingRef: 769, backendPath: "/local/domain/1/backend/vif/2/0")
        #expect(XLFormat.networkListRow(connected) == "0   1  00:16:3e:12:34:56     0     4     10   768/769         /local/domain/1/backend/vif/2/0")
        let fresh = NetworkDeviceInfo(devid: 12, backendID: 105, frontendID: 3, mac: "00:16:3e:00:00:01", state: 1, eventChannel: -1,
                                      txRingRef: -1, rxRingRef: -1, backendPath: "/local/domain/105/backend/vif/3/12")
        #expect(XLFormat.networkListRow(fresh) == "12  105 00:16:3e:00:00:01    12     1     -1    -1/-1          /local/domain/105/backend/vif/3/12")
        let short = NetworkDeviceInfo(devid: 1, backendID: 0, frontendID: 1, mac: "00:16:3e:00:00:02", state: 3, eventChannel: 123456,
                                      txRingRef: 1234567, rxRingRef: 8, backendPath: "/be")
        #expect(XLFormat.networkListRow(short) == "1   0  00:16:3e:00:00:02     1     3 123456 1234567/8           /be                           ")
    }

    @Test func networkFilterListNumbersRulesPerBridge() {
        #expect(XLFormat.networkFilterList([]) == "")
        #expect(XLFormat.networkFilterList([NetworkFilterRules(bridge: "br0", rules: [])]) == "br0:\n")
        let rules = (1...10).map { "drop dst-port=\($0) proto=udp" }
        let text = XLFormat.networkFilterList([NetworkFilterRules(bridge: "br0", rules: ["drop proto=udp dst-port=7", "accept"]),
                                               NetworkFilterRules(bridge: "xenbr0", rules: rules)])
        #expect(text.hasPrefix("br0:\n   1  drop proto=udp dst-port=7\n   2  accept\nxenbr0:\n   1  drop dst-port=1 proto=udp\n"))
        #expect(text.hasSuffix("   9  drop dst-port=9 proto=udp\n  10  drop dst-port=10 proto=udp\n"))
    }
}

import Testing
import Toolstack

/// Vif specs from xl-network-configuration(5) and Xen's tools/xl/check-xl-vif-parse; rate
/// results were compared with Xen 4.17's `xlu_vif_parse_rate`.
@Suite("vif specs")
struct ConfigVifSpecTests {
    private static func vif(_ spec: String, _ build: (inout VifSpec) -> Void) -> VifSpec {
        var vif = VifSpec(spec: spec)
        build(&vif)
        return vif
    }

    static let accepted: [(String, VifSpec)] = [
        ("", VifSpec(spec: "")),
        (",, ,", VifSpec(spec: ",, ,")),
        ("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", vif("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0") {
            $0.mac = "00:16:3e:74:3d:76"; $0.model = "rtl8139"; $0.bridge = "xenbr0"
        }),
        ("mac=0:16:3e:1:a:B", vif("mac=0:16:3e:1:a:B") { $0.mac = "00:16:3e:01:0a:0b" }),
        ("mac=02-00-00-AB-CD-EF", vif("mac=02-00-00-AB-CD-EF") { $0.mac = "02:00:00:ab:cd:ef" }),
        // libxl treats the all-zero address as "generate one".
        ("mac=00:00:00:00:00:00", VifSpec(spec: "mac=00:00:00:00:00:00")),
        ("bridge=xenbr1, ip=192.0.2.10,script=vif-route,gatewaydev=eth0,vifname=web0,backend=netdom,type=vif,devid=3,trusted",
         vif("bridge=xenbr1, ip=192.0.2.10,script=vif-route,gatewaydev=eth0,vifname=web0,backend=netdom,type=vif,devid=3,trusted") {
             $0.bridge = "xenbr1"; $0.ip = "192.0.2.10"; $0.script = "vif-route"; $0.gatewaydev = "eth0"
             $0.vifname = "web0"; $0.backend = "netdom"; $0.type = "vif"; $0.devid = 3; $0.trusted = true
         }),
        ("netdev=eth1,untrusted,type=ioemu", vif("netdev=eth1,untrusted,type=ioemu") {
            $0.gatewaydev = "eth1"; $0.trusted = false; $0.type = "ioemu"
        }),
        ("mtu=9000", vif("mtu=9000") { $0.mtu = 9000 }),
        ("mtu=0", VifSpec(spec: "mtu=0")),
        ("accel=foo", VifSpec(spec: "accel=foo")),
        ("rate=10Mb/s@20ms", vif("rate=10Mb/s@20ms") { $0.rate = VifRate(bytesPerInterval: 25_000, intervalMicroseconds: 20_000) }),
        ("rate=250KB/s", vif("rate=250KB/s") { $0.rate = VifRate(bytesPerInterval: 12_500, intervalMicroseconds: 50_000) }),
    ]

    @Test("accepted specs", arguments: accepted)
    func accepted(spec: String, expected: VifSpec) throws {
        #expect(try VifSpec.parse(spec) == expected)
    }

    static let rejected: [(String, String)] = [
        ("foo", "unrecognized argument `foo' in `foo'"),
        ("bridge=br0,colour=red", "unrecognized argument `colour=red' in `bridge=br0,colour=red'"),
        ("Mac=00:16:3e:00:00:01", "unrecognized argument `Mac=00:16:3e:00:00:01' in `Mac=00:16:3e:00:00:01'"),
        ("mac=00:16:3e:00:01", "invalid MAC address `00:16:3e:00:01' in `mac=00:16:3e:00:01' (expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56)"),
        ("mac=00:16:3e:zz:00:01", "invalid MAC address `00:16:3e:zz:00:01' in `mac=00:16:3e:zz:00:01' (expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56)"),
        ("mac=000:16:3e:00:00:01", "invalid MAC address `000:16:3e:00:00:01' in `mac=000:16:3e:00:00:01' (expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56)"),
        ("mac=00:16:3e:00:00:01:02", "invalid MAC address `00:16:3e:00:00:01:02' in `mac=00:16:3e:00:00:01:02' (expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56)"),
        ("mac=00:16:3e:00:00:+1", "invalid MAC address `00:16:3e:00:00:+1' in `mac=00:16:3e:00:00:+1' (expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56)"),
        ("mac=01:00:5e:00:00:01", "MAC address 01:00:5e:00:00:01 is a multicast address in `mac=01:00:5e:00:00:01' (a vif needs a unicast one: bit 0 of the first octet clear)"),
        ("mac=FF:FF:FF:FF:FF:FF", "MAC address ff:ff:ff:ff:ff:ff is a multicast address in `mac=FF:FF:FF:FF:FF:FF' (a vif needs a unicast one: bit 0 of the first octet clear)"),
        ("type=e1000", "invalid type `e1000' in `type=e1000' (supported: vif, ioemu)"),
        ("mtu=jumbo", "invalid mtu `jumbo' in `mtu=jumbo' (expected a decimal number up to 65535)"),
        ("mtu=65536", "invalid mtu `65536' in `mtu=65536' (expected a decimal number up to 65535)"),
        ("devid=-1", "invalid devid `-1' in `devid=-1' (expected a decimal number)"),
        ("rate=foo", "invalid rate `foo' in `rate=foo'"),
        ("rate=10MB", "invalid rate `10MB' in `rate=10MB'"),
        ("rate=4294967296b/s", "rate overflow `4294967296b/s' in `rate=4294967296b/s'"),
        ("rate=10Mb/s@10h", "invalid replenishment interval `10h' in `rate=10Mb/s@10h'"),
        ("colo_compare_out=x", "COLO option `colo_compare_out' is not supported by Procvisor in `colo_compare_out=x'"),
    ]

    @Test("rejected specs", arguments: rejected)
    func rejected(spec: String, message: String) {
        #expect(throws: XLConfigError("config parsing error in vif: " + message)) {
            try VifSpec.parse(spec)
        }
    }

    /// check-xl-vif-parse's table, plus the manual's example and octal input.
    static let rates: [(String, UInt64, UInt64)] = [
        ("16000000b/s", 100_000, 50_000), ("16000000b/s@50ms", 100_000, 50_000),
        ("2000000B/s", 100_000, 50_000), ("2000000B/s@50ms", 100_000, 50_000),
        ("16Kb/s", 100, 50_000), ("2KB/s@50ms", 100, 50_000),
        ("16Mb/s", 100_000, 50_000), ("2MB/s@50ms", 100_000, 50_000),
        ("8Gb/s", 50_000_000, 50_000), ("1GB/s@50ms", 50_000_000, 50_000),
        ("80Mb/s@1s", 10_000_000, 1_000_000), ("10MB/s@1s", 10_000_000, 1_000_000),
        ("1MB/s@20ms", 20_000, 20_000), ("10MB/s@1", 10_000_000, 1_000_000), ("10MB/s@1m", 10_000, 1_000),
        ("10MB/s@100us", 1_000, 100), ("10MB/s@7u", 70, 7),
        ("010Mb/s", 50_000, 50_000),  // C base 0: 010 is octal 8
        ("7b/s", 0, 50_000), ("4294967295B/s", 214_748_364, 50_000),
    ]

    @Test("rate= parses like xlu_vif_parse_rate", arguments: rates)
    func rate(text: String, bytes: UInt64, interval: UInt64) throws {
        #expect(try VifRate.parse(text) == VifRate(bytesPerInterval: bytes, intervalMicroseconds: interval))
    }

    static let badRates: [(String, String)] = [
        ("", "no rate specified in `'"), ("@", "no rate specified in `@'"),
        ("foo", "invalid rate in `foo'"), ("10MB", "invalid rate in `10MB'"), ("10MB/m", "invalid rate in `10MB/m'"),
        ("10ZB/s", "invalid rate in `10ZB/s'"), ("10kb/s", "invalid rate in `10kb/s'"),
        ("4294967296b/s", "rate overflow in `4294967296b/s'"), ("4294967296Gb/s", "rate overflow in `4294967296Gb/s'"),
        ("0B/s", "rate overflow in `0B/s'"),
        ("10Mb/s@foo", "invalid replenishment interval in `foo'"), ("10MB/s@10h", "invalid replenishment interval in `10h'"),
        ("10Mb/s@", "invalid replenishment interval in `'"),
        ("1B/s@4294967296us", "replenishment interval overflow in `4294967296us'"),
        ("1B/s@4294968ms", "replenishment interval overflow in `4294968ms'"),
        ("1B/s@4295s", "replenishment interval overflow in `4295s'"),
        ("1B/s@0us", "replenishment interval overflow in `0us'"),
        ("4294967295GB/s@5us", "rate overflow in `4294967295GB/s@5us'"),
        ("4296MB/s@4294s", "rate overflow in `4296MB/s@4294s'"),
    ]

    @Test("bad rates use libxlu's messages", arguments: badRates)
    func badRate(text: String, message: String) {
        #expect(throws: XLConfigError("config parsing error in vif: " + message)) {
            try VifRate.parse(text)
        }
    }
}

import ProcvisorABI

/// One entry of `vif = [ ... ]`: comma-separated `key=value` pairs and flags, as described by
/// xl-network-configuration(5). The empty spec `''` gives a vif with every default.
public struct VifSpec: Codable, Equatable, Sendable {
    /// `mac=`, normalised to lowercase `aa:bb:cc:dd:ee:ff`; always unicast. nil = generated
    /// (00:16:3e:xx:xx:xx), which is also what libxl does for an all-zero address.
    public var mac: String?
    /// `bridge=`; nil = xl.conf's default (xenbr0).
    public var bridge: String?
    /// `ip=`: one or more space-separated IPv4 addresses or networks (`A.B.C.D` or
    /// `A.B.C.D/N`). netback uses them for anti-spoofing, so unlike xl anything else is refused.
    public var ip: String?
    /// `gateway=` (a Procvisor extension): the IPv4 router the guest's network stack uses,
    /// written to the frontend (and backend) as `gateway`.
    public var gateway: String?
    /// `gatewaydev=` (or its deprecated alias `netdev=`): the host interface vif-route uses.
    public var gatewaydev: String?
    /// `type=`: `vif` or `ioemu`.
    public var type: String?
    /// `vifname=`: the backend interface name; nil = vifDOMID.DEVID.
    public var vifname: String?
    /// `script=`: hotplug script; nil = vif-bridge.
    public var script: String?
    /// `backend=`: backend domain name; nil = domain 0.
    public var backend: String?
    /// `model=`: emulated NIC model (HVM only).
    public var model: String?
    /// `mtu=`; nil = default (1500, or the bridge's).
    public var mtu: Int?
    /// `rate=`; nil = unlimited.
    public var rate: VifRate?
    /// `devid=`; nil = the index in the vif list.
    public var devid: Int?
    /// `trusted` / `untrusted`; nil = default (trusted).
    public var trusted: Bool?
    /// The spec text as written.
    public var spec: String

    /// A vif with every default.
    public init(spec: String = "") {
        self.spec = spec
    }

    /// Parses one vif spec as xl does: split at commas (empty pieces are skipped), leading
    /// spaces of each piece dropped, each piece `key=value` or a flag. Unlike xl, which only
    /// warns about bad pieces in a config file, every problem is an error here: an unknown key,
    /// a malformed or multicast MAC, a bad rate, mtu or devid, an `ip=` that is not IPv4
    /// addresses, a `gateway=` that is not one, a `bridge=` or `vifname=` that cannot name a
    /// Linux interface. COLO keys are rejected as unsupported; `accel=` is ignored, as xl
    /// ignores it.
    public static func parse(_ spec: String) throws -> VifSpec {
        func fail(_ what: String, hint: String? = nil) -> XLConfigError {
            XLConfigError("config parsing error in vif: \(what) in `\(spec)'" + (hint.map { " (\($0))" } ?? ""))
        }
        var vif = VifSpec(spec: spec)
        for rawPiece in spec.split(separator: ",") {
            let piece = rawPiece.drop(while: { $0 == " " })
            if piece.isEmpty { continue }
            if piece == "trusted" { vif.trusted = true; continue }
            if piece == "untrusted" { vif.trusted = false; continue }
            guard let equals = piece.firstIndex(of: "=") else {
                throw fail("unrecognized argument `\(piece)'")
            }
            let key = String(piece[..<equals])
            let value = String(piece[piece.index(after: equals)...])
            switch key {
            case "type":
                guard value == "vif" || value == "ioemu" else {
                    throw fail("invalid type `\(value)'", hint: "supported: vif, ioemu")
                }
                vif.type = value
            case "mac":
                vif.mac = try parseMAC(value, fail: { fail($0, hint: $1) })
            case "bridge":
                if let problem = interfaceNameProblem(value) { throw fail("invalid bridge name `\(value)'", hint: problem) }
                vif.bridge = value
            case "netdev", "gatewaydev": vif.gatewaydev = value
            case "ip":
                if let problem = ipProblem(value) { throw fail("invalid ip `\(value)'", hint: problem) }
                vif.ip = value.split(separator: " ").joined(separator: " ")
            case "gateway":
                guard IPv4Address(value) != nil else {
                    throw fail("invalid gateway `\(value)'", hint: "expected an IPv4 address A.B.C.D")
                }
                vif.gateway = value
            case "script": vif.script = value
            case "backend": vif.backend = value
            case "vifname":
                if let problem = interfaceNameProblem(value) { throw fail("invalid vifname `\(value)'", hint: problem) }
                vif.vifname = value
            case "model": vif.model = value
            case "rate":
                switch VifRate.parseReportingProblem(value) {
                case .success(let rate): vif.rate = rate
                case .failure(let problem): throw fail("\(problem.what) `\(problem.text)'")
                }
            case "mtu":
                guard CInteger.isDecimalDigits(Substring(value)), value.count <= 6, let mtu = Int(value), mtu <= 65535 else {
                    throw fail("invalid mtu `\(value)'", hint: "expected a decimal number up to 65535")
                }
                // libxl treats 0 as "use the default", like an absent mtu.
                vif.mtu = mtu == 0 ? nil : mtu
            case "devid":
                guard CInteger.isDecimalDigits(Substring(value)), value.count <= 9, let devid = Int(value) else {
                    throw fail("invalid devid `\(value)'", hint: "expected a decimal number")
                }
                vif.devid = devid
            case "accel":
                break
            case _ where key == "forwarddev" || key.hasPrefix("colo_"):
                throw fail("COLO option `\(key)' is not supported by Procvisor")
            default:
                throw fail("unrecognized argument `\(piece)'")
            }
        }
        return vif
    }

    /// xl.conf's default `bridge=`.
    public static let defaultBridge = "xenbr0"
    /// libxl's default hotplug script (it writes it as an absolute path; the name is enough here).
    public static let defaultScript = "vif-bridge"
    /// LIBXL_DEVICE_NIC_MTU_DEFAULT.
    public static let defaultMTU = 1500

    /// Several command-line words making one spec (`xl network-attach DOMAIN mac=... bridge=...`):
    /// joined with ',' as xl's parse_nic_config takes them one by one.
    public static func parse(components: [String]) throws -> VifSpec {
        try parse(components.joined(separator: ","))
    }

    /// What is wrong with `name` as a Linux network interface name (`dev_valid_name`): empty,
    /// longer than 15 bytes (IFNAMSIZ - 1), "." or "..", or containing '/', ':', whitespace or
    /// a control character. Nil when it is fine. A bridge names the tap netback's uplink may be,
    /// so it must be one.
    public static func interfaceNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "an interface name must not be empty" }
        if name.utf8.count > 15 { return "an interface name has at most 15 bytes" }
        if name == "." || name == ".." { return "an interface name cannot be \".\" or \"..\"" }
        if name.unicodeScalars.contains(where: { $0 == "/" || $0 == ":" || $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }) {
            return "an interface name cannot contain '/', ':', whitespace or control characters"
        }
        return nil
    }

    /// What is wrong with an `ip=` value: it must be one or more IPv4 addresses `A.B.C.D` or
    /// networks `A.B.C.D/N`, separated by spaces. Nil when it is fine.
    public static func ipProblem(_ value: String) -> String? {
        let words = value.split(separator: " ")
        guard !words.isEmpty else { return "expected one or more IPv4 addresses A.B.C.D or A.B.C.D/N, separated by spaces" }
        for w in words where IPv4Network(String(w)) == nil {
            return "`\(w)' is not an IPv4 address A.B.C.D or network A.B.C.D/N (several are separated by spaces)"
        }
        return nil
    }

    /// The checks `parse` makes, for a spec that did not come from `parse` (a control request):
    /// nil when every field is one `parse` could have produced, else what is wrong.
    public func validationProblem() -> String? {
        if let mac {
            guard let m = MACAddress(mac), m.description == mac, !m.isZero else { return "invalid MAC address `\(mac)'" }
            if m.isMulticast { return "MAC address \(mac) is a multicast address (a vif needs a unicast one)" }
        }
        if let bridge, let p = Self.interfaceNameProblem(bridge) { return "invalid bridge name `\(bridge)' (\(p))" }
        if let vifname, let p = Self.interfaceNameProblem(vifname) { return "invalid vifname `\(vifname)' (\(p))" }
        if let ip, let p = Self.ipProblem(ip) { return "invalid ip `\(ip)' (\(p))" }
        if let gateway, IPv4Address(gateway) == nil { return "invalid gateway `\(gateway)' (expected an IPv4 address A.B.C.D)" }
        if let mtu, !(1...65535).contains(mtu) { return "invalid mtu \(mtu)" }
        if let devid, !(0...999_999_999).contains(devid) { return "invalid devid \(devid)" }
        if let type, type != "vif" && type != "ioemu" { return "invalid type `\(type)'" }
        if let rate, rate.intervalMicroseconds == 0 || rate.intervalMicroseconds > UInt64(UInt32.max) {
            return "invalid rate (replenishment interval \(rate.intervalMicroseconds) us)"
        }
        for (key, value) in [("script", script), ("backend", backend), ("model", model), ("gatewaydev", gatewaydev)] {
            if let value, value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
                return "invalid \(key) `\(value)' (control characters)"
            }
        }
        return nil
    }

    /// The device numbers libxl gives a domain's vifs at creation
    /// (libxl__device_nic_set_devids): an explicit `devid=` is kept; the others are numbered on
    /// from the highest explicit one (from 0 when there is none), in list order. With no
    /// `devid=` at all, the index in the list.
    public static func assignDevids(_ vifs: [VifSpec]) -> [Int] {
        var last = vifs.compactMap(\.devid).max() ?? -1
        return vifs.map { v in
            if let d = v.devid { return d }
            last += 1
            return last
        }
    }

    /// libxl's `rate` backend node: `BYTES,MICROSECONDS` ("%"PRIu64",%"PRIu32).
    public static func rateNode(_ rate: VifRate) -> String {
        "\(rate.bytesPerInterval),\(rate.intervalMicroseconds)"
    }

    /// Six 1–2 digit hex octets separated by ':' (or '-'), normalised to lowercase with ':'.
    /// xl itself accepts any separator and any junk after the sixth octet; that leniency only
    /// hides typos, so it is not copied.
    private static func parseMAC(_ text: String, fail: (String, String?) -> XLConfigError) throws -> String? {
        let usage = fail("invalid MAC address `\(text)'", "expected six hex octets separated by ':', e.g. 00:16:3e:12:34:56")
        let separator: Character = text.contains("-") && !text.contains(":") ? "-" : ":"
        let parts = text.split(separator: separator, omittingEmptySubsequences: false)
        guard parts.count == 6 else { throw usage }
        var octets: [UInt8] = []
        for part in parts {
            guard (1...2).contains(part.count), part.allSatisfy(\.isHexDigit), let octet = UInt8(part, radix: 16) else {
                throw usage
            }
            octets.append(octet)
        }
        if octets.allSatisfy({ $0 == 0 }) { return nil }
        let normalised = octets.map(XLConfigValue.hexByte).joined(separator: ":")
        guard octets[0] & 1 == 0 else {
            throw fail(
                "MAC address \(normalised) is a multicast address", "a vif needs a unicast one: bit 0 of the first octet clear")
        }
        return normalised
    }
}

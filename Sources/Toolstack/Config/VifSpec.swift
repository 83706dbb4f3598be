/// One entry of `vif = [ ... ]`: comma-separated `key=value` pairs and flags, as described by
/// xl-network-configuration(5). The empty spec `''` gives a vif with every default.
public struct VifSpec: Codable, Equatable, Sendable {
    /// `mac=`, normalised to lowercase `aa:bb:cc:dd:ee:ff`; always unicast. nil = generated
    /// (00:16:3e:xx:xx:xx), which is also what libxl does for an all-zero address.
    public var mac: String?
    /// `bridge=`; nil = xl.conf's default (xenbr0).
    public var bridge: String?
    /// `ip=`.
    public var ip: String?
    /// `gatewaydev=` (or its deprecated alias `netdev=`): the host interface vif-route uses.
    public var gateway: String?
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
    /// a malformed or multicast MAC, a bad rate, mtu or devid. COLO keys are rejected as
    /// unsupported; `accel=` is ignored, as xl ignores it.
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
            case "bridge": vif.bridge = value
            case "netdev", "gatewaydev": vif.gateway = value
            case "ip": vif.ip = value
            case "script": vif.script = value
            case "backend": vif.backend = value
            case "vifname": vif.vifname = value
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

import ProcvisorABI

/// A guest's IPv4 configuration: its address, the prefix of the link's subnet, the default gateway.
public struct NetStackConfig: Equatable, Sendable {
    /// This host's address.
    public var address: IPv4Address
    /// The on-link subnet's prefix length (0...32); 24 when the `ip` text has no `/N`.
    public var prefixLength: Int
    /// The router for off-link destinations; nil: only the subnet is reachable.
    public var gateway: IPv4Address?

    /// The prefix length taken when Xen's `ip` text gives none (a /24, as the address classes
    /// the vif scripts assume for private networks).
    public static let defaultPrefixLength = 24

    public init(address: IPv4Address, prefixLength: Int = NetStackConfig.defaultPrefixLength, gateway: IPv4Address? = nil) {
        precondition((0...32).contains(prefixLength), "an IPv4 prefix length is 0...32, not \(prefixLength)")
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
    }

    /// The on-link subnet.
    public var subnet: IPv4Network { IPv4Network(address: address, prefixLength: prefixLength) }

    /// The subnet's directed broadcast address; nil for /31 and /32, which have none (RFC 3021).
    public var subnetBroadcast: IPv4Address? {
        prefixLength >= 31 ? nil : IPv4Address(value: address.value | ~subnet.mask)
    }

    /// From the vif's XenStore keys: `ip` is Xen's ip= text: one or more space-separated addresses,
    /// each `A.B.C.D` or `A.B.C.D/N`; the first is used. `gateway` is optional (nil or blank: none).
    /// Throws `NetStackError.badConfig` naming the bad text.
    public static func parse(ip: String, gateway: String?) throws -> NetStackConfig {
        let words = ip.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" })
        guard let first = words.first else {
            throw NetStackError.badConfig("ip \"\(ip)\": no address (expected A.B.C.D or A.B.C.D/N)")
        }
        let parts = first.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPv4Address(String(parts[0])) else {
            throw NetStackError.badConfig("ip \"\(first)\": not an IPv4 address (expected A.B.C.D or A.B.C.D/N)")
        }
        var prefix = defaultPrefixLength
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy({ $0 >= "0" && $0 <= "9" }),
                  let n = Int(parts[1]), n <= 32 else {
                throw NetStackError.badConfig("ip \"\(first)\": the prefix length after '/' must be 0...32")
            }
            prefix = n
        }
        let v = address.value
        guard v != 0, !NetStackWire.isMulticastOrReserved(v), !NetStackWire.isLoopback(v) else {
            throw NetStackError.badConfig("ip \"\(first)\": \(address) cannot be a host's address")
        }
        var config = NetStackConfig(address: address, prefixLength: prefix)
        if let b = config.subnetBroadcast, b == address {
            throw NetStackError.badConfig("ip \"\(first)\": \(address) is the broadcast address of \(config.subnet)")
        }
        if let g = gateway?.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }), !g.isEmpty {
            guard g.count == 1, let gw = IPv4Address(String(g[0])) else {
                throw NetStackError.badConfig("gateway \"\(gateway ?? "")\": not an IPv4 address (expected A.B.C.D)")
            }
            let w = gw.value
            guard w != 0, !NetStackWire.isMulticastOrReserved(w), !NetStackWire.isLoopback(w), gw != address else {
                throw NetStackError.badConfig("gateway \"\(gw)\": cannot be a router's address for \(address)")
            }
            config.gateway = gw
        }
        return config
    }
}

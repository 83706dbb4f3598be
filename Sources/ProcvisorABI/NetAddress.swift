/// An Ethernet address. Text form: six two-digit lowercase hex octets separated by ':'.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// The six octets in wire order, packed into the low 48 bits (octet 0 most significant).
    public let value: UInt64

    public static let broadcast = MACAddress(value: 0xFFFF_FFFF_FFFF)

    public init(value: UInt64) { self.value = value & 0xFFFF_FFFF_FFFF }

    public init(octets: [UInt8]) {
        precondition(octets.count == 6, "a MAC address has six octets")
        self.init(value: octets.reduce(0) { $0 << 8 | UInt64($1) })
    }

    /// Reads six octets at `p` (wire order).
    public init(bytes p: UnsafeRawPointer) {
        var v: UInt64 = 0
        for i in 0..<6 { v = v << 8 | UInt64(p.load(fromByteOffset: i, as: UInt8.self)) }
        self.init(value: v)
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (or with '-'), one or two hex digits per octet; nil otherwise.
    public init?(_ text: String) {
        let separator: Character = text.contains("-") && !text.contains(":") ? "-" : ":"
        let parts = text.split(separator: separator, omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard (1...2).contains(part.count), part.allSatisfy(\.isHexDigit), let o = UInt8(part, radix: 16) else { return nil }
            octets.append(o)
        }
        self.init(octets: octets)
    }

    public var octets: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: value >> (8 * (5 - $0))) } }

    /// Writes the six octets at `p` (wire order).
    public func store(to p: UnsafeMutableRawPointer) {
        for i in 0..<6 { p.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * (5 - i))), toByteOffset: i, as: UInt8.self) }
    }

    /// Group bit (bit 0 of the first octet): broadcast and multicast.
    public var isMulticast: Bool { (value >> 40) & 1 == 1 }
    public var isBroadcast: Bool { value == 0xFFFF_FFFF_FFFF }
    public var isZero: Bool { value == 0 }

    public var description: String {
        octets.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    public static func < (a: MACAddress, b: MACAddress) -> Bool { a.value < b.value }
}

/// An IPv4 address. Text form: dotted quad.
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// Host order: 10.0.0.1 is 0x0A000001.
    public let value: UInt32

    public static let any = IPv4Address(value: 0)
    public static let broadcast = IPv4Address(value: 0xFFFF_FFFF)

    public init(value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Reads four octets at `p` (network order).
    public init(bytes p: UnsafeRawPointer) {
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(p.load(fromByteOffset: i, as: UInt8.self)) }
        value = v
    }

    /// Parses a dotted quad of four decimal numbers 0–255 (no leading '+', no more than three
    /// digits each); nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0 >= "0" && $0 <= "9" }), let n = UInt32(part), n <= 255 else {
                return nil
            }
            v = v << 8 | n
        }
        value = v
    }

    /// Writes the four octets at `p` (network order).
    public func store(to p: UnsafeMutableRawPointer) {
        for i in 0..<4 { p.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * (3 - i))), toByteOffset: i, as: UInt8.self) }
    }

    public var octets: [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * (3 - $0))) } }

    public var description: String { octets.map { String($0) }.joined(separator: ".") }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

/// An IPv4 network: address and prefix length (`10.0.0.0/24`).
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        precondition((0...32).contains(prefixLength), "an IPv4 prefix length is 0...32")
        self.address = address
        self.prefixLength = prefixLength
    }

    /// `A.B.C.D` (a /32) or `A.B.C.D/N`; nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let a = IPv4Address(String(parts[0])) else { return nil }
        var n = 32
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy({ $0 >= "0" && $0 <= "9" }), let p = Int(parts[1]), p <= 32 else {
                return nil
            }
            n = p
        }
        self.init(address: a, prefixLength: n)
    }

    public var mask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength) }

    public func contains(_ a: IPv4Address) -> Bool { (a.value ^ address.value) & mask == 0 }

    public var description: String { "\(address)/\(prefixLength)" }
}

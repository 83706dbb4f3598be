import ProcvisorABI

/// One entry of a node's permission list (`struct xs_permissions`). The first entry of a list names
/// the owner and the access of every domain not listed after it.
public struct XSPermission: Hashable, Sendable, CustomStringConvertible {
    /// Xen's one-letter access codes: `n`one, `r`ead, `w`rite, `b`oth.
    public enum Access: Character, Sendable, CaseIterable {
        case none = "n", read = "r", write = "w", both = "b"

        var bits: UInt8 {
            switch self {
            case .none: return 0
            case .read: return PermBits.read
            case .write: return PermBits.write
            case .both: return PermBits.read | PermBits.write
            }
        }

        init(bits: UInt8) {
            switch bits & (PermBits.read | PermBits.write) {
            case PermBits.read: self = .read
            case PermBits.write: self = .write
            case PermBits.read | PermBits.write: self = .both
            default: self = .none
            }
        }
    }

    public var domid: UInt16
    public var access: Access

    public init(domid: UInt16, access: Access) {
        self.domid = domid
        self.access = access
    }

    public init(_ access: Access, _ domid: UInt16) {
        self.init(domid: domid, access: access)
    }

    /// Parses one permission string such as `r5` the way `xenstore_strings_to_perms` does (the
    /// domid is read like `strtol(…, 0)`: decimal, `0x` hex or leading-zero octal). Nil when the
    /// letter is unknown, the number is missing or has trailing junk, or it is not a 16-bit domid.
    public init?(_ string: some StringProtocol) {
        guard let letter = string.first, let access = Access(rawValue: letter) else { return nil }
        guard let domid = parseCUnsigned(string.dropFirst()), domid <= UInt64(UInt16.max) else { return nil }
        self.init(domid: UInt16(domid), access: access)
    }

    /// `r5`, as `xenstore_perm_to_string` formats it.
    public var description: String { "\(access.rawValue)\(domid)" }
}

/// Permission bits as xenstored keeps them (`XS_PERM_*` in xenstore_lib.h).
enum PermBits {
    static let read: UInt8 = 0x01
    static let write: UInt8 = 0x02
    static let owner: UInt8 = 0x08
    /// The entry names a domain that is gone (or younger than the node) and must not match.
    static let ignore: UInt8 = 0x10
}

/// A permission entry as stored on a node: the access bits plus xenstored's IGNORE flag.
struct PermEntry: Equatable, Sendable, Codable {
    var domid: UInt16
    var bits: UInt8

    init(_ p: XSPermission) {
        domid = p.domid
        bits = p.access.bits
    }

    init(domid: UInt16, bits: UInt8) {
        self.domid = domid
        self.bits = bits
    }

    var ignored: Bool { bits & PermBits.ignore != 0 }
    var permission: XSPermission { XSPermission(domid: domid, access: .init(bits: bits)) }
}

/// `strtol(s, &end, 0)` restricted to what a domid can be: optional `0x`/leading-0 radix, all
/// characters consumed, at least one digit.
func parseCUnsigned(_ s: some StringProtocol) -> UInt64? {
    var digits = Substring(s)
    var radix = 10
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
        radix = 16
        digits = digits.dropFirst(2)
    } else if digits.count > 1, digits.hasPrefix("0") {
        radix = 8
        digits = digits.dropFirst()
    }
    guard !digits.isEmpty else { return nil }
    return UInt64(digits, radix: radix)
}

/// C `atoi`: leading blanks, optional sign, then digits up to the first non-digit; 0 if none.
/// The result is truncated to 32 bits like the C int it stands for.
func cAtoi(_ bytes: some Collection<UInt8>) -> Int32 {
    var it = bytes.drop { $0 == 0x20 || ($0 >= 0x09 && $0 <= 0x0d) }
    var negative = false
    if let f = it.first, f == UInt8(ascii: "-") || f == UInt8(ascii: "+") {
        negative = f == UInt8(ascii: "-")
        it = it.dropFirst()
    }
    var value: Int64 = 0
    for b in it {
        guard b >= 0x30 && b <= 0x39 else { break }
        value = (value &* 10 &+ Int64(b - 0x30)) & 0xffff_ffff_ffff
    }
    if negative { value = -value }
    return Int32(truncatingIfNeeded: value)
}

/// An identifier Xen passes as a bare integer (a port, a grant reference, a domain id) given a
/// Swift type of its own, so one can never be passed where another is meant. On the wire it is
/// the integer, and in XenStore and `xl` output the decimal number, as in Xen. Integer literals
/// read as the identifier (tables, tests); an integer variable converts only through `init(_:)`.
public protocol XenIdentifier: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible,
    LosslessStringConvertible, ExpressibleByIntegerLiteral
    where RawValue: FixedWidthInteger & UnsignedInteger & Sendable, IntegerLiteralType == RawValue {
    init(rawValue: RawValue)
}

extension XenIdentifier {
    @inlinable @inline(__always) public init(_ value: RawValue) { self.init(rawValue: value) }
    @inlinable @inline(__always) public init(integerLiteral value: RawValue) { self.init(rawValue: value) }
    /// Parses the decimal form XenStore nodes and paths carry.
    @inlinable public init?(_ description: String) {
        guard let value = RawValue(description, radix: 10) else { return nil }
        self.init(rawValue: value)
    }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    /// The decimal number, as XenStore and `xl` write it.
    public var description: String { String(rawValue) }
}

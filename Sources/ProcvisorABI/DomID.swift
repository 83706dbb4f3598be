/// A domain id (`domid_t`). Its own type so a domain id can never be passed where a port, a
/// grant reference or a count is meant; on the wire it is the u16 and in XenStore paths and
/// `xl` output the decimal number, as in Xen. Integer literals read as domain ids (tables,
/// tests); a `UInt16` variable converts only through `init(_:)`.
/// Codable as the bare number (the stdlib's RawRepresentable coding), as a `UInt16` was.
public struct DomID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible,
    LosslessStringConvertible, ExpressibleByIntegerLiteral, Codable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ v: UInt16) { rawValue = v }
    @inlinable public init(integerLiteral v: UInt16) { rawValue = v }
    /// Parses the decimal form of XenStore paths (`/local/domain/N`).
    @inlinable public init?(_ description: String) {
        guard let v = UInt16(description) else { return nil }
        rawValue = v
    }
    @inlinable public static func < (a: DomID, b: DomID) -> Bool { a.rawValue < b.rawValue }
    /// The decimal number, as XenStore paths and `xl` write it.
    public var description: String { String(rawValue) }

    /// Domain 0: the supervisor's own services (XenStore, the toolstack's requests).
    public static let dom0: DomID = 0
    /// `DOMID_FIRST_RESERVED`: ids from here up name no domain (`DOMID_SELF` and the like).
    public static let firstReserved: DomID = 0x7FF0
    /// Whether this id can name a domain (below `firstReserved`).
    @inlinable public var isReserved: Bool { rawValue >= DomID.firstReserved.rawValue }
}

/// `DOMID_SELF` from `xen/xen.h`: "the calling domain" in hypercall arguments.
public let DOMID_SELF: DomID = 0x7FF0

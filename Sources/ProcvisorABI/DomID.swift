/// A domain id (`domid_t`), a u16 in Xen; XenStore paths (`/local/domain/N`) carry it (see
/// `XenIdentifier`). Codable as the bare number (the stdlib's RawRepresentable coding), as a
/// `UInt16` was.
public struct DomID: XenIdentifier, Codable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Domain 0: the supervisor's own services (XenStore, the toolstack's requests).
    public static let dom0: DomID = 0
    /// `DOMID_FIRST_RESERVED`: ids from here up name no domain (`DOMID_SELF` and the like).
    public static let firstReserved: DomID = 0x7FF0
    /// Whether this id can name a domain (below `firstReserved`).
    @inlinable public var isReserved: Bool { rawValue >= DomID.firstReserved.rawValue }
}

/// `DOMID_SELF` from `xen/xen.h`: "the calling domain" in hypercall arguments.
public let DOMID_SELF: DomID = 0x7FF0

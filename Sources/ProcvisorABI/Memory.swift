/// Frame numbers. Separate types so a machine frame can never be passed where a pseudo-physical
/// one is meant (and the reverse).

/// A machine frame: a 4 KiB page of the supervisor's machine memory.
public struct MFN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ v: UInt64) { rawValue = v }
    public static func < (a: MFN, b: MFN) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "mfn \(String(rawValue, radix: 16))" }
}

/// A pseudo-physical frame of a domain (Xen's pfn / gfn for a PV guest): page N of its RAM.
public struct PFN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ v: UInt64) { rawValue = v }
    public static func < (a: PFN, b: PFN) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "pfn \(String(rawValue, radix: 16))" }
}

/// `XENMEM_*`: args[0] of `__HYPERVISOR_memory_op`. Extent lists are u64 pfns in the payload
/// (extent order 0: one page each), at most `maxExtents` per call; rc = extents done.
public enum XenMemOp: UInt64, Sendable {
    case increaseReservation = 0
    case decreaseReservation = 1
    case currentReservation = 3
    case maximumReservation = 4
    case populatePhysmap = 6

    public static let maxExtents = 1024
}

/// Layout of the translation tables the supervisor shares read-only with every domain.
public enum PhysMap {
    /// A P2M slot with no frame (ballooned out or never populated).
    public static let invalidEntry: UInt64 = ~0

    /// M2P entries hold pfn + 1, so the untouched (zero) pages of the sparse table read as
    /// "no pfn" without the supervisor writing gigabytes of INVALID_M2P_ENTRY at start-up.
    public static func m2pEncode(_ pfn: PFN?) -> UInt64 { pfn.map { $0.rawValue + 1 } ?? 0 }
    public static func m2pDecode(_ v: UInt64) -> PFN? { v == 0 ? nil : PFN(v - 1) }
}

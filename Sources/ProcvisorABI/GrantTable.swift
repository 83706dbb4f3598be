/// Grant tables, v1 layout (`xen/grant_table.h`).

/// A grant reference (`grant_ref_t`): an entry of the granter's table, a u32 in Xen; XenStore's
/// `ring-ref`, `tx-ring-ref` … carry it (see `XenIdentifier`).
public struct GrantRef: XenIdentifier {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The entry's index in the granter's table.
    @inlinable @inline(__always) public var index: Int { Int(rawValue) }
    /// Byte offset of the entry (`grant_entry_v1`) from the start of the table.
    @inlinable @inline(__always) public var entryOffset: Int { Int(rawValue) * GrantEntryV1.size }
}

/// `struct grant_entry_v1`: 8 bytes, `flags` (u16), `domid` (u16), `frame` (u32).
public enum GrantEntryV1 {
    public static let size = 8
    public static let perFrame = 4096 / size
    public static let flagsOffset = 0
    public static let domidOffset = 2
    public static let frameOffset = 4
}

/// `GTF_*`.
public enum GTF {
    public static let invalid: UInt16 = 0
    public static let permitAccess: UInt16 = 1
    public static let typeMask: UInt16 = 3
    public static let readonly: UInt16 = 1 << 2
    public static let reading: UInt16 = 1 << 3
    public static let writing: UInt16 = 1 << 4
}

/// `GNTTABOP_*`: args[0] of `__HYPERVISOR_grant_table_op`.
public enum GnttabOp: UInt64, Sendable {
    /// payload: `GrantMapRequest`s (≤ 16); reply payload: a `GrantMapResult` each, descriptors for the successes.
    case mapGrantRef = 0
    /// payload: u32 handles; reply payload: i16 status each (as i32).
    case unmapGrantRef = 1
    /// args[1] nr_frames → rc 0, one descriptor: the table's memfd.
    case setupTable = 2
    /// payload: `GrantCopy`s; reply payload: i16 status each (as i32).
    case copy = 5
    /// → rc = nr_frames | max_frames << 32.
    case querySize = 6
}

/// `GNTST_*`.
public enum GNTST: Int32, Error, Sendable, Equatable {
    case okay = 0
    case generalError = -1
    case badDomain = -2
    case badGntref = -3
    case badHandle = -4
    case badVirtAddr = -5
    case badDevAddr = -6
    case noDeviceSpace = -7
    case permissionDenied = -8
    case badPage = -9
    case badCopyArg = -10
    case addressTooBig = -11
    case eagain = -12
    case noSpace = -13
}

/// `GNTMAP_readonly`.
public let GNTMAP_readonly: UInt16 = 1 << 2
/// `GNTCOPY_source_gref`, `GNTCOPY_dest_gref`.
public let GNTCOPY_source_gref: UInt16 = 1 << 0
public let GNTCOPY_dest_gref: UInt16 = 1 << 1

/// First gfn of a domain's grantable pages: above any RAM pfn (RAM is capped below 8 TiB) and
/// still within the 32-bit `frame` of a v1 grant entry.
public let grantPageGFNBase: UInt64 = 0x8000_0000

/// The grant exposure map: one u32 per grantable page (index gfn - `grantPageGFNBase`), written
/// by the supervisor only (the domain's descriptor is read-only and sealed). Nonzero: the
/// supervisor has sent a descriptor of this page to another domain since it was last re-backed,
/// so ending its access must re-back it (`rebackGrantPages`). A domain gets the map with its
/// first grantable pages (`allocGrantPages` args[1] = 1: the map's descriptor comes last).
public enum GrantExposureMap {
    /// Grantable pages a domain can ever hold at once (gfns are reused, so indices stay below it).
    public static let maxPages = 4096
    public static let bytes = maxPages * 4
}

public struct GrantMapRequest: Equatable, Sendable {
    public var ref: GrantRef
    public var domid: DomID
    public var flags: UInt16
    public init(ref: GrantRef, domid: DomID, flags: UInt16) {
        self.ref = ref
        self.domid = domid
        self.flags = flags
    }

    public static func encode(_ reqs: [GrantMapRequest]) -> [UInt8] {
        var w = WireWriter()
        for r in reqs { w.u32(r.ref.rawValue); w.u16(r.domid.rawValue); w.u16(r.flags) }
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> [GrantMapRequest] {
        guard b.count % 8 == 0 else { throw WireError.invalid("grant map: payload is not a whole number of 8-byte requests") }
        var r = WireReader(b, what: "grant map")
        return try (0..<(b.count / 8)).map { _ in GrantMapRequest(ref: GrantRef(try r.u32()), domid: DomID(try r.u16()), flags: try r.u16()) }
    }
}

public struct GrantMapResult: Equatable, Sendable {
    public var status: GNTST
    public var handle: UInt32
    public init(status: GNTST, handle: UInt32) {
        self.status = status
        self.handle = handle
    }

    public static func encode(_ rs: [GrantMapResult]) -> [UInt8] {
        var w = WireWriter()
        for r in rs { w.u32(UInt32(bitPattern: r.status.rawValue)); w.u32(r.handle) }
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> [GrantMapResult] {
        guard b.count % 8 == 0 else { throw WireError.invalid("grant map results: bad length") }
        var r = WireReader(b, what: "grant map results")
        return try (0..<(b.count / 8)).map { _ in
            let s = Int32(bitPattern: try r.u32())
            return GrantMapResult(status: GNTST(rawValue: s) ?? .generalError, handle: try r.u32())
        }
    }
}

/// `struct gnttab_copy`: each side is a gref (with the `GNTCOPY_*_gref` flag) or a frame of the caller.
public struct GrantCopy: Equatable, Sendable {
    public struct Side: Equatable, Sendable {
        public var refOrGFN: UInt64
        public var domid: DomID
        public var offset: UInt16
        public init(refOrGFN: UInt64, domid: DomID, offset: UInt16) {
            self.refOrGFN = refOrGFN
            self.domid = domid
            self.offset = offset
        }
    }
    public var source: Side
    public var dest: Side
    public var length: UInt16
    public var flags: UInt16

    public init(source: Side, dest: Side, length: UInt16, flags: UInt16) {
        self.source = source
        self.dest = dest
        self.length = length
        self.flags = flags
    }

    public static let size = 32

    public static func encode(_ ops: [GrantCopy]) -> [UInt8] {
        var w = WireWriter()
        for o in ops {
            for s in [o.source, o.dest] { w.u64(s.refOrGFN); w.u16(s.domid.rawValue); w.u16(s.offset) }
            w.u16(o.length); w.u16(o.flags); w.u32(0)
        }
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> [GrantCopy] {
        guard b.count % size == 0 else { throw WireError.invalid("grant copy: payload is not a whole number of \(size)-byte ops") }
        var r = WireReader(b, what: "grant copy")
        return try (0..<(b.count / size)).map { _ in
            let s = Side(refOrGFN: try r.u64(), domid: DomID(try r.u16()), offset: try r.u16())
            let d = Side(refOrGFN: try r.u64(), domid: DomID(try r.u16()), offset: try r.u16())
            let len = try r.u16()
            let flags = try r.u16()
            _ = try r.u32()
            return GrantCopy(source: s, dest: d, length: len, flags: flags)
        }
    }
}

/// Status list (i16 each, sent as i32).
public enum GrantStatusList {
    public static func encode(_ s: [GNTST]) -> [UInt8] {
        var w = WireWriter()
        for v in s { w.u32(UInt32(bitPattern: v.rawValue)) }
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> [GNTST] {
        var r = WireReader(b, what: "grant status")
        return try (0..<(b.count / 4)).map { _ in GNTST(rawValue: Int32(bitPattern: try r.u32())) ?? .generalError }
    }
}

/// The network split driver's wire format, byte for byte `xen/io/netif.h` on x86_64: the tx and
/// rx ring slots, their flags and statuses with Xen's numbers, and the checks a backend makes on
/// what a frontend put on its rings (which it must not trust).
///
/// Sizes and offsets are checked against the C header in Tests/LinuxHostTests/NetifTests.swift.
public enum Netif {
    /// `XEN_NETIF_MAX_TX_SIZE`: the largest packet a tx chain may describe.
    public static let maxTxSize = 0xFFFF
    /// `XEN_NETIF_NR_SLOTS_MIN`: slots a backend must accept for one packet (Linux netback's
    /// `fatal_skb_slots` default); longer chains are refused.
    public static let maxSlotsPerPacket = 18
    /// `XEN_PAGE_SIZE`: `offset + size` of one slot stays inside it.
    public static let pageSize = 4096
    /// Ethernet header: a packet shorter than this is refused (Linux's `ETH_HLEN` check).
    public static let ethernetHeaderSize = 14
    /// The largest MTU with `feature-sg` (a 64 KiB packet minus the Ethernet header).
    public static let maxMTU = maxTxSize - ethernetHeaderSize

    // NETTXF_*
    public static let txCsumBlank: UInt16 = 1 << 0
    public static let txDataValidated: UInt16 = 1 << 1
    public static let txMoreData: UInt16 = 1 << 2
    public static let txExtraInfo: UInt16 = 1 << 3

    // NETRXF_*
    public static let rxDataValidated: UInt16 = 1 << 0
    public static let rxCsumBlank: UInt16 = 1 << 1
    public static let rxMoreData: UInt16 = 1 << 2
    public static let rxExtraInfo: UInt16 = 1 << 3
    public static let rxGSOPrefix: UInt16 = 1 << 4

    // XEN_NETIF_EXTRA_TYPE_*
    public static let extraTypeNone: UInt8 = 0
    public static let extraTypeGSO: UInt8 = 1
    public static let extraTypeMcastAdd: UInt8 = 2
    public static let extraTypeMcastDel: UInt8 = 3
    public static let extraTypeHash: UInt8 = 4
    public static let extraTypeMax: UInt8 = 5
    /// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra slot follows.
    public static let extraFlagMore: UInt8 = 1 << 0

    // NETIF_RSP_*
    public static let rspDropped: Int16 = -2
    public static let rspError: Int16 = -1
    public static let rspOkay: Int16 = 0
    /// The response of an extra-info slot.
    public static let rspNull: Int16 = 1

    /// Request and response sizes: tx slots are 12 bytes (the request), rx slots 8.
    public static let txRequestSize = 12
    public static let txResponseSize = 4
    public static let rxRequestSize = 8
    public static let rxResponseSize = 8
    public static let extraInfoSize = 8
}

/// `struct netif_tx_request` (12 bytes): one slot of a packet the frontend transmits.
public struct NetifTxRequest: Equatable, Sendable {
    public var gref: GrantRef
    public var offset: UInt16
    public var flags: UInt16
    public var id: UInt16
    /// The first slot of a packet: the whole packet's size; later slots: this slot's bytes.
    public var size: UInt16

    public init(gref: GrantRef, offset: UInt16, flags: UInt16, id: UInt16, size: UInt16) {
        self.gref = gref
        self.offset = offset
        self.flags = flags
        self.id = id
        self.size = size
    }

    public init(loading p: UnsafeRawPointer) {
        gref = GrantRef(p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        offset = p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        flags = p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
        id = p.loadUnaligned(fromByteOffset: 8, as: UInt16.self)
        size = p.loadUnaligned(fromByteOffset: 10, as: UInt16.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: gref.rawValue, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: offset, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: flags, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: id, toByteOffset: 8, as: UInt16.self)
        p.storeBytes(of: size, toByteOffset: 10, as: UInt16.self)
    }

    public var moreData: Bool { flags & Netif.txMoreData != 0 }
    public var hasExtraInfo: Bool { flags & Netif.txExtraInfo != 0 }
}

/// `struct netif_tx_response` (4 bytes).
public struct NetifTxResponse: Equatable, Sendable {
    public var id: UInt16
    public var status: Int16

    public init(id: UInt16, status: Int16) {
        self.id = id
        self.status = status
    }

    public init(loading p: UnsafeRawPointer) {
        id = p.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        status = p.loadUnaligned(fromByteOffset: 2, as: Int16.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: id, toByteOffset: 0, as: UInt16.self)
        p.storeBytes(of: status, toByteOffset: 2, as: Int16.self)
    }
}

/// `struct netif_extra_info` (8 bytes, in a tx request or rx response slot).
public struct NetifExtraInfo: Equatable, Sendable {
    public var type: UInt8
    public var flags: UInt8
    /// The union `u`, raw (GSO: size u16, type u8, pad u8, features u16; mcast: addr[6]).
    public var payload: (UInt16, UInt16, UInt16)

    public init(type: UInt8, flags: UInt8, payload: (UInt16, UInt16, UInt16) = (0, 0, 0)) {
        self.type = type
        self.flags = flags
        self.payload = payload
    }

    public init(loading p: UnsafeRawPointer) {
        type = p.load(fromByteOffset: 0, as: UInt8.self)
        flags = p.load(fromByteOffset: 1, as: UInt8.self)
        payload = (p.loadUnaligned(fromByteOffset: 2, as: UInt16.self), p.loadUnaligned(fromByteOffset: 4, as: UInt16.self),
                   p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
    }

    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: type, toByteOffset: 0, as: UInt8.self)
        p.storeBytes(of: flags, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: payload.0, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: payload.1, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: payload.2, toByteOffset: 6, as: UInt16.self)
    }

    public var more: Bool { flags & Netif.extraFlagMore != 0 }

    public static func == (a: NetifExtraInfo, b: NetifExtraInfo) -> Bool {
        a.type == b.type && a.flags == b.flags && a.payload == b.payload
    }
}

/// `struct netif_rx_request` (8 bytes): a page the frontend offers for one received slot.
public struct NetifRxRequest: Equatable, Sendable {
    public var id: UInt16
    public var gref: GrantRef

    public init(id: UInt16, gref: GrantRef) {
        self.id = id
        self.gref = gref
    }

    public init(loading p: UnsafeRawPointer) {
        id = p.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        gref = GrantRef(p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
    }

    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: id, toByteOffset: 0, as: UInt16.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: gref.rawValue, toByteOffset: 4, as: UInt32.self)
    }
}

/// `struct netif_rx_response` (8 bytes): `status` is the slot's byte count, or a negative
/// `NETIF_RSP_*`.
public struct NetifRxResponse: Equatable, Sendable {
    public var id: UInt16
    public var offset: UInt16
    public var flags: UInt16
    public var status: Int16

    public init(id: UInt16, offset: UInt16, flags: UInt16, status: Int16) {
        self.id = id
        self.offset = offset
        self.flags = flags
        self.status = status
    }

    public init(loading p: UnsafeRawPointer) {
        id = p.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        offset = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        flags = p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        status = p.loadUnaligned(fromByteOffset: 6, as: Int16.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: id, toByteOffset: 0, as: UInt16.self)
        p.storeBytes(of: offset, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: flags, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: status, toByteOffset: 6, as: Int16.self)
    }

    public var moreData: Bool { flags & Netif.rxMoreData != 0 }
}

/// Why a backend refused a tx packet (the packet's slots are answered `NETIF_RSP_ERROR`; the
/// vif keeps running).
public enum NetifTxError: Error, Equatable, CustomStringConvertible {
    /// The first slot's size is below an Ethernet header or above `XEN_NETIF_MAX_TX_SIZE`.
    case badPacketSize(Int)
    /// A slot's data runs past its page.
    case slotPastPage(slot: Int, offset: Int, size: Int)
    /// The slots' sizes do not add up to the size the first slot announced.
    case sizeMismatch(announced: Int, slots: Int)
    /// More slots than `XEN_NETIF_NR_SLOTS_MIN`.
    case tooManySlots(Int)
    /// An extra-info slot with a type outside 1…4, or one announced past the end of the chain.
    case badExtraInfo(type: UInt8)
    /// A slot names a grant the backend could not map (not granted, revoked, wrong domain).
    case badGrant(gref: GrantRef, status: String)

    /// The case's name (for grouping log lines).
    public var kind: String {
        switch self {
        case .badPacketSize: return "badPacketSize"
        case .slotPastPage: return "slotPastPage"
        case .sizeMismatch: return "sizeMismatch"
        case .tooManySlots: return "tooManySlots"
        case .badExtraInfo: return "badExtraInfo"
        case .badGrant: return "badGrant"
        }
    }

    public var description: String {
        switch self {
        case let .badPacketSize(n): return "packet size \(n) (must be \(Netif.ethernetHeaderSize)…\(Netif.maxTxSize))"
        case let .slotPastPage(s, o, n): return "slot \(s): offset \(o) + size \(n) runs past the \(Netif.pageSize)-byte page"
        case let .sizeMismatch(a, s): return "first slot announces \(a) bytes but the slots hold \(s)"
        case let .tooManySlots(n): return "\(n) slots in one packet (at most \(Netif.maxSlotsPerPacket))"
        case let .badExtraInfo(t): return "extra info of type \(t) (valid: 1…\(Netif.extraTypeMax - 1))"
        case let .badGrant(g, s): return "gref \(g) cannot be mapped (\(s))"
        }
    }
}

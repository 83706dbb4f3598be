/// XenStore wire protocol, as in `xen/io/xs_wire.h`: a 16-byte header (type, req_id, tx_id, len,
/// all u32 little-endian) followed by `len` bytes of payload, at most `XenStoreWire.payloadMax`.
public enum XSMessageType: UInt32, CaseIterable, Sendable {
    case control = 0          // XS_CONTROL (XS_DEBUG)
    case directory = 1
    case read = 2
    case getPerms = 3
    case watch = 4
    case unwatch = 5
    case transactionStart = 6
    case transactionEnd = 7
    case introduce = 8
    case release = 9
    case getDomainPath = 10
    case write = 11
    case mkdir = 12
    case rm = 13
    case setPerms = 14
    case watchEvent = 15
    case error = 16
    case isDomainIntroduced = 17
    case resume = 18
    case setTarget = 19
    // 20 was XS_RESTRICT, removed from Xen.
    case resetWatches = 21
    case directoryPart = 22

    /// Xen's name (`XS_READ` …), used in logs and in the `log` control command's output.
    public var xenName: String {
        switch self {
        case .control: return "XS_CONTROL"
        case .directory: return "XS_DIRECTORY"
        case .read: return "XS_READ"
        case .getPerms: return "XS_GET_PERMS"
        case .watch: return "XS_WATCH"
        case .unwatch: return "XS_UNWATCH"
        case .transactionStart: return "XS_TRANSACTION_START"
        case .transactionEnd: return "XS_TRANSACTION_END"
        case .introduce: return "XS_INTRODUCE"
        case .release: return "XS_RELEASE"
        case .getDomainPath: return "XS_GET_DOMAIN_PATH"
        case .write: return "XS_WRITE"
        case .mkdir: return "XS_MKDIR"
        case .rm: return "XS_RM"
        case .setPerms: return "XS_SET_PERMS"
        case .watchEvent: return "XS_WATCH_EVENT"
        case .error: return "XS_ERROR"
        case .isDomainIntroduced: return "XS_IS_DOMAIN_INTRODUCED"
        case .resume: return "XS_RESUME"
        case .setTarget: return "XS_SET_TARGET"
        case .resetWatches: return "XS_RESET_WATCHES"
        case .directoryPart: return "XS_DIRECTORY_PART"
        }
    }
}

/// The error names XenStore sends in an `XS_ERROR` reply (`xsd_errors` in xs_wire.h): the payload
/// is the name, NUL-terminated.
public enum XSError: String, Error, CaseIterable, Sendable, CustomStringConvertible {
    case EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY, ENOSYS, EROFS,
         EBUSY, EAGAIN, EISCONN, E2BIG, EPERM
    /// Not in `xsd_errors`, but what xenstored sends when a quota is hit (and libxenstore maps
    /// unknown names to EINVAL, as it does for this one).
    case EQUOTA

    public var description: String { rawValue }
}

public enum XenStoreWire {
    public static let headerSize = 16
    /// XENSTORE_PAYLOAD_MAX.
    public static let payloadMax = 4096
    /// XENSTORE_ABS_PATH_MAX / XENSTORE_REL_PATH_MAX.
    public static let absPathMax = 3072
    public static let relPathMax = 2048

    /// `struct xenstore_domain_interface`: req[1024], rsp[1024], then req_cons, req_prod, rsp_cons,
    /// rsp_prod, server_features, connection, error (u32 each).
    public static let ringSize = 1024
    public static let reqOffset = 0
    public static let rspOffset = 1024
    public static let reqConsOffset = 2048
    public static let reqProdOffset = 2052
    public static let rspConsOffset = 2056
    public static let rspProdOffset = 2060
    public static let serverFeaturesOffset = 2064
    public static let connectionOffset = 2068
    public static let errorOffset = 2072

    /// XENSTORE_SERVER_FEATURE_*.
    public static let featureReconnection: UInt32 = 1
    public static let featureError: UInt32 = 2
    /// XENSTORE_CONNECTED / XENSTORE_RECONNECT.
    public static let connected: UInt32 = 0
    public static let reconnect: UInt32 = 1
    /// XENSTORE_ERROR_*.
    public static let errorNone: UInt32 = 0
    public static let errorComm: UInt32 = 1
    public static let errorRingIndex: UInt32 = 2
    public static let errorProtocol: UInt32 = 3
}

/// One XenStore message. `type` is kept raw so an unknown type can be answered with an error
/// rather than dropped.
public struct XSMessage: Equatable, Sendable {
    public var rawType: UInt32
    public var requestID: UInt32
    public var transactionID: UInt32
    public var payload: [UInt8]

    public init(rawType: UInt32, requestID: UInt32, transactionID: UInt32, payload: [UInt8]) {
        self.rawType = rawType
        self.requestID = requestID
        self.transactionID = transactionID
        self.payload = payload
    }

    public init(_ type: XSMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, payload: [UInt8]) {
        self.init(rawType: type.rawValue, requestID: requestID, transactionID: transactionID, payload: payload)
    }

    /// A message whose payload is the given strings, each NUL-terminated (READ replies are not:
    /// use `init(_:payload:)` with the raw value for those).
    public init(_ type: XSMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, strings: [String]) {
        var p: [UInt8] = []
        for s in strings { p.append(contentsOf: s.utf8); p.append(0) }
        self.init(type, requestID: requestID, transactionID: transactionID, payload: p)
    }

    public var type: XSMessageType? { XSMessageType(rawValue: rawType) }

    /// An `XS_ERROR` reply to `request`.
    public static func error(_ e: XSError, replyingTo request: XSMessage) -> XSMessage {
        XSMessage(.error, requestID: request.requestID, transactionID: request.transactionID, strings: [e.rawValue])
    }

    /// The payload split at NULs. A trailing NUL ends the last string; text after the last NUL
    /// (no terminator) is returned as a final element, so callers can tell "a\0b" from "a\0b\0".
    public var payloadStrings: [String] {
        var out: [String] = []
        var start = 0
        for (i, b) in payload.enumerated() where b == 0 {
            out.append(String(decoding: payload[start..<i], as: UTF8.self))
            start = i + 1
        }
        if start < payload.count { out.append(String(decoding: payload[start...], as: UTF8.self)) }
        return out
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter(capacity: XenStoreWire.headerSize + payload.count)
        w.u32(rawType)
        w.u32(requestID)
        w.u32(transactionID)
        w.u32(UInt32(payload.count))
        w.raw(payload)
        return w.bytes
    }

    /// The header at the start of `bytes`: (type, req_id, tx_id, len). Throws when `len` exceeds
    /// the payload limit: the connection cannot be resynchronised after that.
    public static func decodeHeader(_ bytes: [UInt8]) throws -> (rawType: UInt32, requestID: UInt32, transactionID: UInt32, length: Int) {
        var r = WireReader(bytes, what: "xenstore header")
        let t = try r.u32(), rq = try r.u32(), tx = try r.u32(), len = Int(try r.u32())
        if len > XenStoreWire.payloadMax {
            throw WireError.tooLarge(what: "xenstore payload", size: len, limit: XenStoreWire.payloadMax)
        }
        return (t, rq, tx, len)
    }
}

/// Incremental framing of a XenStore byte stream (socket or ring): feed bytes, take messages.
public struct XSFramer: Sendable {
    private var buffer: [UInt8] = []
    /// Start of the bytes not yet taken (compacted lazily, so taking a message is O(its size)).
    private var start = 0

    public init() {}

    /// Bytes received but not yet part of a whole message.
    public var pendingBytes: Int { buffer.count - start }

    /// Those bytes themselves (a live update hands them to the next process).
    public var unconsumed: [UInt8] { Array(buffer[start...]) }

    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        if start > 0 && (start == buffer.count || start > 65536) {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole message, nil when more bytes are needed. Throws on an oversized length
    /// (the stream is then unusable and the connection must be dropped).
    public mutating func next() throws -> XSMessage? {
        guard pendingBytes >= XenStoreWire.headerSize else { return nil }
        let h = try XSMessage.decodeHeader(Array(buffer[start..<start + XenStoreWire.headerSize]))
        let total = XenStoreWire.headerSize + h.length
        guard pendingBytes >= total else { return nil }
        let m = XSMessage(rawType: h.rawType, requestID: h.requestID, transactionID: h.transactionID,
                          payload: Array(buffer[start + XenStoreWire.headerSize..<start + total]))
        start += total
        return m
    }
}

import LinuxHost
import ProcvisorABI

/// A dom0 XenStore client on the Unix socket, as libxenstore's `xs_open` with `XENSTORED_PATH`:
/// synchronous requests, watch events queued as they arrive. Used by `xl`, the benchmarks and
/// the tests; guests use DomainRuntime's ring client instead.
public final class XSSocketClient {
    public struct ServerError: Error, Equatable, CustomStringConvertible {
        public var name: String
        public var operation: String
        public var path: String
        public var description: String { "\(operation) \(path): \(name)" }
    }

    public struct Closed: Error, CustomStringConvertible {
        public var description: String { "xenstore: the server closed the connection" }
    }

    public let fd: FileDescriptor
    private var framer = XSFramer()
    private var nextID: UInt32 = 1
    private var buffer = [UInt8](repeating: 0, count: 65536)
    /// Watch events received while waiting for replies: (path, token).
    public private(set) var pendingEvents: [(path: String, token: String)] = []

    /// The socket path xl and xenstore-utils use: `XENSTORED_PATH`, else the supervisor's run directory.
    public static func socketPath(environment: [String: String], runDirectory: String) -> String {
        if let p = environment["XENSTORED_PATH"], !p.isEmpty { return p }
        return runDirectory + "/xenstored/socket"
    }

    public init(path: String) throws {
        fd = try UnixSocket.connect(path: path)
    }

    deinit { fd.close() }

    /// Sends a request and returns its reply (watch events that arrive first are queued).
    public func request(_ type: XSMessageType, _ strings: [String], transaction: UInt32 = 0) throws -> XSMessage {
        var p: [UInt8] = []
        for s in strings { p += Array(s.utf8); p.append(0) }
        return try request(type, payload: p, transaction: transaction, path: strings.first ?? "")
    }

    public func request(_ type: XSMessageType, payload: [UInt8], transaction: UInt32 = 0, path: String) throws -> XSMessage {
        let id = nextID
        nextID &+= 1
        try send(XSMessage(type, requestID: id, transactionID: transaction, payload: payload).encoded())
        while true {
            let m = try receive()
            if m.rawType == XSMessageType.watchEvent.rawValue {
                let s = m.payloadStrings
                if s.count >= 2 { pendingEvents.append((s[0], s[1])) }
                continue
            }
            if m.rawType == XSMessageType.error.rawValue {
                throw ServerError(name: m.payloadStrings.first ?? "EINVAL", operation: type.xenName, path: path)
            }
            return m
        }
    }

    /// The next watch event, waiting for one if none is queued.
    public func nextWatchEvent() throws -> (path: String, token: String) {
        while pendingEvents.isEmpty {
            let m = try receive()
            if m.rawType == XSMessageType.watchEvent.rawValue {
                let s = m.payloadStrings
                if s.count >= 2 { pendingEvents.append((s[0], s[1])) }
            }
        }
        return pendingEvents.removeFirst()
    }

    // MARK: the usual operations

    public func read(_ path: String, transaction: UInt32 = 0) throws -> String {
        String(decoding: try request(.read, [path], transaction: transaction).payload, as: UTF8.self)
    }

    public func write(_ path: String, _ value: String, transaction: UInt32 = 0) throws {
        _ = try request(.write, payload: Array(path.utf8) + [0] + Array(value.utf8), transaction: transaction, path: path)
    }

    public func directory(_ path: String, transaction: UInt32 = 0) throws -> [String] {
        try request(.directory, [path], transaction: transaction).payloadStrings.filter { !$0.isEmpty }
    }

    public func rm(_ path: String, transaction: UInt32 = 0) throws {
        _ = try request(.rm, [path], transaction: transaction)
    }

    public func watch(_ path: String, token: String) throws {
        _ = try request(.watch, [path, token])
    }

    public func startTransaction() throws -> UInt32 {
        let r = try request(.transactionStart, [""])
        guard let t = r.payloadStrings.first.flatMap({ UInt32($0) }) else {
            throw ServerError(name: "bad reply", operation: "XS_TRANSACTION_START", path: "")
        }
        return t
    }

    /// Ends a transaction; a conflicting commit throws EAGAIN.
    public func endTransaction(_ t: UInt32, commit: Bool) throws {
        _ = try request(.transactionEnd, [commit ? "T" : "F"], transaction: t)
    }

    // MARK: transport

    private func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            switch bytes.withUnsafeBytes({ fd.send(UnsafeRawBufferPointer(rebasing: $0[off...])) }) {
            case let .success(n): off += n
            case let .failure(e): throw SystemError("send", "xenstore socket", errno: e)
            }
        }
    }

    private func receive() throws -> XSMessage {
        while true {
            if let m = try framer.next() { return m }
            switch buffer.withUnsafeMutableBytes({ fd.receive(into: $0) }) {
            case .success(0): throw Closed()
            case let .success(n): framer.feed(buffer[0..<n])
            case let .failure(e): throw SystemError("recv", "xenstore socket", errno: e)
            }
        }
    }
}

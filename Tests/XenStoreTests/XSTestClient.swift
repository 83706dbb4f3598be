import ProcvisorABI
import XenStore

/// Drives an engine as one connection would, for tests.
struct XSTestClient {
    let engine: XenStoreEngine
    let id: XSConnectionID
    var tx: UInt32 = 0

    init(_ engine: XenStoreEngine, id: XSConnectionID, domid: UInt16) {
        self.engine = engine
        self.id = id
        engine.connect(id, domid: domid)
    }

    /// Sends a request; returns (reply to us, everything sent).
    @discardableResult
    func send(_ type: XSMessageType, _ strings: [String], tx: UInt32? = nil) -> (reply: XSMessage, all: [(XSConnectionID, XSMessage)]) {
        send(XSMessage(type, requestID: 42, transactionID: tx ?? self.tx, strings: strings))
    }

    @discardableResult
    func send(_ msg: XSMessage) -> (reply: XSMessage, all: [(XSConnectionID, XSMessage)]) {
        let out = engine.handle(id, msg)
        let replies = out.filter { $0.0 == id && $0.1.type != .watchEvent }
        precondition(replies.count == 1, "expected exactly one reply, got \(replies.count)")
        return (replies[0].1, out)
    }

    /// The reply's payload as text (NULs shown as "|"), or "ERR:<name>".
    func call(_ type: XSMessageType, _ strings: [String], tx: UInt32? = nil) -> String {
        describe(send(type, strings, tx: tx).reply)
    }

    func write(_ path: String, _ value: String, tx: UInt32? = nil) -> String {
        var p = Array(path.utf8) + [0]
        p += value.utf8
        return describe(send(XSMessage(.write, requestID: 1, transactionID: tx ?? self.tx, payload: p)).reply)
    }

    func read(_ path: String, tx: UInt32? = nil) -> String { call(.read, [path], tx: tx) }

    func startTransaction() -> UInt32 {
        let r = send(.transactionStart, [""], tx: 0).reply
        precondition(r.type == .transactionStart)
        return UInt32(r.payloadStrings[0])!
    }
}

func describe(_ m: XSMessage) -> String {
    if m.type == .error { return "ERR:" + (m.payloadStrings.first ?? "") }
    return String(decoding: m.payload.map { $0 == 0 ? UInt8(ascii: "|") : $0 }, as: UTF8.self)
}

/// Watch events in `out` for connection `id`, as "path token".
func events(_ out: [(XSConnectionID, XSMessage)], for id: XSConnectionID) -> [String] {
    out.filter { $0.0 == id && $0.1.type == .watchEvent }.map { $0.1.payloadStrings.joined(separator: " ") }
}

/// An engine with dom0 (connection 100) plus guests 1 and 2 (connections 1 and 2), each guest's
/// home directory owned by itself and the guest introduced.
func dom0AndTwoGuests() throws -> (XenStoreEngine, XSTestClient, XSTestClient, XSTestClient) {
    let e = XenStoreEngine()
    for d: UInt16 in [1, 2] {
        _ = try e.mkdir("/local/domain/\(d)", perms: [XSPermission(.none, d)])
        _ = e.introduceDomain(d)
    }
    return (e, XSTestClient(e, id: 100, domid: 0), XSTestClient(e, id: 1, domid: 1), XSTestClient(e, id: 2, domid: 2))
}

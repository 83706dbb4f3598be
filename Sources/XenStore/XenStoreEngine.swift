import ProcvisorABI

/// Identifies one XenStore connection (a dom0 socket client or a domain's ring) to the engine.
public typealias XSConnectionID = Int

/// The XenStore database with xenstored's semantics: nodes, permissions, watches, transactions and
/// quotas. No I/O: the server feeds it requests and sends what it returns. Not thread-safe; the
/// server calls it from one thread.
public final class XenStoreEngine {
    /// The quotas in force (CONTROL `quota set` changes them).
    public internal(set) var quota: XSQuota

    /// XS_INTRODUCE from a privileged client: return an error to refuse it (nil: go ahead). The
    /// engine then marks the domain introduced and fires @introduceDomain. Unset: accepted.
    public var onIntroduce: ((_ domid: UInt16, _ mfn: UInt64, _ port: UInt32) -> XSError?)?
    /// `XS_CONTROL logfile FILE`: the host sends the trace log there from now on (nil: refused).
    public var onLogfile: ((_ path: String) -> XSError?)?
    /// `XS_CONTROL memreport [FILE]`: the host writes the report to FILE, or to the trace log.
    public var onMemreport: ((_ report: String, _ path: String?) -> XSError?)?
    /// XS_RELEASE from a privileged client, before the engine releases the domain. Unset: accepted.
    public var onRelease: ((_ domid: UInt16) -> XSError?)?
    /// XS_RESUME from a privileged client. Unset: accepted.
    public var onResume: ((_ domid: UInt16) -> XSError?)?
    /// Receives trace lines while CONTROL `log on` is in effect, and CONTROL `print` text.
    public var logSink: ((String) -> Void)?
    /// CONTROL `live-update -s`: the connection and request id waiting for the answer, the new
    /// binary, whether forced, the timeout in seconds. Returns the reply text now, or nil when
    /// the new binary will answer once it runs.
    public var onLiveUpdate: ((_ conn: XSConnectionID, _ requestID: UInt32, _ binary: String, _ force: Bool, _ timeout: Int) -> String?)?
    /// The binary named by `live-update -f`.
    public internal(set) var liveUpdateBinary: String?
    /// Whether a domain exists (xenstored asks the hypervisor): permission entries naming a domain
    /// that does not exist are ignored. Unset: every domain is taken to exist.
    public var domainExists: ((_ domid: UInt16) -> Bool)?

    // MARK: State

    /// Every node, by absolute path (and the special `@…` nodes).
    var nodes: [String: Node] = [:]
    /// Paths of the nodes each domain owns, so releasing a domain does not walk the whole tree.
    var ownedNodes: [UInt16: Set<String>] = [:]
    /// xenstored's global generation count: incremented before every copy to a node or transaction.
    var generation: UInt64 = 0
    var domains: [UInt16: DomainState] = [:]
    var connections: [XSConnectionID: Connection] = [:]
    var nextConnectionSeq = 0
    var watches: [Int: Watch] = [:]
    /// Watch ids by the watched (canonical) path, so firing is O(path depth).
    var watchIndex: [String: [Int]] = [:]
    var nextWatchID = 0
    /// Messages produced by the operation in progress.
    var outbox: [(XSConnectionID, XSMessage)] = []
    var outboxEvents: Set<EventKey> = []
    /// CONTROL `log`: tracing on/off and xenstored's trace switches.
    var logEnabled = false
    var traceSwitches: [(name: String, on: Bool)] = [("obj", true), ("io", true), ("wrl", false), ("acc", false), ("tdb", false)]

    public init(quota: XSQuota = XSQuota()) {
        self.quota = quota
        domains[0] = DomainState(generation: 0)
        // setup_structure(): the same initial nodes, all owned by dom0 with "n0".
        let perms = [PermEntry(domid: 0, bits: 0)]
        for (name, children) in [("/", ["tool"]), ("/tool", ["xenstored"]), ("/tool/xenstored", []),
                                 ("@releaseDomain", []), ("@introduceDomain", [])] {
            generation += 1
            var node = Node(value: [], perms: perms, generation: generation)
            for c in children { node.addChild(c) }
            globalPut(name, node)
        }
        domains[0]!.acc[AccItem.nodes.rawValue] = 5
    }

    // MARK: Connections

    /// A new connection whose peer is `domid` (0 for the privileged dom0 socket clients).
    public func connect(_ id: XSConnectionID, domid: UInt16) {
        if connections[id] != nil { disconnect(id) }
        nextConnectionSeq += 1
        connections[id] = Connection(id: id, seq: nextConnectionSeq, domid: domid)
        allocDomain(domid)
    }

    /// Connection gone: its watches removed, its open transactions aborted. Returns nothing to send.
    public func disconnect(_ id: XSConnectionID) {
        guard let conn = connections[id] else { return }
        deleteAllWatches(conn)
        deleteAllTransactions(conn)
        connections[id] = nil
    }

    /// The domid of a connection's peer, nil for an unknown connection.
    public func domid(of id: XSConnectionID) -> UInt16? { connections[id]?.domid }

    // MARK: Toolstack interface (dom0, no connection, no transaction)

    /// Writes `value` at `path` like XS_WRITE from dom0, creating missing parents; `perms`, when
    /// given, then replace the node's permissions. Returns the watch events to send.
    public func write(_ path: String, _ value: [UInt8], perms: [XSPermission]? = nil) throws(XSError) -> [(XSConnectionID, XSMessage)] {
        try collecting { () throws(XSError) in
            let ctx = toolstackContext()
            try doWrite(ctx, path: path, value: value)
            if let perms { try doSetPerms(ctx, path: path, perms: perms.map(PermEntry.init)) }
        }
    }

    /// XS_MKDIR from dom0 (no error if it exists); `perms`, when given, then replace the node's.
    public func mkdir(_ path: String, perms: [XSPermission]? = nil) throws(XSError) -> [(XSConnectionID, XSMessage)] {
        try collecting { () throws(XSError) in
            let ctx = toolstackContext()
            try doMkdir(ctx, path: path)
            if let perms { try doSetPerms(ctx, path: path, perms: perms.map(PermEntry.init)) }
        }
    }

    /// The value at `path` (XS_READ from dom0).
    public func read(_ path: String) throws(XSError) -> [UInt8] {
        let ctx = toolstackContext()
        return try getNode(ctx, path, perm: PermBits.read, allowSpecial: false).1.orThrow(.ENOENT).value
    }

    /// The children of `path`, in xenstored's order (XS_DIRECTORY from dom0).
    public func directory(_ path: String) throws(XSError) -> [String] {
        let ctx = toolstackContext()
        return try getNode(ctx, path, perm: PermBits.read, allowSpecial: false).1.orThrow(.ENOENT).children
    }

    /// The permissions of `path` (XS_GET_PERMS from dom0; special `@…` nodes allowed).
    public func permissions(_ path: String) throws(XSError) -> [XSPermission] {
        let ctx = toolstackContext()
        return try getNode(ctx, path, perm: PermBits.read, allowSpecial: true).1.orThrow(.ENOENT).perms.map(\.permission)
    }

    /// XS_RM from dom0: removes `path` and everything below it. Removing a missing node whose
    /// parent exists succeeds; removing "/" is EINVAL.
    public func rm(_ path: String) throws(XSError) -> [(XSConnectionID, XSMessage)] {
        try collecting { () throws(XSError) in try doRm(toolstackContext(), path: path) }
    }

    /// XS_SET_PERMS from dom0 (special `@…` nodes allowed).
    public func setPermissions(_ path: String, _ perms: [XSPermission]) throws(XSError) -> [(XSConnectionID, XSMessage)] {
        try collecting { () throws(XSError) in try doSetPerms(toolstackContext(), path: path, perms: perms.map(PermEntry.init)) }
    }

    /// Marks `domid` introduced and fires @introduceDomain (not for dom0, not when already introduced).
    public func introduceDomain(_ domid: UInt16) -> [(XSConnectionID, XSMessage)] {
        collecting { introduce(domid) }
    }

    /// The domain is gone: its connections lose their watches and transactions, the nodes it owns
    /// are removed (firing watches), its accounting and SET_TARGET links are forgotten, and
    /// @releaseDomain fires if it had been introduced.
    public func releaseDomain(_ domid: UInt16) -> [(XSConnectionID, XSMessage)] {
        collecting { release(domid) }
    }

    /// Fires @releaseDomain without releasing anything, as xenstored does when it notices that a
    /// domain has shut down.
    public func domainShutdown() -> [(XSConnectionID, XSMessage)] {
        collecting { fireSpecialWatches("@releaseDomain") }
    }

    public func isIntroduced(_ domid: UInt16) -> Bool { domains[domid]?.introduced ?? false }

    /// Number of nodes `domid` owns as accounted (for tests and the CONTROL `quota` report).
    public func nodeCount(of domid: UInt16) -> Int { domains[domid]?.acc[AccItem.nodes.rawValue] ?? 0 }

    /// Total number of nodes, the special ones included.
    public var totalNodes: Int { nodes.count }

    // MARK: Output

    /// Runs `body` with a fresh outbox and returns what it produced.
    func collecting<E: Error>(_ body: () throws(E) -> Void) throws(E) -> [(XSConnectionID, XSMessage)] {
        let savedOutbox = outbox, savedEvents = outboxEvents
        outbox = []
        outboxEvents = []
        defer { outbox = savedOutbox; outboxEvents = savedEvents }
        try body()
        return outbox
    }

    struct EventKey: Hashable {
        var conn: XSConnectionID
        var payload: [UInt8]
    }

    /// Queues a watch event, dropping one identical to an event already queued (send_event).
    func sendEvent(_ conn: Connection, path: String, token: [UInt8]) {
        var payload = Array(path.utf8)
        payload.append(0)
        payload += token
        payload.append(0)
        if payload.count > XenStoreWire.payloadMax { return }
        if !path.hasPrefix("@") {
            guard outboxEvents.insert(EventKey(conn: conn.id, payload: payload)).inserted else { return }
        }
        outbox.append((conn.id, XSMessage(.watchEvent, payload: payload)))
        trace(conn, "OUT", XSMessage(.watchEvent, payload: payload))
    }

    func trace(_ conn: Connection, _ what: String, _ msg: XSMessage) {
        guard logEnabled, traceSwitches[1].on, let logSink else { return }
        let type = msg.type?.xenName ?? "**UNKNOWN**"
        let body = String(decoding: msg.payload.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
        logSink("io: \(what) conn \(conn.id) (d\(conn.domid)) \(type) (\(body))")
    }
}

// MARK: - Model types

/// One node as xenstored stores it.
struct Node: Codable, Equatable {
    var value: [UInt8]
    var perms: [PermEntry]
    var children: [String] = []
    /// Bytes of the NUL-separated children list (xenstored's `childlen`).
    var childLen = 0
    var generation: UInt64

    init(value: [UInt8], perms: [PermEntry], generation: UInt64) {
        self.value = value
        self.perms = perms
        self.generation = generation
    }

    var owner: UInt16 { perms[0].domid }

    /// What the node-size quota counts: header, permissions, value and children.
    var accountedSize: Int { 16 + 8 * perms.count + value.count + childLen }

    mutating func addChild(_ name: String) {
        children.append(name)
        childLen += name.utf8.count + 1
    }

    mutating func removeChild(_ name: String) {
        guard let i = children.firstIndex(of: name) else { return }
        children.remove(at: i)
        childLen -= name.utf8.count + 1
    }

    /// The children as xenstored sends them: each name NUL-terminated.
    var childBytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(childLen)
        for c in children { out += c.utf8; out.append(0) }
        return out
    }
}

/// xenstored's `struct domain` as far as the database needs it.
struct DomainState: Codable, Equatable {
    /// Generation count when the domain became known: permission entries for it on older nodes
    /// are ignored (they were meant for an earlier domain with the same domid).
    var generation: UInt64
    var introduced = false
    /// SET_TARGET: this domain may act as the owner of `target`'s nodes.
    var target: UInt16?
    var acc = [Int](repeating: 0, count: AccItem.allCases.count)
    var max = [Int](repeating: 0, count: AccItem.allCases.count)
}

final class Connection {
    let id: XSConnectionID
    /// Creation order: events go out connection by connection in this order, as in xenstored.
    let seq: Int
    let domid: UInt16
    var watchIDs: [Int] = []
    var transactions: [UInt32: Transaction] = [:]
    var nextTransactionID: UInt32 = 0

    init(id: XSConnectionID, seq: Int, domid: UInt16) {
        self.id = id
        self.seq = seq
        self.domid = domid
    }
}

struct Watch: Codable, Equatable {
    let conn: XSConnectionID
    /// Canonical path (absolute or `@…`).
    let path: String
    let token: [UInt8]
    /// Characters to cut from event paths for a watch registered with a relative path.
    let prefixLen: Int
}

/// The connection, domain and transaction a request acts for.
struct Context {
    let domid: UInt16
    let conn: Connection?
    let tx: Transaction?
    let target: UInt16?

    var unprivileged: Bool { domid != 0 }
}

extension Optional {
    func orThrow(_ e: XSError) throws(XSError) -> Wrapped {
        guard let v = self else { throw e }
        return v
    }
}

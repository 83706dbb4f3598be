import ProcvisorABI

/// The whole database as plain values, for a live update of the daemon that serves it
/// (xenstored's live update carries the same: nodes, connections, watches, transactions and
/// accounting). `XenStoreEngine(snapshot:)` rebuilds an engine that answers every connection
/// exactly as this one would have: watches keep their tokens, open transactions their ids and
/// the nodes they read or changed, so a commit after the update succeeds or fails as it would
/// have before it.
public struct XenStoreSnapshot: Codable, Equatable, Sendable {
    struct NodeRecord: Codable, Equatable {
        var path: String
        var node: Node
    }

    struct TransactionRecord: Codable, Equatable {
        var id: UInt32
        var generation: UInt64
        var accessed: [String: Accessed]
        var order: [String]
        var fail: Bool
        var nodeCreated: Bool
        var nodeDelta: [UInt16: Int]
    }

    struct ConnectionRecord: Codable, Equatable {
        var id: XSConnectionID
        var seq: Int
        var domid: UInt16
        var watchIDs: [Int]
        var transactions: [TransactionRecord]
        var nextTransactionID: UInt32
    }

    struct WatchRecord: Codable, Equatable {
        var id: Int
        var watch: Watch
    }

    var nodes: [NodeRecord]
    var generation: UInt64
    var domains: [UInt16: DomainState]
    var connections: [ConnectionRecord]
    var nextConnectionSeq: Int
    var watches: [WatchRecord]
    var nextWatchID: Int
    var logEnabled: Bool
    var traceSwitches: [String: Bool]
    var quota: XSQuota

    /// Connections the snapshot holds, for the server to check against its own.
    public var connectionIDs: [XSConnectionID] { connections.map(\.id) }
}


extension Node {
    private enum CodingKeys: String, CodingKey { case value, perms, children, childLen, generation }

    // Decoded from another process's state: the children list's length is checked against it.
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(value: try c.decode([UInt8].self, forKey: .value), perms: try c.decode([PermEntry].self, forKey: .perms),
                  generation: try c.decode(UInt64.self, forKey: .generation))
        for name in try c.decode([String].self, forKey: .children) { addChild(name) }
        guard childLen == (try c.decode(Int.self, forKey: .childLen)) else {
            throw DecodingError.dataCorruptedError(forKey: .childLen, in: c, debugDescription: "children length disagrees with the children")
        }
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(value, forKey: .value)
        try c.encode(perms, forKey: .perms)
        try c.encode(children, forKey: .children)
        try c.encode(childLen, forKey: .childLen)
        try c.encode(generation, forKey: .generation)
    }
}

public enum XenStoreSnapshotError: Error, CustomStringConvertible {
    case inconsistent(String)
    public var description: String {
        switch self {
        case let .inconsistent(why): return "xenstore snapshot is inconsistent: \(why)"
        }
    }
}

extension XenStoreEngine {
    /// Everything the engine holds.
    public func snapshot() -> XenStoreSnapshot {
        XenStoreSnapshot(
            nodes: nodes.map { .init(path: $0.key, node: $0.value) }.sorted { $0.path < $1.path },
            generation: generation,
            domains: domains,
            connections: connections.values.sorted { $0.seq < $1.seq }.map { c in
                .init(id: c.id, seq: c.seq, domid: c.domid, watchIDs: c.watchIDs,
                      transactions: c.transactions.values.sorted { $0.id < $1.id }.map { t in
                          .init(id: t.id, generation: t.generation, accessed: t.accessed, order: t.order, fail: t.fail,
                                nodeCreated: t.nodeCreated, nodeDelta: t.nodeDelta)
                      },
                      nextTransactionID: c.nextTransactionID)
            },
            nextConnectionSeq: nextConnectionSeq,
            watches: watches.map { .init(id: $0.key, watch: $0.value) }.sorted { $0.id < $1.id },
            nextWatchID: nextWatchID,
            logEnabled: logEnabled,
            traceSwitches: Dictionary(traceSwitches.map { ($0.name, $0.on) }, uniquingKeysWith: { a, _ in a }),
            quota: quota)
    }

    /// An engine holding what `snapshot` holds. The snapshot comes from another process (a
    /// file descriptor handed over an exec): its cross references are checked, not trusted.
    public convenience init(snapshot s: XenStoreSnapshot) throws {
        self.init(quota: s.quota)
        nodes = [:]
        ownedNodes = [:]
        for r in s.nodes {
            guard !r.node.perms.isEmpty else { throw XenStoreSnapshotError.inconsistent("node \(r.path) has no owner") }
            nodes[r.path] = r.node
            ownedNodes[r.node.owner, default: []].insert(r.path)
        }
        for r in s.nodes {
            for c in r.node.children where nodes[r.path == "/" ? "/" + c : r.path + "/" + c] == nil {
                throw XenStoreSnapshotError.inconsistent("node \(r.path) names a child \(c) that is not there")
            }
            if r.path.hasPrefix("/"), r.path != "/" {
                let parent = r.path.lastIndex(of: "/").map { $0 == r.path.startIndex ? "/" : String(r.path[..<$0]) } ?? "/"
                guard nodes[parent] != nil else { throw XenStoreSnapshotError.inconsistent("node \(r.path) has no parent") }
            }
        }
        let items = AccItem.allCases.count
        for (d, st) in s.domains where st.acc.count != items || st.max.count != items {
            throw XenStoreSnapshotError.inconsistent("dom\(d)'s accounting has \(st.acc.count)/\(st.max.count) entries, not \(items)")
        }
        guard nodes["/"] != nil else { throw XenStoreSnapshotError.inconsistent("no root node") }
        generation = s.generation
        domains = s.domains
        if domains[0] == nil { domains[0] = DomainState(generation: 0) }
        connections = [:]
        for c in s.connections {
            guard connections[c.id] == nil else { throw XenStoreSnapshotError.inconsistent("connection \(c.id) appears twice") }
            let conn = Connection(id: c.id, seq: c.seq, domid: c.domid)
            conn.watchIDs = c.watchIDs
            conn.nextTransactionID = c.nextTransactionID
            guard c.seq <= s.nextConnectionSeq else { throw XenStoreSnapshotError.inconsistent("connection \(c.id) is newer than the sequence") }
            for t in c.transactions {
                guard t.order.allSatisfy({ t.accessed[$0] != nil }) else {
                    throw XenStoreSnapshotError.inconsistent("transaction \(t.id) of connection \(c.id) orders a node it never accessed")
                }
                guard t.accessed.values.allSatisfy({ $0.node.map { !$0.perms.isEmpty } ?? true }) else {
                    throw XenStoreSnapshotError.inconsistent("transaction \(t.id) of connection \(c.id) holds a node without an owner")
                }
                let tx = Transaction(id: t.id, generation: t.generation)
                tx.accessed = t.accessed
                tx.order = t.order
                tx.fail = t.fail
                tx.nodeCreated = t.nodeCreated
                tx.nodeDelta = t.nodeDelta
                conn.transactions[t.id] = tx
            }
            connections[c.id] = conn
        }
        nextConnectionSeq = s.nextConnectionSeq
        watches = [:]
        watchIndex = [:]
        for w in s.watches {
            guard let conn = connections[w.watch.conn], conn.watchIDs.contains(w.id) else {
                throw XenStoreSnapshotError.inconsistent("watch \(w.id) belongs to no connection")
            }
            guard w.id <= s.nextWatchID, w.watch.prefixLen >= 0 else { throw XenStoreSnapshotError.inconsistent("watch \(w.id) is out of range") }
            watches[w.id] = w.watch
            watchIndex[w.watch.path, default: []].append(w.id)
        }
        for c in connections.values where c.watchIDs.contains(where: { watches[$0] == nil }) {
            throw XenStoreSnapshotError.inconsistent("connection \(c.id) lists a watch that is not there")
        }
        nextWatchID = s.nextWatchID
        logEnabled = s.logEnabled
        for i in traceSwitches.indices { traceSwitches[i].on = s.traceSwitches[traceSwitches[i].name] ?? traceSwitches[i].on }
    }
}

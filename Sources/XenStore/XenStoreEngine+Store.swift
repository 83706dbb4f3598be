import ProcvisorABI

/// xenstored's NO_GENERATION: the node did not exist when the transaction looked.
let noGeneration = UInt64.max

extension XenStoreEngine {
    // MARK: Contexts and domains

    func toolstackContext() -> Context { Context(domid: 0, conn: nil, tx: nil, target: nil) }

    func context(_ conn: Connection, tx: Transaction?) -> Context {
        Context(domid: conn.domid, conn: conn, tx: tx, target: domains[conn.domid]?.target)
    }

    @discardableResult
    func allocDomain(_ domid: UInt16) -> Bool {
        if domains[domid] != nil { return true }
        if let domainExists, !domainExists(domid) { return false }
        domains[domid] = DomainState(generation: generation)
        return true
    }

    /// domain_max_chk(): true when an unprivileged context exceeds the quota; records the maximum.
    func maxCheck(_ ctx: Context, _ item: AccItem, _ value: Int) -> Bool {
        guard ctx.conn != nil else { return false }
        if ctx.unprivileged && value > quota[item] { return true }
        if domains[ctx.domid] != nil, value > domains[ctx.domid]!.max[item.rawValue] {
            domains[ctx.domid]!.max[item.rawValue] = value
        }
        return false
    }

    func accAdd(_ domid: UInt16, _ item: AccItem, _ delta: Int) {
        if domains[domid] == nil { allocDomain(domid) }
        guard domains[domid] != nil else { return }
        let v = Swift.max(0, domains[domid]!.acc[item.rawValue] + delta)
        domains[domid]!.acc[item.rawValue] = v
        if v > domains[domid]!.max[item.rawValue] { domains[domid]!.max[item.rawValue] = v }
    }

    /// domain_nbentry(): nodes the requester owns, counting its transaction's changes; 0 if privileged.
    func nodeEntries(_ ctx: Context) -> Int {
        guard ctx.unprivileged else { return 0 }
        return (domains[ctx.domid]?.acc[AccItem.nodes.rawValue] ?? 0) + (ctx.tx?.nodeDelta[ctx.domid] ?? 0)
    }

    func nodeEntriesAdd(_ ctx: Context, owner: UInt16, _ delta: Int) {
        if let tx = ctx.tx {
            tx.nodeDelta[owner, default: 0] += delta
        } else {
            accAdd(owner, .nodes, delta)
        }
    }

    // MARK: Paths

    func implicitPath(_ domid: UInt16) -> String { "/local/domain/\(domid)" }

    /// xs_wire.h's XENSTORE_ABS_PATH_MAX and XENSTORE_REL_PATH_MAX.
    static let absolutePathMax = 3072
    static let relativePathMax = 2048

    /// canonicalize(): checks characters, makes a relative path absolute, refuses trailing or double
    /// slashes and (for unprivileged domains) paths over the path-max quota.
    func canonicalize(_ ctx: Context, _ raw: String?, allowSpecial: Bool) throws(XSError) -> String {
        guard let raw, raw.utf8.allSatisfy(isValidNodeChar) else { throw .EINVAL }
        let first = raw.utf8.first
        if first == UInt8(ascii: "@") && !allowSpecial { throw .EINVAL }
        // docs/misc/xenstore.txt: an absolute path of at most XENSTORE_ABS_PATH_MAX (3072) bytes, a
        // relative one (and a special @ name) of at most XENSTORE_REL_PATH_MAX (2048), for every
        // connection; unprivileged ones are held to the path-max quota below as well.
        let absolute = first == UInt8(ascii: "/")
        if raw.utf8.count > (absolute ? Self.absolutePathMax : Self.relativePathMax) { throw .EINVAL }
        let name = (absolute || first == UInt8(ascii: "@")) ? raw : implicitPath(ctx.domid) + "/" + raw
        let bytes = Array(name.utf8)
        if bytes.count > 1 && bytes.last == UInt8(ascii: "/") { throw .EINVAL }
        for i in 1..<Swift.max(bytes.count, 1) where bytes[i] == UInt8(ascii: "/") && bytes[i - 1] == UInt8(ascii: "/") {
            throw .EINVAL
        }
        if maxCheck(ctx, .pathMax, bytes.count - localDomainOffset(bytes)) { throw .EINVAL }
        return name
    }

    /// Length of a leading `/local/domain/<up to 5 digits>/` (sscanf "%5u/%n"), else 0.
    func localDomainOffset(_ bytes: [UInt8]) -> Int {
        let prefix = Array("/local/domain/".utf8)
        guard bytes.count > prefix.count, bytes[..<prefix.count].elementsEqual(prefix) else { return 0 }
        var i = prefix.count
        while i < bytes.count, i - prefix.count < 5, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
        guard i > prefix.count, i < bytes.count, bytes[i] == UInt8(ascii: "/") else { return 0 }
        return i + 1
    }

    // MARK: Node access

    /// The node as the context sees it (its transaction's copy if the transaction touched it),
    /// with permissions for vanished domains marked ignored. In a transaction the access is
    /// recorded with the generation seen, for the conflict check at commit.
    func fetch(_ name: String, _ ctx: Context) throws(XSError) -> Node? {
        let node: Node?
        if let tx = ctx.tx {
            if let a = tx.accessed[name] {
                node = a.node
            } else {
                if maxCheck(ctx, .transactionNodes, tx.order.count + 1) {
                    tx.fail = true
                    throw .ENOSPC
                }
                let g = nodes[name]
                tx.record(name, Accessed(generation: g?.generation ?? noGeneration, checkGen: true, node: g, origPerms: g?.perms))
                node = g
            }
        } else {
            node = nodes[name]
        }
        return node.map(adjusted)
    }

    /// domain_adjust_node_perms(): entries after the owner naming a domain that is gone, or that
    /// appeared after the node was written, no longer match.
    func adjusted(_ node: Node) -> Node {
        var node = node
        for i in node.perms.indices.dropFirst() where !node.perms[i].ignored {
            if let d = domains[node.perms[i].domid], d.generation <= node.generation { continue }
            node.perms[i].bits |= PermBits.ignore
        }
        return node
    }

    /// Stores a node written by the context (its transaction's copy, or the database), with a new
    /// generation count.
    func store(_ name: String, _ node: Node, _ ctx: Context) {
        var node = node
        generation += 1
        node.generation = generation
        if let tx = ctx.tx {
            tx.modify(name, node: node)
        } else {
            globalPut(name, node)
        }
    }

    func delete(_ name: String, _ ctx: Context) {
        generation += 1
        if let tx = ctx.tx {
            tx.modify(name, node: nil)
        } else {
            globalRemove(name)
        }
    }

    func globalPut(_ name: String, _ node: Node) {
        let old = nodes.updateValue(node, forKey: name)
        if old?.owner != node.owner {
            if let old { ownedNodes[old.owner]?.remove(name) }
            ownedNodes[node.owner, default: []].insert(name)
        }
    }

    func globalRemove(_ name: String) {
        if let old = nodes.removeValue(forKey: name) { ownedNodes[old.owner]?.remove(name) }
    }

    // MARK: Permissions

    /// perm_for_conn(): owners, their targets' controllers and dom0 get everything; otherwise the
    /// first matching entry after the owner, else the owner entry's access for everyone.
    func permFor(domid: UInt16, target: UInt16?, _ perms: [PermEntry]) -> UInt8 {
        let all = PermBits.read | PermBits.write | PermBits.owner
        if domid == 0 || perms[0].domid == domid || (target != nil && perms[0].domid == target) { return all }
        for e in perms.dropFirst() where !e.ignored && (e.domid == domid || (target != nil && e.domid == target)) {
            return e.bits & all
        }
        return perms[0].bits & all
    }

    func permFor(_ ctx: Context, _ perms: [PermEntry]) -> UInt8 {
        permFor(domid: ctx.domid, target: ctx.target, perms)
    }

    /// get_node(): canonical name and node, EACCES when the node (or, for a missing node, its nearest
    /// existing ancestor) denies `perm`. A nil node means ENOENT that the caller may act on.
    func getNode(_ ctx: Context, _ raw: String?, perm: UInt8, allowSpecial: Bool) throws(XSError) -> (String, Node?) {
        let name = try canonicalize(ctx, raw, allowSpecial: allowSpecial)
        let node = try fetch(name, ctx)
        if let node {
            if permFor(ctx, node.perms) & perm != perm {
                _ = try askParents(ctx, name)
                throw .EACCES
            }
            return (name, node)
        }
        // errno_from_parents(): only say ENOENT if the nearest existing ancestor grants the access.
        if try askParents(ctx, name) & perm == 0 { throw .EACCES }
        return (name, nil)
    }

    /// ask_parents(): the context's access to the nearest existing ancestor.
    func askParents(_ ctx: Context, _ name: String) throws(XSError) -> UInt8 {
        var name = name
        repeat {
            name = parentPath(name)
            if let node = try fetch(name, ctx) { return permFor(ctx, node.perms) }
        } while name != "/"
        return 0
    }

    // MARK: Operations

    func doWrite(_ ctx: Context, path: String, value: [UInt8]) throws(XSError) {
        let (name, existing) = try getNode(ctx, path, perm: PermBits.write, allowSpecial: false)
        if var node = existing {
            node.value = value
            if maxCheck(ctx, .nodeSize, node.accountedSize) {
                ctx.tx?.fail = true
                throw .ENOSPC
            }
            store(name, node, ctx)
            fireWatches(ctx, name, node: node, exact: false, oldPerms: nil)
        } else {
            let node = try createNode(ctx, name, value: value)
            fireWatches(ctx, name, node: node, exact: false, oldPerms: nil)
        }
    }

    func doMkdir(_ ctx: Context, path: String) throws(XSError) {
        let (name, existing) = try getNode(ctx, path, perm: PermBits.write, allowSpecial: false)
        guard existing == nil else { return }
        let node = try createNode(ctx, name, value: [])
        fireWatches(ctx, name, node: node, exact: false, oldPerms: nil)
    }

    /// create_node(): creates `name` and any missing ancestors, each inheriting its parent's
    /// permissions with an unprivileged creator as owner. All or nothing.
    func createNode(_ ctx: Context, _ name: String, value: [UInt8]) throws(XSError) -> Node {
        var missing = [name]  // missing[0] is the node, then its missing ancestors upwards
        var parentName = parentPath(name)
        var parent: Node
        while true {
            if let p = try fetch(parentName, ctx) {
                parent = p
                break
            }
            if parentName == "/" { throw .ENOENT }
            missing.append(parentName)
            parentName = parentPath(parentName)
        }
        // Build top-down, then check bottom-up as xenstored writes them.
        var built: [(String, Node)] = []
        var up = parent
        var upName = parentName
        for childName in missing.reversed() {
            up.addChild(baseName(childName))
            built.append((upName, up))
            var perms = up.perms
            if ctx.unprivileged { perms[0].domid = ctx.domid }
            up = Node(value: [], perms: perms, generation: 0)
            upName = childName
        }
        up.value = value
        built.append((upName, up))
        // built[0] is the existing parent, built.last the new node.
        let entries = nodeEntries(ctx)
        for (j, (_, node)) in built.dropFirst().reversed().enumerated() {
            if ctx.unprivileged && entries + j >= quota.nodes {
                if j > 0 { ctx.tx?.fail = true }
                throw .ENOSPC
            }
            if maxCheck(ctx, .nodeSize, node.accountedSize) {
                ctx.tx?.fail = true
                throw .ENOSPC
            }
        }
        if maxCheck(ctx, .nodeSize, built[0].1.accountedSize) {
            ctx.tx?.fail = true
            throw .ENOSPC
        }
        ctx.tx?.nodeCreated = true
        for (n, node) in built.reversed() { store(n, node, ctx) }
        for (_, node) in built.dropFirst() { nodeEntriesAdd(ctx, owner: node.owner, 1) }
        return built.last!.1
    }

    func doRm(_ ctx: Context, path: String) throws(XSError) {
        let (name, existing) = try getNode(ctx, path, perm: PermBits.write, allowSpecial: false)
        guard existing != nil else {
            // Removing a missing node is fine if its parent exists.
            if try fetch(parentPath(name), ctx) != nil { return }
            throw .ENOENT
        }
        if name == "/" { throw .EINVAL }
        try rmNode(ctx, name)
    }

    /// rm_node(): removes `name` and its subtree, children first, firing watches for each node
    /// (watches on the removed node and above for `name`, exact watches for the descendants).
    func rmNode(_ ctx: Context, _ name: String) throws(XSError) {
        let pName = parentPath(name)
        guard var parent = try fetch(pName, ctx) else { throw .EINVAL }
        // Post-order walk, reading every node first (in a transaction this records them).
        var order: [(String, Node)] = []
        var stack: [(String, Node, Int)] = []
        if let root = try fetch(name, ctx) { stack.append((name, root, 0)) }
        while let (n, node, i) = stack.last {
            if i < node.children.count {
                stack[stack.count - 1].2 += 1
                let child = childPath(n, node.children[i])
                if let c = try fetch(child, ctx) { stack.append((child, c, 0)) }
            } else {
                order.append((n, node))
                stack.removeLast()
            }
        }
        for (n, node) in order {
            nodeEntriesAdd(ctx, owner: node.owner, -1)
            // Fire while the node's permissions are still known.
            fireWatches(ctx, n, node: node, exact: n != name, oldPerms: nil)
            delete(n, ctx)
        }
        parent.removeChild(baseName(name))
        store(pName, parent, ctx)
    }

    func doSetPerms(_ ctx: Context, path: String, perms: [PermEntry]) throws(XSError) {
        guard !perms.isEmpty else { throw .EINVAL }
        if maxCheck(ctx, .nodePermissions, perms.count) { throw .ENOSPC }
        // domain_alloc_permrefs(): entries naming domains that do not exist are ignored.
        var perms = perms
        for i in perms.indices where !allocDomain(perms[i].domid) { perms[i].bits |= PermBits.ignore }
        if perms[0].ignored { throw .ENOENT }
        let (name, found) = try getNode(ctx, path, perm: PermBits.write | PermBits.owner, allowSpecial: true)
        guard var node = found else { throw .ENOENT }
        if ctx.unprivileged && perms[0].domid != node.owner { throw .EPERM }
        let oldPerms = node.perms
        node.perms = perms
        if maxCheck(ctx, .nodeSize, node.accountedSize) {
            ctx.tx?.fail = true
            throw .ENOSPC
        }
        nodeEntriesAdd(ctx, owner: oldPerms[0].domid, -1)
        nodeEntriesAdd(ctx, owner: node.owner, 1)
        store(name, node, ctx)
        fireWatches(ctx, name, node: node, exact: false, oldPerms: oldPerms)
    }

    // MARK: Watches

    /// fire_watches(): in a transaction, remember the event for commit; otherwise send it to every
    /// watch on `name` (exact) or on `name` or an ancestor, if the watcher may read the node, its
    /// parent or (for a permission change) the node under its old permissions.
    func fireWatches(_ ctx: Context?, _ name: String, node: Node?, exact: Bool, oldPerms: [PermEntry]?) {
        if let tx = ctx?.tx {
            tx.queueWatch(name, exact: exact)
            return
        }
        var ids: [Int] = []
        if exact {
            ids = watchIndex[name] ?? []
        } else {
            for p in pathAndAncestors(name) { if let w = watchIndex[p] { ids += w } }
        }
        guard !ids.isEmpty else { return }
        var matched: [(Connection, Int, Watch)] = []
        for id in ids {
            guard let w = watches[id], let c = connections[w.conn] else { continue }
            matched.append((c, id, w))
        }
        matched.sort { ($0.0.seq, $0.1) < ($1.0.seq, $1.1) }
        var permitted: [XSConnectionID: Bool] = [:]
        var nodeRead: Node?? = node.map { .some($0) }
        var parentRead: Node??
        for (c, _, w) in matched {
            let ok: Bool
            if let known = permitted[c.id] {
                ok = known
            } else {
                ok = watchPermitted(c, name, node: &nodeRead, parent: &parentRead, oldPerms: oldPerms)
                permitted[c.id] = ok
            }
            guard ok else { continue }
            let path = w.prefixLen > 0 ? String(name.utf8.dropFirst(w.prefixLen))! : name
            sendEvent(c, path: path, token: w.token)
        }
    }

    func watchPermitted(_ c: Connection, _ name: String, node: inout Node??, parent: inout Node??, oldPerms: [PermEntry]?) -> Bool {
        let target = domains[c.domid]?.target
        if let oldPerms, permFor(domid: c.domid, target: target, oldPerms) & PermBits.read != 0 { return true }
        if node == nil { node = .some(nodes[name].map(adjusted)) }
        guard let n = node!, n.perms.count > 0 else { return false }
        if permFor(domid: c.domid, target: target, n.perms) & PermBits.read != 0 { return true }
        if parent == nil { parent = .some(nodes[parentPath(name)].map(adjusted)) }
        guard let p = parent! else { return false }
        return permFor(domid: c.domid, target: target, p.perms) & PermBits.read != 0
    }

    func fireSpecialWatches(_ name: String) {
        guard let node = nodes[name] else { return }
        fireWatches(nil, name, node: adjusted(node), exact: true, oldPerms: nil)
    }

    func addWatch(_ conn: Connection, path: String, token: [UInt8], relative: Bool) -> Watch {
        nextWatchID += 1
        let w = Watch(conn: conn.id, path: path, token: token,
                      prefixLen: relative ? implicitPath(conn.domid).utf8.count + 1 : 0)
        watches[nextWatchID] = w
        watchIndex[path, default: []].append(nextWatchID)
        conn.watchIDs.append(nextWatchID)
        accAdd(conn.domid, .watches, 1)
        return w
    }

    func removeWatch(_ conn: Connection, _ id: Int) {
        guard let w = watches.removeValue(forKey: id) else { return }
        watchIndex[w.path]?.removeAll { $0 == id }
        if watchIndex[w.path]?.isEmpty == true { watchIndex[w.path] = nil }
        conn.watchIDs.removeAll { $0 == id }
        accAdd(conn.domid, .watches, -1)
    }

    func deleteAllWatches(_ conn: Connection) {
        for id in conn.watchIDs { removeWatch(conn, id) }
    }

    // MARK: Transactions

    func deleteAllTransactions(_ conn: Connection) {
        for _ in conn.transactions.values { accAdd(conn.domid, .transactions, -1) }
        conn.transactions.removeAll()
    }

    /// finalize_transaction() plus the checks of do_transaction_end(): EAGAIN if a node the
    /// transaction read changed meanwhile; otherwise its changes become global and its watches fire.
    func commit(_ ctx: Context, _ tx: Transaction) throws(XSError) {
        if tx.fail { throw .ENOMEM }
        if tx.nodeCreated && ctx.unprivileged {
            for (d, delta) in tx.nodeDelta where d != 0 {
                if (domains[d]?.acc[AccItem.nodes.rawValue] ?? 0) + delta >= quota.nodes { throw .ENOSPC }
            }
        }
        for name in tx.order {
            let a = tx.accessed[name]!
            if a.checkGen && (nodes[name]?.generation ?? noGeneration) != a.generation { throw .EAGAIN }
        }
        let global = Context(domid: ctx.domid, conn: ctx.conn, tx: nil, target: ctx.target)
        for name in tx.order {
            let a = tx.accessed[name]!
            guard a.modified else { continue }
            if var node = a.node {
                generation += 1
                node.generation = generation
                globalPut(name, node)
            } else if a.generation != noGeneration {
                globalRemove(name)
            }
            if a.fireWatch {
                fireWatches(global, name, node: nil, exact: a.watchExact, oldPerms: a.origPerms)
            }
        }
        for (d, delta) in tx.nodeDelta where delta != 0 { accAdd(d, .nodes, delta) }
    }

    // MARK: Domains

    func introduce(_ domid: UInt16) {
        allocDomain(domid)
        if domains[domid] == nil { domains[domid] = DomainState(generation: generation) }
        guard !domains[domid]!.introduced else { return }
        domains[domid]!.introduced = true
        if domid != 0 { fireSpecialWatches("@introduceDomain") }
    }

    func release(_ domid: UInt16) {
        for c in connections.values where c.domid == domid {
            deleteAllWatches(c)
            deleteAllTransactions(c)
        }
        // domain_tree_remove(): shallowest first, so a removed subtree takes its descendants along.
        let owned = (ownedNodes[domid] ?? []).filter { !$0.hasPrefix("@") }
        let ordered = owned.sorted { a, b in
            let da = a.utf8.count { $0 == UInt8(ascii: "/") }, db = b.utf8.count { $0 == UInt8(ascii: "/") }
            return da != db ? da < db : a < b
        }
        let ctx = toolstackContext()
        for name in ordered where name != "/" && nodes[name]?.owner == domid {
            try? rmNode(ctx, name)
        }
        let wasIntroduced = domains[domid]?.introduced ?? false
        if domid != 0 {
            domains[domid] = nil
            ownedNodes[domid] = nil
        }
        for d in domains.keys where domains[d]!.target == domid { domains[d]!.target = nil }
        if wasIntroduced { fireSpecialWatches("@releaseDomain") }
    }
}

/// A transaction: the nodes it accessed, with the generation each had when first seen and its
/// private copy of the ones it changed. Nothing else of the tree is copied.
final class Transaction {
    let id: UInt32
    /// Global generation when it started.
    let generation: UInt64
    var accessed: [String: Accessed] = [:]
    /// First-access order: the commit applies changes and fires watches in this order.
    var order: [String] = []
    var fail = false
    var nodeCreated = false
    /// Changes to each domain's node count, applied at commit.
    var nodeDelta: [UInt16: Int] = [:]

    init(id: UInt32, generation: UInt64) {
        self.id = id
        self.generation = generation
    }

    func record(_ name: String, _ a: Accessed) {
        accessed[name] = a
        order.append(name)
    }

    /// access_node() for a write or delete.
    func modify(_ name: String, node: Node?) {
        if accessed[name] == nil {
            record(name, Accessed(generation: 0, checkGen: false, node: nil, origPerms: node?.perms))
        }
        accessed[name]!.modified = true
        accessed[name]!.node = node
    }

    /// queue_watches(): a non-exact event replaces an exact one, not the other way round.
    func queueWatch(_ name: String, exact: Bool) {
        guard accessed[name] != nil else {
            fail = true
            return
        }
        if !accessed[name]!.fireWatch {
            accessed[name]!.fireWatch = true
            accessed[name]!.watchExact = exact
        } else if !exact {
            accessed[name]!.watchExact = false
        }
    }
}

struct Accessed: Codable, Equatable {
    /// Generation when first read (noGeneration: did not exist).
    var generation: UInt64
    /// Whether commit must find the global node unchanged (first access was a read).
    var checkGen: Bool
    var modified = false
    /// The transaction's view of the node; nil when it does not exist there.
    var node: Node?
    /// Permissions before the transaction, for watch permission checks at commit.
    var origPerms: [PermEntry]?
    var fireWatch = false
    var watchExact = false
}

// MARK: - Path helpers

/// valid_chars(): `[A-Za-z0-9-/_@]`.
func isValidNodeChar(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
         UInt8(ascii: "-"), UInt8(ascii: "/"), UInt8(ascii: "_"), UInt8(ascii: "@"):
        return true
    default:
        return false
    }
}

/// get_parent(): everything before the last slash (not counting a leading one), else "/".
func parentPath(_ name: String) -> String {
    let u = name.utf8
    guard u.count > 1, let slash = u.dropFirst().lastIndex(of: UInt8(ascii: "/")) else { return "/" }
    return String(name[..<slash])
}

func baseName(_ name: String) -> String {
    guard let slash = name.utf8.lastIndex(of: UInt8(ascii: "/")) else { return name }
    return String(name[name.utf8.index(after: slash)...])
}

func childPath(_ parent: String, _ child: String) -> String {
    parent == "/" ? "/" + child : parent + "/" + child
}

/// The names whose watches a non-exact event on `name` reaches (is_child()): "/" for everything,
/// each ancestor, and the name itself.
func pathAndAncestors(_ name: String) -> [String] {
    var out = ["/"]
    let u = Array(name.utf8)
    for i in 1..<Swift.max(u.count, 1) where u[i] == UInt8(ascii: "/") {
        out.append(String(decoding: u[..<i], as: UTF8.self))
    }
    if name != "/" { out.append(name) }
    return out
}

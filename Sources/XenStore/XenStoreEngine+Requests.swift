import ProcvisorABI

/// DOMID_SELF: XS_IS_DOMAIN_INTRODUCED answers "T" for it.
let domidSelf: UInt32 = 0x7ff0

/// A request payload split as xenstored's get_strings() sees it: the NUL-terminated strings
/// (bytes after the last NUL are not a string).
struct RequestArgs {
    let payload: [UInt8]
    let strings: [ArraySlice<UInt8>]

    init(_ payload: [UInt8]) {
        self.payload = payload
        var out: [ArraySlice<UInt8>] = []
        var start = 0
        for i in payload.indices where payload[i] == 0 {
            out.append(payload[start..<i])
            start = i + 1
        }
        strings = out
    }

    /// onearg(): the payload is exactly one NUL-terminated string.
    var oneArg: String? {
        guard strings.count == 1, payload.last == 0 else { return nil }
        return String(decoding: strings[0], as: UTF8.self)
    }

    func string(_ i: Int) -> String? {
        i < strings.count ? String(decoding: strings[i], as: UTF8.self) : nil
    }

    /// The offset just past the first string.
    var afterFirst: Int { strings.isEmpty ? payload.count : strings[0].count + 1 }
}

extension XenStoreEngine {
    /// Handles one request from `id`; returns every message to send, in the order xenstored queues
    /// them: the one reply to `id` (XS_ERROR with Xen's error name on failure) and any
    /// XS_WATCH_EVENT messages the request caused, for any connection including `id`. As in
    /// xenstored, events caused by a change are queued before the reply; the event a new watch
    /// fires comes after the reply to XS_WATCH.
    public func handle(_ id: XSConnectionID, _ request: XSMessage) -> [(XSConnectionID, XSMessage)] {
        guard let conn = connections[id] else { return [] }
        return collecting {
            trace(conn, "IN", request)
            do throws(XSError) {
                try process(conn, request)
            } catch {
                reply(conn, XSMessage.error(error, replyingTo: request))
            }
        }
    }

    func reply(_ conn: Connection, _ msg: XSMessage) {
        var msg = msg
        if msg.payload.count > XenStoreWire.payloadMax {
            msg = XSMessage(.error, requestID: msg.requestID, transactionID: msg.transactionID, strings: [XSError.E2BIG.rawValue])
        }
        outbox.append((conn.id, msg))
        trace(conn, "OUT", msg)
    }

    func reply(_ conn: Connection, to request: XSMessage, _ type: XSMessageType, _ payload: [UInt8]) {
        reply(conn, XSMessage(type, requestID: request.requestID, transactionID: request.transactionID, payload: payload))
    }

    func ack(_ conn: Connection, to request: XSMessage, _ type: XSMessageType) {
        reply(conn, to: request, type, Array("OK\0".utf8))
    }

    /// process_message(): unknown type ENOSYS, privileged-only types EACCES, then the transaction.
    func process(_ conn: Connection, _ request: XSMessage) throws(XSError) {
        guard let type = request.type, type != .watchEvent, type != .error else { throw .ENOSYS }
        let privilegedOnly: Set<XSMessageType> = [.control, .introduce, .release, .isDomainIntroduced, .resume, .setTarget]
        if privilegedOnly.contains(type) && conn.domid != 0 { throw .EACCES }
        var tx: Transaction?
        if type != .watch && type != .unwatch && request.transactionID != 0 {
            tx = try conn.transactions[request.transactionID].orThrow(.ENOENT)
        }
        let ctx = context(conn, tx: tx)
        let args = RequestArgs(request.payload)

        switch type {
        case .directory:
            let (_, node) = try getNode(ctx, args.oneArg, perm: PermBits.read, allowSpecial: false)
            reply(conn, to: request, .directory, try node.orThrow(.ENOENT).childBytes)
        case .directoryPart:
            try directoryPart(ctx, conn, request, args)
        case .read:
            let (_, node) = try getNode(ctx, args.oneArg, perm: PermBits.read, allowSpecial: false)
            reply(conn, to: request, .read, try node.orThrow(.ENOENT).value)
        case .getPerms:
            let (_, node) = try getNode(ctx, args.oneArg, perm: PermBits.read, allowSpecial: true)
            var out: [UInt8] = []
            for p in try node.orThrow(.ENOENT).perms { out += p.permission.description.utf8; out.append(0) }
            reply(conn, to: request, .getPerms, out)
        case .write:
            guard let path = args.string(0) else { throw .EINVAL }
            try doWrite(ctx, path: path, value: Array(request.payload[args.afterFirst...]))
            ack(conn, to: request, .write)
        case .mkdir:
            try doMkdir(ctx, path: try args.oneArg.orThrow(.EINVAL))
            ack(conn, to: request, .mkdir)
        case .rm:
            try doRm(ctx, path: try args.oneArg.orThrow(.EINVAL))
            ack(conn, to: request, .rm)
        case .setPerms:
            try setPerms(ctx, conn, request, args)
        case .watch:
            try watch(ctx, conn, request, args)
        case .unwatch:
            try unwatch(ctx, conn, request, args)
        case .transactionStart:
            try transactionStart(ctx, conn, request)
        case .transactionEnd:
            try transactionEnd(ctx, conn, request, args)
        case .getDomainPath:
            let domid = try args.oneArg.orThrow(.EINVAL)
            reply(conn, to: request, .getDomainPath, Array("/local/domain/\(UInt32(bitPattern: cAtoi(domid.utf8)))\0".utf8))
        case .isDomainIntroduced:
            let domid = UInt32(bitPattern: cAtoi(try args.oneArg.orThrow(.EINVAL).utf8))
            // Domain 0 (the toolstack's, whose store this is) is always introduced, as dom0 is
            // from xenstored's start.
            let introduced = domid == domidSelf || domid == 0 || (domid <= UInt32(UInt16.max) && isIntroduced(UInt16(domid)))
            reply(conn, to: request, .isDomainIntroduced, Array((introduced ? "T\0" : "F\0").utf8))
        case .introduce:
            try introduceRequest(conn, request, args)
        case .release:
            let domid = try connectedDomain(args)
            if let e = onRelease?(domid) { throw e }
            release(domid)
            ack(conn, to: request, .release)
        case .resume:
            let domid = try connectedDomain(args)
            if let e = onResume?(domid) { throw e }
            ack(conn, to: request, .resume)
        case .setTarget:
            guard args.strings.count >= 2 else { throw .EINVAL }
            let domid = try introducedDomain(cAtoi(args.strings[0]))
            let tdomid = try introducedDomain(cAtoi(args.strings[1]))
            domains[domid]!.target = tdomid
            ack(conn, to: request, .setTarget)
        case .resetWatches:
            deleteAllWatches(conn)
            deleteAllTransactions(conn)
            ack(conn, to: request, .resetWatches)
        case .control:
            try control(conn, request, args)
        case .watchEvent, .error:
            throw .ENOSYS
        }
    }

    /// send_directory_part(): "<generation>\0" then as many children as fit from byte offset
    /// `off`, and an empty string once the list is complete.
    func directoryPart(_ ctx: Context, _ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard args.strings.count == 2 else { throw .EINVAL }
        let (_, found) = try getNode(ctx, args.string(0), perm: PermBits.read, allowSpecial: false)
        let node = try found.orThrow(.ENOENT)
        let off = Int(UInt32(bitPattern: cAtoi(args.strings[1])))
        var out = Array("\(node.generation)".utf8)
        out.append(0)
        let genlen = out.count
        let children = node.childBytes
        if off >= children.count {
            out.append(0)
            reply(conn, to: request, .directoryPart, out)
            return
        }
        let maxlen = XenStoreWire.payloadMax - genlen - 1
        var len = 0
        var child = off
        while true {
            var end = child
            while children[end] != 0 { end += 1 }
            let childLen = end - child
            guard len + childLen < maxlen else { break }
            len += childLen + 1
            child = end + 1
            if off + len == children.count { break }
        }
        out += children[off..<(off + len)]
        if off + len == children.count { out.append(0) }
        reply(conn, to: request, .directoryPart, out)
    }

    func setPerms(_ ctx: Context, _ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard args.strings.count >= 2 else { throw .EINVAL }
        let count = args.strings.count - 1
        if maxCheck(ctx, .nodePermissions, count) { throw .ENOSPC }
        var perms: [PermEntry] = []
        for s in args.strings[1...] {
            guard let p = XSPermission(String(decoding: s, as: UTF8.self)) else { throw .EINVAL }
            perms.append(PermEntry(p))
        }
        try doSetPerms(ctx, path: try args.string(0).orThrow(.EINVAL), perms: perms)
        ack(conn, to: request, .setPerms)
    }

    func watch(_ ctx: Context, _ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard args.strings.count == 2, let raw = args.string(0) else { throw .EINVAL }
        let relative = !raw.hasPrefix("/") && !raw.hasPrefix("@")
        let path = try canonicalize(ctx, raw, allowSpecial: true)
        let token = Array(args.strings[1])
        for id in conn.watchIDs where watches[id]!.path == path && watches[id]!.token == token { throw .EEXIST }
        if ctx.unprivileged && (domains[conn.domid]?.acc[AccItem.watches.rawValue] ?? 0) > quota.watches { throw .E2BIG }
        let w = addWatch(conn, path: path, token: token, relative: relative)
        ack(conn, to: request, .watch)
        // Fired once up front, whatever the permissions.
        sendEvent(conn, path: String(path.utf8.dropFirst(w.prefixLen))!, token: token)
    }

    func unwatch(_ ctx: Context, _ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard args.strings.count == 2 else { throw .EINVAL }
        let path = try canonicalize(ctx, args.string(0), allowSpecial: true)
        let token = Array(args.strings[1])
        guard let id = conn.watchIDs.first(where: { watches[$0]!.path == path && watches[$0]!.token == token }) else {
            throw .ENOENT
        }
        removeWatch(conn, id)
        ack(conn, to: request, .unwatch)
    }

    func transactionStart(_ ctx: Context, _ conn: Connection, _ request: XSMessage) throws(XSError) {
        if ctx.tx != nil { throw .EBUSY }
        if ctx.unprivileged && (domains[conn.domid]?.acc[AccItem.transactions.rawValue] ?? 0) > quota.transactions {
            throw .ENOSPC
        }
        generation += 1
        // Pick an unused id; 0 means "no transaction".
        var id = conn.nextTransactionID
        conn.nextTransactionID &+= 1
        while id == 0 || conn.transactions[id] != nil {
            id = conn.nextTransactionID
            conn.nextTransactionID &+= 1
        }
        conn.transactions[id] = Transaction(id: id, generation: generation)
        accAdd(conn.domid, .transactions, 1)
        reply(conn, to: request, .transactionStart, Array("\(id)\0".utf8))
    }

    func transactionEnd(_ ctx: Context, _ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard let arg = args.oneArg, arg == "T" || arg == "F" else { throw .EINVAL }
        guard let tx = ctx.tx else { throw .ENOENT }
        // The transaction ends here whatever the outcome.
        conn.transactions[tx.id] = nil
        accAdd(conn.domid, .transactions, -1)
        if arg == "T" { try commit(ctx, tx) }
        ack(conn, to: request, .transactionEnd)
    }

    /// do_introduce(): "domid\0mfn\0port\0".
    func introduceRequest(_ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard args.strings.count >= 3 else { throw .EINVAL }
        let domid = UInt32(bitPattern: cAtoi(args.strings[0]))
        let port = cAtoi(args.strings[2])
        if port <= 0 { throw .EINVAL }
        // DOMID_FIRST_RESERVED and up (DOMID_SELF, DOMID_IO, …) are never domains.
        guard domid < 0x7FF0 else { throw .EINVAL }
        let mfn = UInt64(String(decoding: args.strings[1], as: UTF8.self)) ?? 0
        if let e = onIntroduce?(UInt16(domid), mfn, UInt32(port)) { throw e }
        introduce(UInt16(domid))
        // domain_conn_reset(): the domain's connections start afresh.
        for c in connections.values where c.domid == UInt16(domid) && domid != 0 {
            deleteAllWatches(c)
            deleteAllTransactions(c)
        }
        ack(conn, to: request, .introduce)
    }

    /// onearg_domain(): dom0 is EINVAL, a domain not introduced ENOENT.
    func connectedDomain(_ args: RequestArgs) throws(XSError) -> UInt16 {
        let s = try args.oneArg.orThrow(.EINVAL)
        let domid = UInt32(bitPattern: cAtoi(s.utf8))
        if domid == 0 { throw .EINVAL }
        return try introducedDomain(Int32(bitPattern: domid))
    }

    func introducedDomain(_ raw: Int32) throws(XSError) -> UInt16 {
        let domid = UInt32(bitPattern: raw)
        guard domid <= UInt32(UInt16.max), isIntroduced(UInt16(domid)) else { throw .ENOENT }
        return UInt16(domid)
    }
}

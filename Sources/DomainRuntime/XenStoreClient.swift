import LinuxHost
import ProcvisorABI

/// An error XenStore answered with (`XS_ERROR`), or the ring failing underneath.
public enum XenStoreError: Error, Equatable, CustomStringConvertible {
    /// Xen's error name: ENOENT, EACCES, EAGAIN, EQUOTA …
    case server(String, operation: String, path: String)
    /// The server disconnected the ring (its `error` field) or the ring is unusable.
    case disconnected(String)
    /// A reply that does not parse as the request type's reply.
    case badReply(String)

    public var description: String {
        switch self {
        case let .server(name, op, path): return "\(op) \(path): \(name)"
        case let .disconnected(why): return "xenstore: \(why)"
        case let .badReply(why): return "xenstore: bad reply: \(why)"
        }
    }

    /// The error name for `.server` errors.
    public var name: String? { if case let .server(n, _, _) = self { return n } else { return nil } }
}

/// A node's permissions as `XS_GET_PERMS` returns them: the first entry is the owner and the
/// default for domains not listed.
public struct XenStorePermission: Equatable, CustomStringConvertible {
    public enum Access: Character { case none = "n", read = "r", write = "w", both = "b" }
    public var domid: UInt16
    public var access: Access

    public init(domid: UInt16, access: Access) {
        self.domid = domid
        self.access = access
    }

    public init?(_ text: String) {
        guard let c = text.first, let a = Access(rawValue: c), let d = UInt16(text.dropFirst()) else { return nil }
        domid = d
        access = a
    }

    public var description: String { "\(access.rawValue)\(domid)" }
}

/// XenStore seen from inside a domain, over its `xenstore_domain_interface` ring as a Linux
/// guest's xenbus does: requests go on the request ring and the store port is kicked; a reader
/// thread takes replies and watch events off the response ring; watch callbacks run on a
/// separate thread (as Linux's xenwatch), so they may use the store themselves.
public final class XenStoreClient {
    public typealias Transaction = UInt32

    private let page: SharedMapping
    private let kick: () -> Void
    private let mutex = Lock()
    private let replyCond = Condition()
    private let watchCond = Condition()
    private let writerMutex = Lock()
    private var nextRequestID: UInt32 = 1
    private var replies: [UInt32: XSMessage] = [:]
    private var watches: [String: (String) -> Void] = [:]
    private enum WatchWork {
        case event(path: String, token: String)
        case task(() -> Void)
    }
    private var watchQueue: [WatchWork] = []
    private var failure: String?
    private var started = false

    init(page: SharedMapping, kick: @escaping () -> Void) {
        self.page = page
        self.kick = kick
    }

    /// The raw `xenstore_domain_interface` page and the kick, for tests that play a hostile guest.
    @_spi(Testing) public var ringPage: UnsafeMutableRawPointer { page.base }
    @_spi(Testing) public func kickServer() { kick() }
    /// Stops (or resumes) taking replies off the response ring: a guest that does not read.
    @_spi(Testing) public func pauseReader(_ paused: Bool) { SharedAtomic.store(&readerPaused, paused ? 1 : 0) }
    private var readerPaused: UInt32 = 0

    private func word(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (page.base + offset).assumingMemoryBound(to: UInt32.self)
    }

    private func startThreads() {
        mutex.lock()
        defer { mutex.unlock() }
        guard !started else { return }
        started = true
        VCPUThread.start(index: -2) { [self] _ in readLoop() }
        VCPUThread.start(index: -3) { [self] _ in watchLoop() }
    }

    // MARK: operations

    /// `XS_READ`: the node's value.
    public func read(_ path: String, transaction: Transaction = 0) throws -> String {
        String(decoding: try readBytes(path, transaction: transaction), as: UTF8.self)
    }

    public func readBytes(_ path: String, transaction: Transaction = 0) throws -> [UInt8] {
        try request(.read, [path], transaction: transaction, path: path).payload
    }

    /// `XS_WRITE`: creates the node (and missing parents) or replaces its value.
    public func write(_ path: String, _ value: String, transaction: Transaction = 0) throws {
        try write(path, bytes: Array(value.utf8), transaction: transaction)
    }

    public func write(_ path: String, bytes: [UInt8], transaction: Transaction = 0) throws {
        var p = Array(path.utf8)
        p.append(0)
        p += bytes
        _ = try request(.write, payload: p, transaction: transaction, path: path)
    }

    /// `XS_MKDIR` (no error when the node exists).
    public func mkdir(_ path: String, transaction: Transaction = 0) throws {
        _ = try request(.mkdir, [path], transaction: transaction, path: path)
    }

    /// `XS_RM`: removes the node and everything under it.
    public func rm(_ path: String, transaction: Transaction = 0) throws {
        _ = try request(.rm, [path], transaction: transaction, path: path)
    }

    /// `XS_DIRECTORY`: the names of the node's children.
    public func directory(_ path: String, transaction: Transaction = 0) throws -> [String] {
        let r = try request(.directory, [path], transaction: transaction, path: path)
        return r.payloadStrings.filter { !$0.isEmpty }
    }

    public func exists(_ path: String, transaction: Transaction = 0) throws -> Bool {
        do {
            _ = try readBytes(path, transaction: transaction)
            return true
        } catch let e as XenStoreError where e.name == "ENOENT" {
            return false
        }
    }

    /// `XS_GET_PERMS`.
    public func permissions(_ path: String, transaction: Transaction = 0) throws -> [XenStorePermission] {
        let r = try request(.getPerms, [path], transaction: transaction, path: path)
        return try r.payloadStrings.filter { !$0.isEmpty }.map {
            guard let p = XenStorePermission($0) else { throw XenStoreError.badReply("permission '\($0)'") }
            return p
        }
    }

    /// `XS_SET_PERMS`.
    public func setPermissions(_ path: String, _ perms: [XenStorePermission], transaction: Transaction = 0) throws {
        _ = try request(.setPerms, [path] + perms.map(\.description), transaction: transaction, path: path)
    }

    /// `XS_GET_DOMAIN_PATH`.
    public func domainPath(_ domid: UInt16) throws -> String {
        let r = try request(.getDomainPath, ["\(domid)"], path: "\(domid)")
        return r.payloadStrings.first ?? ""
    }

    /// `XS_WATCH`: `handler` runs (on the watch thread) with the changed path, once right away
    /// and then on every change of `path` or anything under it.
    public func watch(_ path: String, token: String, _ handler: @escaping (String) -> Void) throws {
        startThreads()
        mutex.lock()
        watches[token] = handler
        mutex.unlock()
        do {
            _ = try request(.watch, [path, token], path: path)
        } catch {
            mutex.lock()
            watches[token] = nil
            mutex.unlock()
            throw error
        }
    }

    /// Runs `body` on the watch thread, in order with watch callbacks: set-up the runtime does at
    /// boot (its own watches) without making `Domain.start` wait for the store.
    public func onWatchThread(_ body: @escaping () -> Void) {
        startThreads()
        mutex.lock()
        watchQueue.append(.task(body))
        watchCond.signal()
        mutex.unlock()
    }

    /// `XS_UNWATCH`.
    public func unwatch(_ path: String, token: String) throws {
        _ = try request(.unwatch, [path, token], path: path)
        mutex.lock()
        watches[token] = nil
        mutex.unlock()
    }

    /// `XS_TRANSACTION_START`.
    public func startTransaction() throws -> Transaction {
        let r = try request(.transactionStart, [""], path: "")
        guard let s = r.payloadStrings.first, let t = Transaction(s) else { throw XenStoreError.badReply("transaction id") }
        return t
    }

    /// `XS_TRANSACTION_END`: commits (`commit`) or aborts. A commit that conflicts throws EAGAIN.
    public func endTransaction(_ t: Transaction, commit: Bool) throws {
        _ = try request(.transactionEnd, [commit ? "T" : "F"], transaction: t, path: "")
    }

    /// Runs `body` in a transaction and commits, starting over when the commit fails with EAGAIN
    /// (another writer changed what the transaction read), as libxenstore's callers do.
    @discardableResult
    public func transaction<R>(maxAttempts: Int = 100, _ body: (Transaction) throws -> R) throws -> R {
        var attempt = 0
        while true {
            attempt += 1
            let t = try startTransaction()
            let r: R
            do {
                r = try body(t)
            } catch {
                try? endTransaction(t, commit: false)
                throw error
            }
            do {
                try endTransaction(t, commit: true)
                return r
            } catch let e as XenStoreError where e.name == "EAGAIN" && attempt < maxAttempts {
                continue
            }
        }
    }

    // MARK: transport

    private func request(_ type: XSMessageType, _ strings: [String], transaction: Transaction = 0, path: String) throws -> XSMessage {
        var p: [UInt8] = []
        for s in strings { p += Array(s.utf8); p.append(0) }
        return try request(type, payload: p, transaction: transaction, path: path)
    }

    private func request(_ type: XSMessageType, payload: [UInt8], transaction: Transaction, path: String) throws -> XSMessage {
        startThreads()
        mutex.lock()
        if let f = failure { mutex.unlock(); throw XenStoreError.disconnected(f) }
        let id = nextRequestID
        nextRequestID &+= 1
        mutex.unlock()
        let m = XSMessage(type, requestID: id, transactionID: transaction, payload: payload)
        try send(m.encoded())
        mutex.lock()
        defer { mutex.unlock() }
        while replies[id] == nil && failure == nil { replyCond.wait(mutex) }
        guard let r = replies.removeValue(forKey: id) else { throw XenStoreError.disconnected(failure ?? "gone") }
        if r.rawType == XSMessageType.error.rawValue {
            throw XenStoreError.server(r.payloadStrings.first ?? "EINVAL", operation: type.xenName, path: path)
        }
        return r
    }

    /// Copies a message onto the request ring, waiting for room, then kicks the store port.
    private func send(_ bytes: [UInt8]) throws {
        writerMutex.lock()
        defer { writerMutex.unlock() }
        let ring = (page.base + XenStoreWire.reqOffset).assumingMemoryBound(to: UInt8.self)
        var sent = 0
        while sent < bytes.count {
            if let e = serverError() { throw XenStoreError.disconnected(e) }
            let cons = SharedAtomic.load(word(XenStoreWire.reqConsOffset))
            let prod = SharedAtomic.load(word(XenStoreWire.reqProdOffset))
            let used = prod &- cons
            guard used <= UInt32(XenStoreWire.ringSize) else { throw XenStoreError.disconnected("impossible request ring indexes") }
            let room = XenStoreWire.ringSize - Int(used)
            if room == 0 {
                kick()
                _ = try? Futex.wait(word(XenStoreWire.reqConsOffset), expected: cons, timeoutNs: 100_000_000)
                continue
            }
            let n = min(room, bytes.count - sent)
            for i in 0..<n { ring[Int((prod &+ UInt32(i)) & UInt32(XenStoreWire.ringSize - 1))] = bytes[sent + i] }
            SharedAtomic.store(word(XenStoreWire.reqProdOffset), prod &+ UInt32(n))
            sent += n
        }
        kick()
    }

    private func serverError() -> String? {
        switch SharedAtomic.load(word(XenStoreWire.errorOffset)) {
        case XenStoreWire.errorNone: return nil
        case XenStoreWire.errorRingIndex: return "the server found impossible ring indexes and disconnected"
        case XenStoreWire.errorProtocol: return "the server disconnected after a protocol violation"
        default: return "the server disconnected the ring"
        }
    }

    /// Takes replies and watch events off the response ring.
    private func readLoop() {
        var framer = XSFramer()
        let ring = (page.base + XenStoreWire.rspOffset).assumingMemoryBound(to: UInt8.self)
        var buf = [UInt8]()
        while true {
            if let e = serverError() { fail(e); return }
            if SharedAtomic.load(&readerPaused) != 0 { PosixThread.sleep(microseconds: 10_000); continue }
            let cons = SharedAtomic.load(word(XenStoreWire.rspConsOffset))
            let prod = SharedAtomic.load(word(XenStoreWire.rspProdOffset))
            let avail = prod &- cons
            guard avail <= UInt32(XenStoreWire.ringSize) else { fail("impossible response ring indexes"); return }
            if avail == 0 {
                // The server wakes this word after every producer update and when it disconnects the ring.
                _ = try? Futex.wait(word(XenStoreWire.rspProdOffset), expected: prod)
                continue
            }
            buf.removeAll(keepingCapacity: true)
            for i in 0..<Int(avail) { buf.append(ring[Int((cons &+ UInt32(i)) & UInt32(XenStoreWire.ringSize - 1))]) }
            SharedAtomic.store(word(XenStoreWire.rspConsOffset), prod)
            kick()  // the server may hold more for us
            framer.feed(buf)
            do {
                while let m = try framer.next() { dispatch(m) }
            } catch {
                fail("\(error)")
                return
            }
        }
    }

    private func dispatch(_ m: XSMessage) {
        mutex.lock()
        defer { mutex.unlock() }
        if m.rawType == XSMessageType.watchEvent.rawValue {
            let s = m.payloadStrings
            if s.count >= 2 {
                watchQueue.append(.event(path: s[0], token: s[1]))
                watchCond.signal()
            }
        } else {
            replies[m.requestID] = m
            replyCond.broadcast()
        }
    }

    private func fail(_ why: String) {
        mutex.lock()
        failure = why
        replyCond.broadcast()
        mutex.unlock()
        let msg = "procvisor: xenstore: \(why)\n"
        FileDescriptor.standardError.writeUnchecked(msg)
    }

    private func watchLoop() {
        while true {
            mutex.lock()
            while watchQueue.isEmpty { watchCond.wait(mutex) }
            let work = watchQueue.removeFirst()
            switch work {
            case let .event(path, token):
                let handler = watches[token]
                mutex.unlock()
                handler?(path)
            case let .task(body):
                mutex.unlock()
                body()
            }
        }
    }
}

import Foundation
import Glibc
import LinuxHost
import ProcvisorABI

/// XenStore over the dom0 socket (`$PROCVISOR_RUNDIR/xenstored/socket`, Xen's wire protocol):
/// reads, writes and transaction commits per second with 1 and 16 concurrent clients (one
/// connection and one thread each), commits on one contended counter, and the latency of a watch
/// event. The peer is the floor for one request: a single-threaded epoll server in this process
/// that echoes each 16-byte header + payload message back over a SOCK_STREAM socketpair, driven
/// by the same client code with the same number of concurrent clients.
enum XenStoreSuite {
    static func run(count: Int) throws -> [Result] {
        let sup = try BenchSupervisor()
        defer { sup.stop() }
        let socket = sup.dir + "/xenstored/socket"
        // Both servers on the last CPU, every client on the others: each round trip then crosses
        // CPUs the same way for ours and the peer (left to the scheduler, whether a server shares
        // its client's CPU decides the figure, and on a VM it changes from run to run).
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let serverCPU = cpus >= 2 ? cpus - 1 : nil
        let echo = try EchoServer(cpu: serverCPU)
        defer { echo.stop() }
        if let serverCPU {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(sup.pid)/task")) ?? []
            for t in tasks { if let tid = pid_t(t) { try Affinity.set(tid, cpus: [serverCPU]) } }
            try Affinity.set(0, cpus: Array(0..<serverCPU))
        }
        defer { if serverCPU != nil { try? Affinity.set(0, cpus: Array(0..<cpus)) } }

        // Best of five (three for transactions), ours and the peer alternating so noise (on a VM,
        // mostly where the scheduler puts client and server) hits both alike.
        let reps = 5
        let one = count * 90, many = count * 180
        var echo1: [Double] = [], echo16: [Double] = []
        var read1: [Double] = [], read16: [Double] = [], write1: [Double] = [], write16: [Double] = []
        for _ in 0..<reps {
            echo1.append(try echoThroughput(echo, clients: 1, total: one))
            read1.append(try readThroughput(socket, clients: 1, total: one))
            write1.append(try writeThroughput(socket, clients: 1, total: one))
            echo16.append(try echoThroughput(echo, clients: 16, total: many))
            read16.append(try readThroughput(socket, clients: 16, total: many))
            write16.append(try writeThroughput(socket, clients: 16, total: many))
        }
        let e1 = echo1.max()!, e16 = echo16.max()!
        var tx1: [TxFigures] = [], tx16: [TxFigures] = []
        for _ in 0..<3 {
            tx1.append(try transactionThroughput(socket, clients: 1, total: count * 30))
            tx16.append(try transactionThroughput(socket, clients: 16, total: count * 60))
        }
        let shared = try sharedCounter(socket, clients: 16, total: count * 15)
        let (lat, echoLat) = try watchLatency(socket, echo: echo, samples: count * 25)

        func ops(_ name: String, _ ours: Double, clients: Int, note: String = "") -> Result {
            let peer = clients == 1 ? e1 : e16
            return Result(name: name, unit: "ops/s", procvisor: ours, peer: peer,
                          peer_name: "unix echo round trips, \(clients) client\(clients == 1 ? "" : "s")\(note)",
                          ratio: ours / peer, higher_is_better: true)
        }
        func retries(_ name: String, _ f: TxFigures) -> Result {
            Result(name: name, unit: "retries", procvisor: Double(f.retries), peer: Double(f.commits),
                   peer_name: "commits (ratio: retries per commit)", ratio: Double(f.retries) / Double(max(f.commits, 1)),
                   higher_is_better: false)
        }
        let t1 = tx1.max { $0.perSecond < $1.perSecond }!, t16 = tx16.max { $0.perSecond < $1.perSecond }!
        let note = "; a commit is 4 requests"
        return [
            ops("xs_read_1_client", read1.max()!, clients: 1),
            ops("xs_read_16_clients", read16.max()!, clients: 16),
            ops("xs_write_1_client", write1.max()!, clients: 1),
            ops("xs_write_16_clients", write16.max()!, clients: 16),
            ops("xs_tx_commit_1_client", t1.perSecond, clients: 1, note: note),
            retries("xs_tx_commit_1_client_eagain", t1),
            ops("xs_tx_commit_16_clients", t16.perSecond, clients: 16, note: note),
            retries("xs_tx_commit_16_clients_eagain", t16),
            ops("xs_tx_shared_counter_16_clients", shared.perSecond, clients: 16, note: note),
            retries("xs_tx_shared_counter_16_clients_eagain", shared),
            Result(name: "xs_watch_event_latency_median", unit: "us", procvisor: lat.median, peer: echoLat.median,
                   peer_name: "unix echo round trip, 1 client", ratio: lat.median / echoLat.median, higher_is_better: false),
            Result(name: "xs_watch_event_latency_p99", unit: "us", procvisor: lat.percentile(99), peer: echoLat.percentile(99),
                   peer_name: "unix echo round trip, 1 client", ratio: lat.percentile(99) / echoLat.percentile(99),
                   higher_is_better: false),
        ]
    }

    // MARK: rows

    static func readThroughput(_ socket: String, clients: Int, total: Int) throws -> Double {
        let setup = try WireClient(path: socket)
        for i in 0..<clients { try setup.write("/bench/read/n\(i)", "value-\(i)") }
        return try runClients(clients, total: total, connect: { try WireClient(path: socket) }) { c, i in
            let request = XSMessage(.read, requestID: 1, strings: ["/bench/read/n\(i)"]).encoded()
            let expected = Array("value-\(i)".utf8)
            return {
                let r = try c.roundTrip(request)
                guard r.type == XSMessageType.read.rawValue, r.payload == expected else {
                    throw BenchError("read /bench/read/n\(i): type \(r.type), \(String(decoding: r.payload, as: UTF8.self))")
                }
            }
        }
    }

    static func writeThroughput(_ socket: String, clients: Int, total: Int) throws -> Double {
        try runClients(clients, total: total, connect: { try WireClient(path: socket) }) { c, i in
            // Two values alternately, so every write changes the node.
            let requests = (0..<2).map { XSMessage(.write, requestID: 1, payload: Array("/bench/write/n\(i)\0v\($0)".utf8)).encoded() }
            var k = 0
            return {
                k ^= 1
                try c.expectOK(try c.roundTrip(requests[k]))
            }
        }
    }

    struct TxFigures {
        var perSecond: Double
        var commits: Int
        var retries: Int
    }

    /// start, read, write, commit; each client on its own node, retrying on EAGAIN.
    static func transactionThroughput(_ socket: String, clients: Int, total: Int) throws -> TxFigures {
        let retries = Counter()
        let setup = try WireClient(path: socket)
        for i in 0..<clients { try setup.write("/bench/tx/n\(i)", "0") }
        let rate = try runClients(clients, total: total, connect: { try WireClient(path: socket) }) { c, i in
            var n = 0
            return {
                n += 1
                retries.add(try c.increment("/bench/tx/n\(i)", expectedBefore: n - 1))
            }
        }
        for i in 0..<clients {
            _ = try setup.call(.rm, ["/bench/tx/n\(i)"])
        }
        return TxFigures(perSecond: rate, commits: total, retries: retries.value)
    }

    /// 16 clients incrementing one counter in transactions, retrying on EAGAIN; the final value
    /// must be the number of successful commits.
    static func sharedCounter(_ socket: String, clients: Int, total: Int) throws -> TxFigures {
        let retries = Counter(), commits = Counter()
        let setup = try WireClient(path: socket)
        let path = "/bench/shared/counter"
        try setup.write(path, "0")
        let rate = try runClients(clients, total: total, connect: { try WireClient(path: socket) }) { c, _ in
            return {
                retries.add(try c.increment(path, expectedBefore: nil))
                commits.add(1)
            }
        }
        let final = try setup.call(.read, [path])
        let value = Int(String(decoding: final.payload, as: UTF8.self))
        guard value == commits.value, commits.value == total else {
            throw BenchError("shared counter is \(String(decoding: final.payload, as: UTF8.self)) after \(commits.value) successful commits (\(total) intended): lost or duplicated increments")
        }
        return TxFigures(perSecond: rate, commits: commits.value, retries: retries.value)
    }

    /// From the write request sent on one connection to the watch event received on another (µs),
    /// against one echo round trip. Blocks of 100 samples alternate between the two: both are
    /// tight loops under the same machine state (on a VM a ping-pong interleaved with other work
    /// wakes differently from a steady one).
    static func watchLatency(_ socket: String, echo: EchoServer, samples: Int) throws -> (Sample, Sample) {
        let watcher = try WireClient(path: socket), writer = try WireClient(path: socket)
        let echoClient = try echo.connect()
        let path = "/bench/watch/node"
        try writer.write(path, "0")
        try watcher.expectOK(try watcher.call(.watch, [path, "lat"]))
        _ = try watcher.nextEvent()  // the event a new watch fires at once
        let requests = (0..<2).map { XSMessage(.write, requestID: 1, payload: Array("\(path)\0\($0)".utf8)).encoded() }
        var ours: [Double] = [], peer: [Double] = []
        ours.reserveCapacity(samples)
        peer.reserveCapacity(samples)
        let block = 100
        for b in 0...(samples + block - 1) / block {
            let warm = b == 0  // the first block of each warms up and is not counted
            for i in 0..<block {
                let t0 = MonotonicClock.nanoseconds()
                try writer.send(requests[i & 1])
                let e = try watcher.nextEvent()
                let t1 = MonotonicClock.nanoseconds()
                guard e.path == path, e.token == "lat" else { throw BenchError("unexpected watch event \(e)") }
                try writer.expectOK(try writer.receive())
                if !warm { ours.append(Double(t1 - t0) / 1000) }
            }
            for i in 0..<block {
                let t0 = MonotonicClock.nanoseconds()
                _ = try echoClient.roundTrip(requests[i & 1])
                let t1 = MonotonicClock.nanoseconds()
                if !warm { peer.append(Double(t1 - t0) / 1000) }
            }
        }
        return (Sample(values: ours), Sample(values: peer))
    }

    static func echoThroughput(_ echo: EchoServer, clients: Int, total: Int) throws -> Double {
        try runClients(clients, total: total, connect: { try echo.connect() }) { c, i in
            // The same size as the read request of the same client.
            let request = XSMessage(.read, requestID: 1, strings: ["/bench/read/n\(i)"]).encoded()
            return {
                let r = try c.roundTrip(request)
                guard r.payload.count == request.count - XenStoreWire.headerSize else { throw BenchError("echo returned \(r.payload.count) bytes") }
            }
        }
    }

    // MARK: clients and threads

    /// Runs `clients` threads, each on its own connection, taking operations from a shared pool of
    /// `total` until it is empty (so all stay busy to the end); returns operations per second
    /// between the start signal and the last operation.
    static func runClients(_ clients: Int, total: Int, connect: () throws -> WireClient,
                           _ makeOp: (WireClient, Int) -> () throws -> Void) throws -> Double {
        let conns = try (0..<clients).map { _ in try connect() }
        let ops = conns.enumerated().map { makeOp($1, $0) }
        let pool = Counter(total)
        let failures = Failures()
        let start = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        for i in 0..<clients {
            let op = ops[i]
            let t = Thread {
                start.wait()
                do {
                    while pool.take() { try op() }
                } catch {
                    failures.add("client \(i): \(error)")
                    pool.drain()
                }
                done.signal()
            }
            t.stackSize = 1 << 20
            t.start()
        }
        let t0 = MonotonicClock.nanoseconds()
        for _ in 0..<clients { start.signal() }
        for _ in 0..<clients { done.wait() }
        let t1 = MonotonicClock.nanoseconds()
        withExtendedLifetime(conns) {}
        if let f = failures.first { throw BenchError(f) }
        return Double(total) / (Double(t1 - t0) / 1e9)
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n: Int
        init(_ n: Int = 0) { self.n = n }
        func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
        var value: Int { lock.lock(); defer { lock.unlock() }; return n }
        /// Takes one unit from a pool; false when it is empty.
        func take() -> Bool {
            lock.lock(); defer { lock.unlock() }
            guard n > 0 else { return false }
            n -= 1
            return true
        }
        func drain() { lock.lock(); n = 0; lock.unlock() }
    }

    final class Failures: @unchecked Sendable {
        private let lock = NSLock()
        private var messages: [String] = []
        func add(_ m: String) { lock.lock(); messages.append(m); lock.unlock() }
        var first: String? { lock.lock(); defer { lock.unlock() }; return messages.first }
    }
}

/// A lean client for the XenStore wire format (header + payload), used for both the supervisor and
/// the echo peer so the two differ only in the server: one reused receive buffer, no per-message
/// allocation beyond the reply payload.
final class WireClient {
    struct Message {
        var type: UInt32
        var tx: UInt32
        var payload: [UInt8]
        var strings: [String] { XSMessage(rawType: type, requestID: 0, transactionID: tx, payload: payload).payloadStrings }
    }

    let fd: FileDescriptor
    private var buffer = [UInt8](repeating: 0, count: 65536)
    private var start = 0, end = 0
    private var events: [(path: String, token: String)] = []

    init(fd: FileDescriptor) { self.fd = fd }
    convenience init(path: String) throws { self.init(fd: try UnixSocket.connect(path: path)) }
    deinit { fd.close() }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd.rawValue, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw BenchError("send: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    /// The next message of any type.
    func receiveAny() throws -> Message {
        while true {
            if end - start >= XenStoreWire.headerSize {
                let (type, tx, len) = buffer.withUnsafeBytes { b -> (UInt32, UInt32, Int) in
                    (UInt32(littleEndian: b.loadUnaligned(fromByteOffset: start, as: UInt32.self)),
                     UInt32(littleEndian: b.loadUnaligned(fromByteOffset: start + 8, as: UInt32.self)),
                     Int(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: start + 12, as: UInt32.self))))
                }
                guard len <= XenStoreWire.payloadMax else { throw BenchError("oversized reply (\(len) bytes)") }
                if end - start >= XenStoreWire.headerSize + len {
                    let p = Array(buffer[(start + XenStoreWire.headerSize)..<(start + XenStoreWire.headerSize + len)])
                    start += XenStoreWire.headerSize + len
                    if start == end { start = 0; end = 0 }
                    return Message(type: type, tx: tx, payload: p)
                }
            }
            if start > 0 && buffer.count - end < 8192 {
                buffer.withUnsafeMutableBytes { b in _ = memmove(b.baseAddress!, b.baseAddress! + start, end - start) }
                end -= start
                start = 0
            }
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd.rawValue, $0.baseAddress! + end, $0.count - end, 0) }
            if n == 0 { throw BenchError("the server closed the connection") }
            if n < 0 {
                if errno == EINTR { continue }
                throw BenchError("recv: \(String(cString: strerror(errno)))")
            }
            end += n
        }
    }

    /// The next reply; watch events that come first are queued.
    func receive() throws -> Message {
        while true {
            let m = try receiveAny()
            guard m.type == XSMessageType.watchEvent.rawValue else { return m }
            let s = m.strings
            events.append((s.first ?? "", s.count > 1 ? s[1] : ""))
        }
    }

    func nextEvent() throws -> (path: String, token: String) {
        while events.isEmpty {
            let m = try receiveAny()
            if m.type == XSMessageType.watchEvent.rawValue {
                let s = m.strings
                events.append((s.first ?? "", s.count > 1 ? s[1] : ""))
            } else {
                throw BenchError("unexpected reply type \(m.type) while waiting for a watch event")
            }
        }
        return events.removeFirst()
    }

    func roundTrip(_ request: [UInt8]) throws -> Message {
        try send(request)
        return try receive()
    }

    func call(_ type: XSMessageType, _ strings: [String], tx: UInt32 = 0) throws -> Message {
        try roundTrip(XSMessage(type, requestID: 1, transactionID: tx, strings: strings).encoded())
    }

    /// XS_WRITE: the value is not NUL-terminated on the wire.
    func write(_ path: String, _ value: String) throws {
        try expectOK(try roundTrip(XSMessage(.write, requestID: 1, payload: Array("\(path)\0\(value)".utf8)).encoded()))
    }

    func expectOK(_ m: Message) throws {
        guard m.type != XSMessageType.error.rawValue else { throw BenchError("error reply: \(m.strings.first ?? "")") }
    }

    /// One transactional increment of the counter at `path` (start, read, write, commit), retried
    /// on EAGAIN until it commits; returns the number of retries. With `expectedBefore`, the value
    /// read must be that (a private node).
    func increment(_ path: String, expectedBefore: Int?) throws -> Int {
        var retries = 0
        while true {
            let s = try call(.transactionStart, [""])
            guard s.type == XSMessageType.transactionStart.rawValue, let tx = s.strings.first.flatMap({ UInt32($0) }) else {
                throw BenchError("transaction start: \(s.strings)")
            }
            let r = try roundTrip(XSMessage(.read, requestID: 1, transactionID: tx, payload: Array(path.utf8) + [0]).encoded())
            guard r.type == XSMessageType.read.rawValue, let v = Int(String(decoding: r.payload, as: UTF8.self)) else {
                throw BenchError("transactional read of \(path): \(r.strings)")
            }
            if let expectedBefore, v != expectedBefore { throw BenchError("\(path) is \(v), expected \(expectedBefore)") }
            try expectOK(try roundTrip(XSMessage(.write, requestID: 1, transactionID: tx, payload: Array("\(path)\0\(v + 1)".utf8)).encoded()))
            let e = try call(.transactionEnd, ["T"], tx: tx)
            if e.type == XSMessageType.error.rawValue {
                guard e.strings.first == "EAGAIN" else { throw BenchError("commit on \(path): \(e.strings)") }
                retries += 1
                continue
            }
            return retries
        }
    }
}

/// The peer: one thread with one epoll set, as the supervisor serves XenStore, echoing each
/// whole message (16-byte header + its payload) back on the connection it came from.
final class EchoServer: @unchecked Sendable {
    private let epoll: Epoll
    private let stopFD: FileDescriptor
    private let lock = NSLock()
    private final class Conn {
        let fd: FileDescriptor
        var pending: [UInt8] = []
        init(_ fd: FileDescriptor) { self.fd = fd }
    }
    private var conns: [UInt64: Conn] = [:]
    private var nextToken: UInt64 = 1
    private let finished = DispatchSemaphore(value: 0)

    init(cpu: Int?) throws {
        epoll = try Epoll()
        stopFD = try FileDescriptor.eventfd()
        try epoll.add(stopFD, events: .readable, token: 0)
        let t = Thread { [self] in
            if let cpu { try? Affinity.set(0, cpus: [cpu]) }
            serve()
        }
        t.stackSize = 1 << 20
        t.start()
    }

    /// A new client connection (a SOCK_STREAM socketpair whose other end the server owns).
    func connect() throws -> WireClient {
        let (a, b) = try UnixSocket.pair(type: Int32(SOCK_STREAM.rawValue))
        lock.lock()
        let token = nextToken
        nextToken += 1
        conns[token] = Conn(b)
        lock.unlock()
        try epoll.add(b, events: .readable, token: token)
        return WireClient(fd: a)
    }

    func stop() {
        var one: UInt64 = 1
        _ = Glibc.write(stopFD.rawValue, &one, 8)
        finished.wait()
        lock.lock()
        for c in conns.values { c.fd.close() }
        conns.removeAll()
        lock.unlock()
        stopFD.close()
    }

    private func serve() {
        var buf = [UInt8](repeating: 0, count: 65536)
        loop: while true {
            guard let ready = try? epoll.wait(timeoutMs: -1) else { break }
            for (token, _) in ready {
                if token == 0 { break loop }
                lock.lock()
                guard let c = conns[token] else { lock.unlock(); continue }
                lock.unlock()
                let n = buf.withUnsafeMutableBytes { Glibc.recv(c.fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n == 0 { epoll.remove(c.fd); continue }  // client closed; its fd is closed in stop()
                guard n > 0 else { continue }
                c.pending += buf[0..<n]
                var off = 0
                while c.pending.count - off >= XenStoreWire.headerSize {
                    let len = c.pending.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self))) }
                    let size = XenStoreWire.headerSize + len
                    guard c.pending.count - off >= size else { break }
                    c.pending.withUnsafeBytes { p in _ = Glibc.send(c.fd.rawValue, p.baseAddress! + off, size, Int32(MSG_NOSIGNAL)) }
                    off += size
                }
                c.pending.removeFirst(off)
            }
        }
        finished.signal()
    }
}

enum Affinity {
    /// sched_setaffinity(2), looked up at run time: Glibc's module leaves it out (it needs _GNU_SOURCE).
    private typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
    private static let setAffinity: SetAffinity? = {
        guard let handle = dlopen(nil, RTLD_NOW), let sym = dlsym(handle, "sched_setaffinity") else { return nil }
        return unsafeBitCast(sym, to: SetAffinity.self)
    }()

    /// Restricts thread `tid` (0: the calling thread) to `cpus`.
    static func set(_ tid: pid_t, cpus: [Int]) throws {
        guard let setAffinity else { throw BenchError("sched_setaffinity is not available") }
        var mask = [UInt8](repeating: 0, count: 128)  // cpu_set_t: 1024 CPUs
        for c in cpus where c / 8 < mask.count { mask[c / 8] |= UInt8(1 << (c % 8)) }
        let r = mask.withUnsafeBytes { setAffinity(tid, $0.count, $0.baseAddress!) }
        if r != 0 { throw BenchError("sched_setaffinity(\(tid)): \(String(cString: strerror(errno)))") }
    }
}

import ProcvisorABI

/// A UDP socket of a `NetStack`, bound to one port on the host's address (it also receives
/// datagrams sent to the limited and the subnet broadcast). Single-threaded like its stack.
/// Dropping the last reference closes it.
public final class UDPSocket {
    /// The local port.
    public let port: UInt16
    /// The stack it belongs to.
    public let stack: NetStack
    /// Datagrams a socket holds before newer ones are dropped (counted as `dropSocketQueueFull`).
    public static let queueLimit = 1024

    @exclusivity(unchecked) private var queue = DatagramQueue()
    @exclusivity(unchecked) private var isClosed = false

    init(stack: NetStack, port: UInt16) {
        self.stack = stack
        self.port = port
    }

    deinit {
        if !isClosed { stack.unbind(port) }
    }

    /// Datagrams received and not yet taken by `receive`.
    public var queuedDatagrams: Int { queue.count }

    /// Sends `data` as one datagram to `to`:`port`. Resolves the next hop's MAC first (from the
    /// ARP cache, else by ARP, pumping the stack for up to `timeout` seconds). Throws `closed`,
    /// `invalidArgument` (port 0), `messageTooLong` (more than `stack.maxUDPPayload` bytes: no
    /// fragmentation), `unreachable`. A datagram the link has no room for is dropped and counted
    /// (`dropTransmitFull`), as UDP may.
    public func send(_ data: UnsafeRawBufferPointer, to: IPv4Address, port: UInt16, timeout: Double = 3) throws {
        guard !isClosed else { throw NetStackError.closed }
        guard port != 0 else { throw NetStackError.invalidArgument("UDP destination port 0 (to \(to))") }
        let max = stack.maxUDPPayload
        guard data.count <= max else { throw NetStackError.messageTooLong(size: data.count, max: max) }
        try stack.sendUDP(from: self.port, data, to: to, port: port, deadline: NetStack.Deadline(timeout))
    }

    /// Sends `data` as one datagram (see the raw-buffer `send`).
    public func send(_ data: [UInt8], to: IPv4Address, port: UInt16, timeout: Double = 3) throws {
        try data.withUnsafeBytes { try send($0, to: to, port: port, timeout: timeout) }
    }

    /// The next datagram, pumping the stack while waiting; nil when none arrives within `timeout`
    /// seconds (0: only what is already here or waiting on the link; negative: no limit).
    /// Throws `closed`.
    public func receive(timeout: Double) throws -> (data: [UInt8], from: IPv4Address, port: UInt16)? {
        guard !isClosed else { throw NetStackError.closed }
        if let d = queue.pop() { return (d.data, d.from, d.port) }
        stack.pump(until: NetStack.Deadline(timeout)) { self.queue.count > 0 }
        guard let d = queue.pop() else { return nil }
        return (d.data, d.from, d.port)
    }

    /// Unbinds the port and discards queued datagrams; later calls throw `closed`. Idempotent.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        queue = DatagramQueue()
        stack.unbind(port)
    }

    /// Queues a received datagram (copying it); false when the queue is full.
    func enqueue(_ payload: UnsafeRawBufferPointer, from: IPv4Address, port: UInt16) -> Bool {
        guard queue.count < UDPSocket.queueLimit else { return false }
        queue.push(Datagram(data: [UInt8](payload), from: from, port: port))
        return true
    }
}

struct Datagram {
    var data: [UInt8]
    var from: IPv4Address
    var port: UInt16
}

/// A FIFO ring that grows by doubling (from 16) and never shrinks while in use.
struct DatagramQueue {
    private var storage: [Datagram?] = []
    private var head = 0
    private(set) var count = 0

    mutating func push(_ d: Datagram) {
        if count == storage.count {
            var grown = [Datagram?](repeating: nil, count: Swift.max(16, storage.count * 2))
            for i in 0..<count { grown[i] = storage[(head + i) % storage.count] }
            storage = grown
            head = 0
        }
        storage[(head + count) % storage.count] = d
        count += 1
    }

    mutating func pop() -> Datagram? {
        guard count > 0 else { return nil }
        let d = storage[head]
        storage[head] = nil
        head = (head + 1) % storage.count
        count -= 1
        return d
    }
}

import Glibc

/// poll(2) over a small set of descriptors: for threads that wait on two or three descriptors of
/// their own (a kick eventfd and a tap, a socket and stdin) rather than on the event loop's epoll.
/// Entries keep their order; after `wait` (or `waitOnce`), `ready(_:)` tells what each reported.
public struct Poll {
    /// Events asked for and reported (`POLL*`). `error`, `hangup` and `invalid` are always
    /// reported, asked for or not.
    public struct Events: OptionSet, Sendable {
        public let rawValue: Int16
        @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: Int16(POLLIN))
        public static let priority = Events(rawValue: Int16(POLLPRI))
        public static let writable = Events(rawValue: Int16(POLLOUT))
        public static let error = Events(rawValue: Int16(POLLERR))
        public static let hangup = Events(rawValue: Int16(POLLHUP))
        /// The descriptor is not open (POLLNVAL).
        public static let invalid = Events(rawValue: Int16(POLLNVAL))
    }

    @usableFromInline var entries: [pollfd]

    /// No entries yet (see `add`).
    public init() { entries = [] }

    /// `fds`, each waited on for its events, in this order.
    public init(_ fds: [(FileDescriptor, Events)]) {
        entries = fds.map { pollfd(fd: $0.0.rawValue, events: $0.1.rawValue, revents: 0) }
    }

    /// Adds `fd`, waited on for `events`; returns its index.
    @discardableResult
    public mutating func add(_ fd: FileDescriptor, _ events: Events = .readable) -> Int {
        entries.append(pollfd(fd: fd.rawValue, events: events.rawValue, revents: 0))
        return entries.count - 1
    }

    /// Stops waiting on entry `index` (its descriptor becomes -1, which poll(2) skips and reports
    /// nothing for); indexes of the others stay.
    public mutating func ignore(_ index: Int) {
        entries[index].fd = -1
        entries[index].revents = 0
    }

    /// Waits on `fd` for `events` at entry `index` from now on, in place of what the entry held (an
    /// ignored one included; -1 ignores it); `ready(index)` is empty until the next wait. Allocates
    /// nothing: a Poll made once can follow a descriptor that changes between waits.
    @inlinable
    public mutating func set(_ index: Int, _ fd: FileDescriptor, _ events: Events = .readable) {
        entries[index] = pollfd(fd: fd.rawValue, events: events.rawValue, revents: 0)
    }

    /// How many entries there are (ignored ones included).
    public var count: Int { entries.count }

    /// Waits until an entry is ready or `timeoutMs` passes (-1: no timeout, 0: just look).
    /// Returns how many entries are ready (0 on timeout). Interrupted by a signal (EINTR), it
    /// waits again for what is left of the timeout.
    @discardableResult
    public mutating func wait(timeoutMs: Int32) throws -> Int {
        let deadline = timeoutMs > 0 ? MonotonicClock.nanoseconds() + UInt64(timeoutMs) * 1_000_000 : 0
        var timeout = timeoutMs
        while true {
            let n = entries.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), timeout) }
            if n >= 0 { return Int(n) }
            let e = Errno.current
            guard e == .interrupted else {
                throw SystemError("poll", entries.map { "fd \($0.fd)" }.joined(separator: ", "), errno: e)
            }
            if timeoutMs > 0 {
                let now = MonotonicClock.nanoseconds()
                // Rounded up, so a wait never ends before its deadline.
                timeout = now >= deadline ? 0 : Int32((deadline - now + 999_999) / 1_000_000)
            }
        }
    }

    /// One poll(2) and nothing more: how many entries are ready (0 on timeout), or the errno, with
    /// every entry then reporting nothing. Nothing is retried, EINTR (`.interrupted`) included,
    /// and no clock is read: for loops that look at their own state after every wake-up anyway.
    @inlinable @inline(__always)
    public mutating func waitOnce(timeoutMs: Int32) -> Result<Int, Errno> {
        let n = entries.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), timeoutMs) }
        if n >= 0 { return .success(Int(n)) }
        let e = Errno.current
        for i in entries.indices { entries[i].revents = 0 }
        return .failure(e)
    }

    /// What entry `index` reported at the last wait (empty when it was not ready).
    @inlinable public func ready(_ index: Int) -> Events { Events(rawValue: entries[index].revents) }

    /// Whether entry `index` reported anything at the last wait.
    @inlinable public func isReady(_ index: Int) -> Bool { entries[index].revents != 0 }

    /// One wait over `fds`: what each reported, in order (all empty on timeout).
    public static func wait(_ fds: [(FileDescriptor, Events)], timeoutMs: Int32) throws -> [Events] {
        var p = Poll(fds)
        try p.wait(timeoutMs: timeoutMs)
        return (0..<p.count).map { p.ready($0) }
    }
}

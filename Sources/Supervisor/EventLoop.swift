import LinuxHost

/// The supervisor's one event loop: epoll for descriptors, a deadline list for timers.
/// Handlers run on the loop's thread, one at a time: nothing in the supervisor needs a lock.
final class EventLoop {
    typealias Handler = (Epoll.Events) -> Void

    private let epoll: Epoll
    private var handlers: [UInt64: Handler] = [:]
    private var nextToken: UInt64 = 1
    private var timers: [UInt64: (deadline: UInt64, action: () -> Void)] = [:]
    private var nextTimer: UInt64 = 1

    init() throws {
        epoll = try Epoll()
    }

    /// Watches `fd`; returns the token to unregister it with.
    @discardableResult
    func watch(_ fd: FileDescriptor, _ events: Epoll.Events = .readable, _ handler: @escaping Handler) throws -> UInt64 {
        let token = nextToken
        nextToken += 1
        try epoll.add(fd, events: events, token: token)
        handlers[token] = handler
        return token
    }

    func modify(_ fd: FileDescriptor, token: UInt64, _ events: Epoll.Events) {
        try? epoll.modify(fd, events: events, token: token)
    }

    func unwatch(_ fd: FileDescriptor, token: UInt64) {
        epoll.remove(fd)
        handlers[token] = nil
    }

    /// Runs `action` once after `ms` milliseconds (at most `maxDelayMs`: a domain may ask for any
    /// number, and a deadline must not overflow); returns an id for `cancel`.
    @discardableResult
    func after(ms: UInt64, _ action: @escaping () -> Void) -> UInt64 {
        let id = nextTimer
        nextTimer += 1
        timers[id] = (MonotonicClock.nanoseconds() + min(ms, Self.maxDelayMs) * 1_000_000, action)
        return id
    }

    /// The longest delay `after` takes: a year.
    static let maxDelayMs: UInt64 = 365 * 86_400_000

    /// When timer `id` is due (monotonic ns), nil when it is not pending.
    func deadline(of id: UInt64?) -> UInt64? { id.flatMap { timers[$0]?.deadline } }

    /// Runs `action` at the monotonic time `deadline` (at once when it has passed).
    @discardableResult
    func at(_ deadline: UInt64, _ action: @escaping () -> Void) -> UInt64 {
        let now = MonotonicClock.nanoseconds()
        return after(ms: deadline > now ? (deadline - now + 999_999) / 1_000_000 : 0, action)
    }

    func cancel(_ id: UInt64?) {
        if let id { timers[id] = nil }
    }

    /// One turn: waits for descriptors or the next deadline, then runs what is due.
    func runOnce(maxWaitMs: Int32 = 1000) throws {
        let now = MonotonicClock.nanoseconds()
        var timeout = maxWaitMs
        if let next = timers.values.map(\.deadline).min() {
            timeout = next <= now ? 0 : Int32(min(UInt64(maxWaitMs), (next - now + 999_999) / 1_000_000))
        }
        for (token, events) in try epoll.wait(timeoutMs: timeout) {
            handlers[token]?(events)
        }
        let after = MonotonicClock.nanoseconds()
        let due = timers.filter { $0.value.deadline <= after }.sorted { $0.value.deadline < $1.value.deadline }
        for (id, timer) in due where timers[id] != nil {
            timers[id] = nil
            timer.action()
        }
    }
}

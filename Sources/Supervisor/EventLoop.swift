import LinuxHost

/// The supervisor's one event loop: epoll for descriptors, a deadline list for timers.
/// Handlers run on the loop's thread, one at a time: nothing in the supervisor needs a lock.
/// Deadlines are kept to the nanosecond: a timerfd armed at the earliest one wakes the wait
/// (epoll's own timeout counts milliseconds); without a timerfd, the timeout rounds up.
final class EventLoop {
    typealias Handler = (Epoll.Events) -> Void

    private let epoll: Epoll
    private var handlers: [UInt64: Handler] = [:]
    private var nextToken: UInt64 = 1
    private var timers: [UInt64: (deadline: UInt64, action: () -> Void)] = [:]
    private var nextTimer: UInt64 = 1
    /// Wakes the wait at the earliest deadline; `armed` is the deadline it is set to.
    private let timerFD: TimerFD?
    private var armed: UInt64?

    init() throws {
        epoll = try Epoll()
        timerFD = try? TimerFD()
        if let t = timerFD {
            // Its readiness only ends the wait; what is due runs after every wait.
            try epoll.add(t.fd, events: .readable, token: 0)
        }
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

    /// Runs `action` at the monotonic time `deadline` (at once when it has passed; at most
    /// `maxDelayMs` from now), to the nanosecond where the loop has its timerfd.
    @discardableResult
    func at(_ deadline: UInt64, _ action: @escaping () -> Void) -> UInt64 {
        let now = MonotonicClock.nanoseconds()
        let id = nextTimer
        nextTimer += 1
        timers[id] = (min(deadline, now + Self.maxDelayMs * 1_000_000), action)
        return id
    }

    func cancel(_ id: UInt64?) {
        if let id { timers[id] = nil }
    }

    /// One turn: waits for descriptors or the next deadline, then runs what is due.
    func runOnce(maxWaitMs: Int32 = 1000) throws {
        let now = MonotonicClock.nanoseconds()
        var timeout = maxWaitMs
        let next = timers.values.map(\.deadline).min()
        if let next, next <= now {
            timeout = 0
        } else if let next, let t = timerFD {
            if armed != next, (try? t.arm(at: next)) != nil { armed = next }
            if armed != next { timeout = Int32(min(UInt64(maxWaitMs), (next - now + 999_999) / 1_000_000)) }
        } else if let next {
            timeout = Int32(min(UInt64(maxWaitMs), (next - now + 999_999) / 1_000_000))
        }
        for (token, events) in try epoll.wait(timeoutMs: timeout) {
            if token == 0 {
                timerFD?.drain()
                armed = nil
                continue
            }
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

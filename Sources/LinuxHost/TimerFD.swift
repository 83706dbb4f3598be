import CProcvisor

/// A CLOCK_MONOTONIC timerfd (timerfd_create(2)): readable once its deadline has passed, to
/// the nanosecond, where a poll or epoll timeout only counts milliseconds.
public final class TimerFD {
    public let fd: FileDescriptor

    public init() throws {
        let r = pv_timerfd_create()
        guard r >= 0 else { throw SystemError("timerfd_create", "CLOCK_MONOTONIC", errno: Errno(rawValue: -r)) }
        fd = FileDescriptor(rawValue: r)
    }

    /// Expires once at `deadline` (monotonic ns, `MonotonicClock.nanoseconds()`; a time passed
    /// already fires at once); nil disarms.
    public func arm(at deadline: UInt64?) throws {
        let r = pv_timerfd_arm(fd.rawValue, deadline.map { max($0, 1) } ?? 0)
        guard r == 0 else { throw SystemError("timerfd_settime", "deadline \(deadline ?? 0)", errno: Errno(rawValue: -r)) }
    }

    /// Takes the expiration count, so the descriptor is no longer readable (0 when none).
    @discardableResult
    public func drain() -> UInt64 {
        var count: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &count) { (try? fd.read(into: $0)) ?? 0 }
        return n == 8 ? count : 0
    }

    deinit { fd.close() }
}

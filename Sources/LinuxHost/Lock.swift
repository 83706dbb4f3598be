import Glibc

/// A pthread mutex at a stable address (allocated once, never moved): Swift gives a stored
/// `var pthread_mutex_t` no stable address, so `&field` may hand the C library a temporary copy.
/// Return codes are checked: a failure is a bug (a lock used after it was torn down, an unlock by
/// a thread that does not hold it when error checking is on) and stops the process.
public final class Lock: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    /// `recursive`: the thread that holds it may take it again (and must release it as often).
    public init(recursive: Bool = false) {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        if recursive { pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_RECURSIVE)) }
        let rc = pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
        precondition(rc == 0, "pthread_mutex_init: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    public func lock() {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "pthread_mutex_lock: \(rc)")
    }

    @inlinable
    public func unlock() {
        let rc = pthread_mutex_unlock(mutex)
        precondition(rc == 0, "pthread_mutex_unlock: \(rc)")
    }

    @inlinable
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A condition variable on `CLOCK_MONOTONIC`, used with one `Lock`, at a stable address.
public final class Condition: @unchecked Sendable {
    @usableFromInline let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        cond = .allocate(capacity: 1)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        let rc = pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
        precondition(rc == 0, "pthread_cond_init: \(rc)")
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    /// With `lock` held: releases it, sleeps until signalled (or spuriously), takes it again.
    @inlinable
    public func wait(_ lock: Lock) {
        let rc = pthread_cond_wait(cond, lock.mutex)
        precondition(rc == 0, "pthread_cond_wait: \(rc)")
    }

    /// As `wait`, until `deadline` (monotonic nanoseconds, `MonotonicClock`) at the latest: false
    /// once it has passed.
    @inlinable
    public func wait(_ lock: Lock, until deadline: UInt64) -> Bool {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        let rc = pthread_cond_timedwait(cond, lock.mutex, &ts)
        precondition(rc == 0 || rc == ETIMEDOUT, "pthread_cond_timedwait: \(rc)")
        return rc == 0
    }

    @inlinable
    public func signal() { pthread_cond_signal(cond) }

    @inlinable
    public func broadcast() { pthread_cond_broadcast(cond) }
}

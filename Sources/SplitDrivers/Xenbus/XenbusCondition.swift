import LinuxHost

/// A lock and a condition variable on `CLOCK_MONOTONIC` (LinuxHost's, at stable addresses).
final class XenbusCondition {
    private let mutex: Lock
    private let cond = Condition()

    init(recursive: Bool = false) { mutex = Lock(recursive: recursive) }

    func locked<R>(_ body: () throws -> R) rethrows -> R { try mutex.withLock(body) }

    /// With the lock held: sleeps until signalled or `deadline` (monotonic ns); false on timeout.
    func wait(until deadline: UInt64) -> Bool { cond.wait(mutex, until: deadline) }

    func broadcast() { cond.broadcast() }
}

/// Unique watch tokens within the process.
final class XenbusCounter {
    private let lock = XenbusCondition()
    private var n: UInt64 = 0
    func next() -> UInt64 { lock.locked { n += 1; return n } }
}

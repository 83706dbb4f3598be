import Glibc

/// A POSIX thread running a Swift closure (pthread_create(3)): for processes without Foundation
/// (domains), whose vCPUs and workers are plain threads. Join it or detach it, once.
public struct PosixThread: Sendable {
    public let id: pthread_t

    private final class Start {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread (default attributes: joinable, the default stack size). The
    /// error carries the errno pthread_create returned (EAGAIN: out of threads or memory).
    public static func start(_ body: @escaping () -> Void) throws -> PosixThread {
        let box = Unmanaged.passRetained(Start(body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: Errno(rawValue: rc))
        }
        return PosixThread(id: tid)
    }

    /// Starts `body` on a new thread nobody joins: its resources go when it returns.
    public static func startDetached(_ body: @escaping () -> Void) throws {
        try start(body).detach()
    }

    /// Waits for the thread to return (pthread_join(3)).
    public func join() { _ = pthread_join(id, nil) }

    /// Lets the thread's resources go when it returns, unjoined (pthread_detach(3)).
    public func detach() { _ = pthread_detach(id) }

    /// Sleeps the calling thread for `microseconds` (usleep(3), a nanosleep: a handled signal
    /// ends it early).
    public static func sleep(microseconds: UInt32) { _ = usleep(microseconds) }

    /// Lets another runnable thread have the CPU first (sched_yield(2)); returns at once when
    /// there is none. For spin loops that wait on a peer which may share the CPU.
    @inlinable @inline(__always)
    public static func yield() { _ = sched_yield() }
}

import LinuxHost

/// A kick eventfd: the dispatcher (or anyone) wakes a thread that polls it.
///
/// Closing is safe against late raisers. A XenStore watch callback already on its way, or a
/// thread that has not seen its device finish, can still raise a kick after the owner closed
/// it; a write to the closed descriptor number would land in whatever file took that number
/// next. In a driver domain that is usually a grant page's memfd just received from the
/// supervisor: the frontend's page then starts with a 64-bit 1, and that is what reached the
/// disk. So `raise` and `close` take a lock, and a closed kick ignores raises. `drain` and
/// `wait` are for the owner's thread, which closes the kick only after its last wait.
final class Kick {
    let fd: FileDescriptor
    private let event: EventFD
    private let mutex = Lock()
    @exclusivity(unchecked) private var closed = false
    /// What `wait` polls, made once (a wait allocates nothing): the kick, then `wait`'s `other`
    /// (-1, which poll(2) skips, when there is none).
    @exclusivity(unchecked) private var poll: Poll

    /// Non-blocking: a kick already consumed leaves nothing to wait for in `drain`.
    init() {
        fd = (try? FileDescriptor.eventfd()) ?? FileDescriptor(rawValue: -1)
        if fd.rawValue >= 0 { try? fd.setNonBlocking() }
        event = EventFD(fd)
        poll = Poll([(fd, .readable), (FileDescriptor(rawValue: -1), .readable)])
    }

    deinit { close() }

    var valid: Bool { fd.rawValue >= 0 }

    func raise() {
        mutex.lock()
        if !closed && valid { event.signal() }
        mutex.unlock()
    }

    /// Closes the eventfd; later raises do nothing. Idempotent.
    func close() {
        mutex.lock()
        if !closed {
            closed = true
            if valid { fd.close() }
        }
        mutex.unlock()
    }

    /// Consumes a pending kick, if any (never blocks).
    func drain() {
        event.consume()
    }

    /// Sleeps until kicked, `other` is readable or `timeoutMs` passes; consumes the kick. One
    /// poll(2): a signal (EINTR) ends the wait early, which the callers' loops take as a wake-up.
    func wait(timeoutMs: Int32, other: FileDescriptor? = nil) {
        poll.set(1, other ?? FileDescriptor(rawValue: -1))
        if case .success = poll.waitOnce(timeoutMs: timeoutMs), poll.isReady(0) { event.consume() }
    }
}

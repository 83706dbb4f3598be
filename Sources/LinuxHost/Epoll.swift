import CProcvisor
import Glibc

/// An epoll instance: the supervisor's single event loop waits on one of these.
public final class Epoll {
    public struct Events: OptionSet, Sendable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: UInt32(EPOLLIN.rawValue))
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        public static let hangup = Events(rawValue: EPOLLHUP.rawValue)
        public static let readHangup = Events(rawValue: EPOLLRDHUP.rawValue)
        public static let error = Events(rawValue: EPOLLERR.rawValue)
    }

    public let fd: FileDescriptor

    public init() throws {
        let raw = try retrying("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        fd = FileDescriptor(rawValue: raw)
    }

    deinit { fd.close() }

    /// Registers `target` with a caller token (returned by `wait`).
    public func add(_ target: FileDescriptor, events: Events, token: UInt64) throws {
        var ev = epoll_event()
        ev.events = events.rawValue
        ev.data.u64 = token
        try retrying("epoll_ctl(ADD)", "\(target)") { epoll_ctl(fd.rawValue, EPOLL_CTL_ADD, target.rawValue, &ev) }
    }

    public func modify(_ target: FileDescriptor, events: Events, token: UInt64) throws {
        var ev = epoll_event()
        ev.events = events.rawValue
        ev.data.u64 = token
        try retrying("epoll_ctl(MOD)", "\(target)") { epoll_ctl(fd.rawValue, EPOLL_CTL_MOD, target.rawValue, &ev) }
    }

    public func remove(_ target: FileDescriptor) {
        var ev = epoll_event()
        _ = epoll_ctl(fd.rawValue, EPOLL_CTL_DEL, target.rawValue, &ev)
    }

    /// Waits up to `timeoutMs` (-1 forever). Returns (token, events) pairs; [] on timeout or EINTR.
    public func wait(maxEvents: Int = 64, timeoutMs: Int32) throws -> [(token: UInt64, events: Events)] {
        var buf = [epoll_event](repeating: epoll_event(), count: maxEvents)
        let n = epoll_wait(fd.rawValue, &buf, Int32(maxEvents), timeoutMs)
        if n < 0 {
            let e = Errno.current
            if e == .interrupted { return [] }
            throw SystemError("epoll_wait", errno: e)
        }
        return (0..<Int(n)).map { (buf[$0].data.u64, Events(rawValue: buf[$0].events)) }
    }
}

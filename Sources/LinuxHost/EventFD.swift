import Glibc

/// An eventfd(2) seen as what it is: a 64-bit counter the kernel keeps, readable while it is not
/// zero. `signal` adds to it (a doorbell: many signals before a `consume` fold into one wake-up);
/// `consume` reads it back and resets it to zero. A thin view of the descriptor: it owns nothing,
/// so whoever created the eventfd (`FileDescriptor.eventfd`) closes it.
public struct EventFD: Hashable, Sendable {
    public let fd: FileDescriptor

    /// The eventfd behind `fd` (not checked: on another kind of descriptor `signal` and `consume`
    /// would write and read 8 bytes of it).
    @inlinable public init(_ fd: FileDescriptor) { self.fd = fd }

    /// A new eventfd (close-on-exec), non-blocking when asked: `consume` then returns nil at once
    /// when the counter is zero instead of sleeping until it is not.
    public static func create(initialValue: UInt32 = 0, nonBlocking: Bool = false) throws -> EventFD {
        let fd = try FileDescriptor.eventfd(initialValue: initialValue)
        if nonBlocking {
            do { try fd.setNonBlocking() } catch {
                fd.close()
                throw error
            }
        }
        return EventFD(fd)
    }

    /// Adds `count` to the counter (an 8-byte write(2)). Best effort, as a doorbell is: a failure
    /// (EAGAIN at the counter's maximum on a non-blocking eventfd, EBADF once it was closed) is
    /// reported by the return value only.
    @inlinable @inline(__always) @discardableResult
    public func signal(_ count: UInt64 = 1) -> Bool {
        var value = count
        return Glibc.write(fd.rawValue, &value, 8) == 8
    }

    /// Reads the counter and resets it to zero (an 8-byte read(2)); nil when it was zero on a
    /// non-blocking eventfd (EAGAIN), or on any other failure. On a blocking one it sleeps until
    /// the counter is not zero.
    @inlinable @inline(__always) @discardableResult
    public func consume() -> UInt64? {
        var value: UInt64 = 0
        return Glibc.read(fd.rawValue, &value, 8) == 8 ? value : nil
    }
}

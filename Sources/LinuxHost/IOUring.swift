import CProcvisor
import Glibc

/// An io_uring instance (liburing). The owner frees the ring in `deinit`.
///
/// Where the kernel refuses io_uring (`io_uring_disabled`, a seccomp policy, an old kernel) `init`
/// throws with EPERM/ENOSYS: callers fall back to a thread pool with preadv/pwritev. Setting
/// `PROCVISOR_FORCE_NO_IOURING=1` makes `IOUring.probe()` report it refused, so tests cover both paths.
public final class IOUring {
    let ring: UnsafeMutableRawPointer

    public init(entries: UInt32 = 64) throws {
        var err: Int32 = 0
        guard let r = pv_uring_create(entries, &err) else {
            throw SystemError("io_uring_queue_init", "\(entries) entries", errno: Errno(rawValue: -err))
        }
        ring = r
    }

    deinit { pv_uring_destroy(ring) }

    /// Whether io_uring can be used here; the errno that refused it otherwise.
    public static func probe(environment: [String: String] = Process.environment()) -> Errno? {
        if environment["PROCVISOR_FORCE_NO_IOURING"] == "1" { return .notPermitted }
        do {
            _ = try IOUring(entries: 2)
            return nil
        } catch let e as SystemError {
            return e.errno
        } catch {
            return .noSys
        }
    }

    /// Queues a read into `buffer` (which must stay valid until its completion).
    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_read", "\(fd)") {
            pv_uring_prep_read(ring, fd.rawValue, buffer.baseAddress, UInt32(buffer.count), offset, userData)
        }
    }

    /// Queues a write from `buffer` (which must stay valid until its completion).
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_write", "\(fd)") {
            pv_uring_prep_write(ring, fd.rawValue, buffer.baseAddress, UInt32(buffer.count), offset, userData)
        }
    }

    /// Submits everything queued; returns how many entries the kernel took.
    @discardableResult
    public func submit() throws -> Int {
        Int(try negErrno("io_uring_submit") { pv_uring_submit(ring) })
    }

    /// One completion: the submitter's tag and the operation's result (bytes, or -errno).
    public func complete(wait: Bool = true) throws -> (userData: UInt64, result: Int32)? {
        var tag: UInt64 = 0
        var res: Int32 = 0
        let rc = pv_uring_complete(ring, wait ? 1 : 0, &tag, &res)
        if rc == -EAGAIN && !wait { return nil }
        if rc < 0 { throw SystemError("io_uring_wait_cqe", errno: Errno(rawValue: -rc)) }
        return (tag, res)
    }
}

import CProcvisor
import Glibc

/// An errno value with the C name and the kernel's message (`strerror`).
public struct Errno: Error, Equatable, Hashable, CustomStringConvertible, Sendable {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The errno of the last failed libc call on this thread.
    public static var current: Errno { Errno(rawValue: pv_errno()) }

    public static let interrupted = Errno(rawValue: EINTR)
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let noSuchFile = Errno(rawValue: ENOENT)
    public static let noSuchProcess = Errno(rawValue: ESRCH)
    public static let noSuchDeviceOrAddress = Errno(rawValue: ENXIO)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let permissionDenied = Errno(rawValue: EACCES)
    public static let notPermitted = Errno(rawValue: EPERM)
    public static let readOnlyFileSystem = Errno(rawValue: EROFS)
    public static let brokenPipe = Errno(rawValue: EPIPE)
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    public static let timedOut = Errno(rawValue: ETIMEDOUT)
    public static let noSys = Errno(rawValue: ENOSYS)
    public static let noMemory = Errno(rawValue: ENOMEM)
    public static let exists = Errno(rawValue: EEXIST)
    public static let badFileDescriptor = Errno(rawValue: EBADF)
    public static let badAddress = Errno(rawValue: EFAULT)
    public static let busy = Errno(rawValue: EBUSY)
    public static let noDevice = Errno(rawValue: ENODEV)
    /// EIO: the device (or the file system) failed the transfer; also what a block device gives
    /// for a transfer past its end that makes no progress.
    public static let ioError = Errno(rawValue: EIO)
    /// EMFILE: this process has as many descriptors open as RLIMIT_NOFILE allows.
    public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
    /// ENFILE: the system-wide limit on open files is reached.
    public static let tooManyOpenFilesInSystem = Errno(rawValue: ENFILE)

    /// The system's text for the errno alone (strerror): `No such file or directory`.
    public var message: String { String(cString: strerror(rawValue)) }

    public var description: String { "\(message) (errno \(rawValue))" }
}

/// A failed system call with its context: which call, on what, and the errno.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var context: String
    public var errno: Errno

    public init(_ call: String, _ context: String = "", errno: Errno) {
        self.call = call
        self.context = context
        self.errno = errno
    }

    public var description: String {
        context.isEmpty ? "\(call): \(errno)" : "\(call) \(context): \(errno)"
    }
}

/// Runs a libc call that returns -1 and sets errno, retrying EINTR.
@inline(__always)
@discardableResult
func retrying<T: BinaryInteger>(_ call: String, _ context: @autoclosure () -> String = "", _ body: () -> T) throws -> T {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let e = Errno.current
        if e == .interrupted { continue }
        throw SystemError(call, context(), errno: e)
    }
}

/// Runs a shim that returns -errno on failure, retrying EINTR.
@inline(__always)
@discardableResult
func negErrno<T: SignedInteger>(_ call: String, _ context: @autoclosure () -> String = "", _ body: () -> T) throws -> T {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let e = Errno(rawValue: Int32(truncatingIfNeeded: 0 - rc))
        if e == .interrupted { continue }
        throw SystemError(call, context(), errno: e)
    }
}

import Glibc
import LinuxHost

/// Bytes waiting to go out on a non-blocking stream socket (control and XenStore clients).
struct OutputBuffer {
    enum FlushResult { case done, wouldBlock, failed }

    private var bytes: [UInt8] = []
    private var offset = 0

    var pending: Int { bytes.count - offset }

    mutating func append(_ b: [UInt8]) {
        if offset > 0 && offset == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            offset = 0
        }
        bytes += b
    }

    /// Writes what the socket takes now.
    mutating func flush(to fd: FileDescriptor) -> FlushResult {
        while pending > 0 {
            let n = bytes.withUnsafeBytes { p in
                Glibc.send(fd.rawValue, p.baseAddress! + offset, pending, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n > 0 {
                offset += n
                continue
            }
            let e = Errno.current
            if n < 0 && e == .interrupted { continue }
            if n < 0 && e == .wouldBlock { return .wouldBlock }
            return .failed
        }
        bytes.removeAll(keepingCapacity: true)
        offset = 0
        return .done
    }
}

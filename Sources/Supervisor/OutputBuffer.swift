import LinuxHost

/// Bytes waiting to go out on a non-blocking stream socket (control and XenStore clients).
struct OutputBuffer {
    enum FlushResult { case done, wouldBlock, failed }

    private var bytes: [UInt8] = []
    private var offset = 0

    var pending: Int { bytes.count - offset }

    /// The bytes not sent yet.
    var unsent: [UInt8] { Array(bytes[offset...]) }

    mutating func append(_ b: [UInt8]) {
        if offset > 0 && offset == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            offset = 0
        } else if offset >= 64 << 10 && offset * 2 >= bytes.count {
            // What was sent goes, so a reader that always leaves a little behind cannot make the
            // buffer grow without end.
            bytes.removeFirst(offset)
            offset = 0
        }
        bytes += b
    }

    /// Writes what the socket takes now.
    mutating func flush(to fd: FileDescriptor) -> FlushResult {
        while pending > 0 {
            switch bytes.withUnsafeBytes({ fd.send(UnsafeRawBufferPointer(rebasing: $0[offset...]), dontWait: true) }) {
            case let .success(n) where n > 0: offset += n
            case .failure(.wouldBlock): return .wouldBlock
            case .success, .failure: return .failed
            }
        }
        bytes.removeAll(keepingCapacity: true)
        offset = 0
        return .done
    }
}

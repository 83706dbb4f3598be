/// What a request does.
public enum BlockIOOp: Sendable, Equatable {
    /// preadv into `iov`: succeeds only if every byte was read.
    case read
    /// pwritev from `iov`: succeeds only if every byte was written.
    case write
    /// fdatasync (FLUSH_DISKCACHE, WRITE_BARRIER).
    case flush
    /// fallocate(PUNCH_HOLE | KEEP_SIZE) of `length` bytes at `offset` (DISCARD): reads back zeros.
    case discard
}

/// One block I/O request. The buffers must stay valid (mapped) until the request's completion has
/// been returned by `reap`, or until `close` returns.
public struct BlockIORequest {
    public var op: BlockIOOp
    /// Byte offset on the disk.
    public var offset: UInt64
    /// read/write: the buffers, in disk order (contiguous on disk). Empty for flush and discard.
    public var iov: [UnsafeMutableRawBufferPointer]
    /// discard: bytes to punch. Ignored for read/write (the iovecs' total counts) and flush.
    public var length: UInt64
    /// The caller's tag, returned in the completion.
    public var tag: UInt64
    /// read/write: every buffer lies inside this registered buffer of the engine
    /// (`IOUringBlockIOEngine.setFixedBuffer`), so the kernel need not pin the pages per
    /// transfer. A hint: engines without registered buffers ignore it.
    public var fixedBuffer: Int?

    public init(op: BlockIOOp, offset: UInt64, iov: [UnsafeMutableRawBufferPointer] = [], length: UInt64 = 0, tag: UInt64,
                fixedBuffer: Int? = nil) {
        self.op = op
        self.offset = offset
        self.iov = iov
        self.length = length
        self.tag = tag
        self.fixedBuffer = fixedBuffer
    }

    public static func read(offset: UInt64, into iov: [UnsafeMutableRawBufferPointer], tag: UInt64, fixedBuffer: Int? = nil) -> BlockIORequest {
        BlockIORequest(op: .read, offset: offset, iov: iov, length: UInt64(iov.reduce(0) { $0 + $1.count }), tag: tag, fixedBuffer: fixedBuffer)
    }

    public static func write(offset: UInt64, from iov: [UnsafeMutableRawBufferPointer], tag: UInt64, fixedBuffer: Int? = nil) -> BlockIORequest {
        BlockIORequest(op: .write, offset: offset, iov: iov, length: UInt64(iov.reduce(0) { $0 + $1.count }), tag: tag, fixedBuffer: fixedBuffer)
    }

    public static func flush(tag: UInt64) -> BlockIORequest { BlockIORequest(op: .flush, offset: 0, tag: tag) }

    public static func discard(offset: UInt64, length: UInt64, tag: UInt64) -> BlockIORequest {
        BlockIORequest(op: .discard, offset: offset, length: length, tag: tag)
    }
}

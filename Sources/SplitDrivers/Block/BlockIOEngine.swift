import LinuxHost

/// The outcome of one request: bytes transferred (read/write: always the full size; discard: the
/// length; flush: 0), or the errno. A read that reaches the end of the file before its last byte
/// fails with EIO (as I/O beyond the end of a block device does); so does a write that makes no
/// progress. A malformed request (no buffers, more than 1024 iovecs, offset + size past 2^63) fails
/// with EINVAL.
public struct BlockIOCompletion: Sendable, Equatable {
    public var tag: UInt64
    public var result: Result<Int, Errno>

    public init(tag: UInt64, result: Result<Int, Errno>) {
        self.tag = tag
        self.result = result
    }
}

/// An I/O engine on one disk descriptor. The engine never closes the disk descriptor.
public protocol BlockIOEngine: AnyObject {
    /// "io_uring" or "threads".
    var name: String { get }
    /// Queues the batch and starts it with one submission (one io_uring_enter, or one wake-up of
    /// the pool). Requests beyond the queue depth wait inside the engine and start as earlier ones
    /// complete (during `reap`). Bad requests are not thrown: they complete with EINVAL. Throws only
    /// after `close` (EBADF) or when io_uring itself fails (the engine is then unusable).
    func submit(_ batch: [BlockIORequest]) throws
    /// The completions available now, in no particular order; with `wait`, blocks until there is at
    /// least one — unless nothing is in flight, when it returns [] at once. Also starts queued
    /// requests and resubmits the rest of short transfers.
    func reap(wait: Bool) -> [BlockIOCompletion]
    /// A non-blocking eventfd that becomes readable when completions are ready; `reap` clears it.
    /// Owned by the engine (closed by `close`). A wake-up may be spurious: `reap` then returns [].
    var completionFD: FileDescriptor { get }
    /// Drops requests not yet started, waits for those in progress (their buffers are not touched
    /// after `close` returns), stops the engine's threads and closes its descriptors. Idempotent.
    func close()
}

import LinuxHost

// blkback's I/O engine: reads and writes straight into (mapped grant) pages, flushes and discards,
// on a descriptor the supervisor opened. io_uring when the kernel allows it, else a fixed pool of
// threads doing preadv/pwritev/fdatasync/fallocate with the same semantics.
//
// Thread rules (both engines): `submit`, `reap` and `close` are called from ONE thread, the
// backend's event-loop thread; the engines are not safe to call concurrently. The thread-pool
// engine's workers are internal and never call back into the caller. `completionFD` may sit in the
// caller's epoll set on that same thread.
//
// Ordering: requests in flight are unordered with respect to each other (as bios in Linux's
// blkback). A flush covers the writes that had COMPLETED when it was submitted; a caller that needs
// a barrier (WRITE_BARRIER) waits for the earlier requests to complete before submitting the flush.

/// Chooses and makes blkback's I/O engine (`BlockIOEngine`): io_uring (`IOUringBlockIOEngine`) or
/// the thread pool (`ThreadPoolBlockIOEngine`).
public enum BlockIO {
    /// The setting (and environment variable, as `IOUring.probe` honours it) that forces the
    /// thread-pool engine: `BlockIOSettings.forceThreadPool`.
    public static let forceNoIOUringVariable = "PROCVISOR_FORCE_NO_IOURING"
    /// Worker threads of the fallback engine (fewer if the queue depth is smaller).
    public static let poolThreads = 4
    /// The most iovecs one request may have (UIO_MAXIOV).
    public static let maxSegments = 1024

    /// io_uring when allowed (and not forced off: `settings.forceThreadPool`), else the
    /// thread pool; `log` is called once with the choice and the reason. `queueDepth` bounds the
    /// requests the kernel (or the pool) works on at once; more may be submitted.
    /// Creates the pool's threads now, so a caller installing a seccomp filter afterwards does not
    /// need clone in its allow-list. Traps only if not even an eventfd or one thread can be had
    /// (see `engine(...)` for a throwing variant).
    public static func makeEngine(disk: FileDescriptor, queueDepth: Int,
                                  settings: BlockIOSettings = BlockIOSettings(), log: (String) -> Void) -> BlockIOEngine {
        do {
            return try engine(disk: disk, queueDepth: queueDepth, settings: settings, log: log)
        } catch {
            fatalError("block I/O: no engine: \(error)")
        }
    }

    /// As `makeEngine`, throwing when neither engine can be created.
    public static func engine(disk: FileDescriptor, queueDepth: Int,
                              settings: BlockIOSettings = BlockIOSettings(), log: (String) -> Void) throws -> BlockIOEngine {
        let depth = Swift.max(1, Swift.min(queueDepth, 4096))
        let why: String
        if settings.forceThreadPool {
            why = "\(forceNoIOUringVariable)=1"
        } else {
            do {
                let engine = try IOUringBlockIOEngine(disk: disk, queueDepth: depth)
                log("block I/O: io_uring, queue depth \(depth)\(engine.fixedFile ? ", registered file" : "")")
                return engine
            } catch let e as SystemError {
                why = e.errno == .notPermitted
                    ? "io_uring refused: \(e) (kernel.io_uring_disabled or a seccomp policy)"
                    : "io_uring unavailable: \(e)"
            }
        }
        let engine = try ThreadPoolBlockIOEngine(disk: disk, queueDepth: depth)
        log("block I/O: \(engine.threadCount) threads with preadv/pwritev (\(why))")
        return engine
    }
}

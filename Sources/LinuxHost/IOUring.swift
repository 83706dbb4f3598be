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

    init(raw: UnsafeMutableRawPointer) { ring = raw }

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

// MARK: - Block I/O: vectored transfers, sync, fallocate, batches, registered files, eventfd

extension IOUring {
    /// What an operation acts on: a plain descriptor, or an index into the files registered with
    /// `registerFiles` (IOSQE_FIXED_FILE: the kernel skips the fd table lookup and refcount per op).
    public enum Target: Equatable, Sendable {
        case descriptor(FileDescriptor)
        case registered(Int32)

        @inline(__always) var fd: Int32 {
            switch self {
            case .descriptor(let d): return d.rawValue
            case .registered(let i): return i
            }
        }

        @inline(__always) var sqeFlags: UInt32 {
            if case .registered = self { return PV_IOSQE_FIXED_FILE }
            return 0
        }
    }

    /// fallocate(2) modes.
    public static let fallocateKeepSize: Int32 = PV_FALLOC_KEEP_SIZE
    public static let fallocatePunchHole: Int32 = PV_FALLOC_PUNCH_HOLE

    /// Queues IORING_OP_READV into `count` iovecs at `offset`. The iovec array and the buffers must
    /// stay valid until the completion (the array only until `submit` returns when
    /// `hasStableSubmission`). Throws EBUSY when the submission queue is full: submit, then retry.
    public func readv(_ target: Target, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_readv", "\(target)") {
            pv_uring_prep_readv(ring, target.fd, iovecs, UInt32(count), offset, userData, target.sqeFlags)
        }
    }

    /// Queues IORING_OP_WRITEV from `count` iovecs at `offset` (same lifetime rules as `readv`).
    public func writev(_ target: Target, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_writev", "\(target)") {
            pv_uring_prep_writev(ring, target.fd, iovecs, UInt32(count), offset, userData, target.sqeFlags)
        }
    }

    /// Queues a read (`write` false) or write of `count` iovecs at `offset` that all lie inside
    /// registered buffer `bufferIndex` (`updateBuffer`): IORING_OP_READ_FIXED / WRITE_FIXED for
    /// one iovec, READV_FIXED / WRITEV_FIXED for more (check `supportsVectoredFixed` first). The
    /// kernel does not pin the pages again: registration did. Same lifetime rules as `readv`.
    public func transferFixed(_ target: Target, write: Bool, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64,
                              bufferIndex: Int, userData: UInt64) throws {
        try negErrno("io_uring_prep_\(write ? "write" : "read")\(count == 1 ? "" : "v")_fixed", "\(target), buffer \(bufferIndex)") {
            count == 1
                ? pv_uring_prep_rw_fixed(ring, write ? PV_IORING_OP_WRITE_FIXED : PV_IORING_OP_READ_FIXED, target.fd,
                                         iovecs.pointee.iov_base, UInt32(iovecs.pointee.iov_len), offset, UInt32(bufferIndex),
                                         userData, target.sqeFlags)
                : pv_uring_prep_rw_fixed(ring, write ? PV_IORING_OP_WRITEV_FIXED : PV_IORING_OP_READV_FIXED, target.fd,
                                         iovecs, UInt32(count), offset, UInt32(bufferIndex), userData, target.sqeFlags)
        }
    }

    /// Whether the kernel implements IORING_OP_READV_FIXED and WRITEV_FIXED (Linux 6.15).
    public var supportsVectoredFixed: Bool {
        pv_uring_supports(ring, PV_IORING_OP_READV_FIXED) == 1 && pv_uring_supports(ring, PV_IORING_OP_WRITEV_FIXED) == 1
    }

    /// Registers a table of `count` empty buffer slots (IORING_REGISTER_BUFFERS2, sparse).
    public func registerBufferTable(count: Int) throws {
        try negErrno("IORING_REGISTER_BUFFERS2", "\(count) sparse buffers") { pv_uring_register_buffer_table(ring, UInt32(count)) }
    }

    /// Points registered buffer `index` at `buffer` (IORING_REGISTER_BUFFERS_UPDATE): the kernel
    /// pins its pages now, and keeps them pinned until the slot changes or the ring closes.
    /// Requests already submitted keep the buffer they were given. Nil empties the slot.
    public func updateBuffer(_ index: Int, _ buffer: UnsafeMutableRawBufferPointer?) throws {
        try negErrno("IORING_REGISTER_BUFFERS_UPDATE", "buffer \(index), \(buffer?.count ?? 0) bytes") {
            pv_uring_update_buffer(ring, UInt32(index), buffer?.baseAddress, buffer?.count ?? 0)
        }
    }

    /// Queues IORING_OP_FSYNC; `dataOnly` is fdatasync (IORING_FSYNC_DATASYNC).
    /// Unordered with respect to other queued operations: it covers writes already completed.
    public func fsync(_ target: Target, dataOnly: Bool = true, userData: UInt64) throws {
        try negErrno("io_uring_prep_fsync", "\(target)") {
            pv_uring_prep_fsync(ring, target.fd, dataOnly ? PV_IORING_FSYNC_DATASYNC : 0, userData, target.sqeFlags)
        }
    }

    /// Queues IORING_OP_FALLOCATE with `mode` (`fallocatePunchHole | fallocateKeepSize` discards).
    public func fallocate(_ target: Target, mode: Int32, offset: UInt64, length: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_fallocate", "\(target)") {
            pv_uring_prep_fallocate(ring, target.fd, mode, Int64(bitPattern: offset), Int64(bitPattern: length),
                                    userData, target.sqeFlags)
        }
    }

    /// Free slots in the submission queue (how many more operations can be queued before `submit`).
    public var submissionSpace: Int { Int(pv_uring_sq_space_left(ring)) }

    /// Operations queued but not yet taken by the kernel (left after a partial or failed `submit`).
    public var unsubmitted: Int { Int(pv_uring_sq_ready(ring)) }

    /// Submits everything queued (one io_uring_enter) and waits until `count` completions are
    /// available, without consuming them (`harvest` does). Returns how many entries the kernel took.
    @discardableResult
    public func submit(waitingFor count: Int) throws -> Int {
        Int(try negErrno("io_uring_submit_and_wait") { pv_uring_submit_and_wait(ring, UInt32(count)) })
    }

    /// Consumes up to `max` completions that are ready, without blocking, calling `body` with each
    /// one's tag and result (bytes, or -errno). Returns how many were consumed.
    @discardableResult
    public func harvest(max: Int = .max, _ body: (_ userData: UInt64, _ result: Int32) -> Void) -> Int {
        var total = 0
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 64) { tags in
            withUnsafeTemporaryAllocation(of: Int32.self, capacity: 64) { results in
                while total < max {
                    let want = UInt32(Swift.min(64, max - total))
                    let n = Int(pv_uring_harvest(ring, tags.baseAddress, results.baseAddress, want))
                    for i in 0..<n { body(tags[i], results[i]) }
                    total += n
                    if n < Int(want) { break }
                }
            }
        }
        return total
    }

    /// io_uring_register_files: afterwards `.registered(i)` names `files[i]`. The ring keeps its own
    /// reference to each file until it is destroyed.
    public func registerFiles(_ files: [FileDescriptor]) throws {
        let raw = files.map(\.rawValue)
        try negErrno("io_uring_register_files", "\(files.count) files") {
            pv_uring_register_files(ring, raw, UInt32(raw.count))
        }
    }

    /// IORING_REGISTER_EVENTFD: the kernel signals `eventfd` whenever it posts a completion, so the
    /// ring can sit in an epoll set next to other descriptors.
    public func registerEventFD(_ eventfd: FileDescriptor) throws {
        try negErrno("io_uring_register_eventfd", "\(eventfd)") { pv_uring_register_eventfd(ring, eventfd.rawValue) }
    }

    /// IORING_FEAT_SUBMIT_STABLE: once `submit` returns, the kernel no longer reads the submitted
    /// entries' side data (iovec arrays), only the buffers they point to.
    public var hasStableSubmission: Bool { pv_uring_features(ring) & PV_IORING_FEAT_SUBMIT_STABLE != 0 }

    /// IORING_FEAT_NODROP: completions beyond the completion queue's size are kept, not dropped.
    public var keepsOverflowingCompletions: Bool { pv_uring_features(ring) & PV_IORING_FEAT_NODROP != 0 }
}

// MARK: - One thread owning the ring: deferred completion work, futex waits

extension IOUring {
    /// A ring for one thread that submits and reaps everything itself (IORING_SETUP_SINGLE_ISSUER
    /// with DEFER_TASKRUN, created disabled: the thread that calls `enable` becomes its owner).
    /// Completion work then runs only when the owner asks for completions, never by interrupting
    /// it. Kernels before 6.1 get COOP_TASKRUN, before 5.19 a plain ring (`enable` is then a no-op).
    public static func owned(entries: UInt32) throws -> IOUring {
        let choices: [UInt32] = [
            PV_IORING_SETUP_SINGLE_ISSUER | PV_IORING_SETUP_DEFER_TASKRUN | PV_IORING_SETUP_TASKRUN_FLAG | PV_IORING_SETUP_R_DISABLED,
            PV_IORING_SETUP_COOP_TASKRUN | PV_IORING_SETUP_TASKRUN_FLAG,
        ]
        for flags in choices {
            var err: Int32 = 0
            if let r = pv_uring_create_flags(entries, flags, &err) { return IOUring(raw: r) }
            if err != -EINVAL { throw SystemError("io_uring_queue_init", "\(entries) entries", errno: Errno(rawValue: -err)) }
        }
        return try IOUring(entries: entries)
    }

    /// Makes the calling thread the owner of a ring from `owned` (IORING_REGISTER_ENABLE_RINGS).
    public func enable() throws {
        guard pv_uring_setup_flags(ring) & PV_IORING_SETUP_R_DISABLED != 0 else { return }
        try negErrno("io_uring_enable_rings") { pv_uring_enable(ring) }
    }

    /// Whether the kernel implements IORING_OP_FUTEX_WAIT (Linux 6.7).
    public var supportsFutexWait: Bool { pv_uring_supports(ring, PV_IORING_OP_FUTEX_WAIT) == 1 }

    /// Queues IORING_OP_FUTEX_WAIT on a shared 32-bit futex word (another process may wake it):
    /// completes with 0 once woken, at once with -EAGAIN if `word` no longer holds `expected`.
    public func futexWait(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32, userData: UInt64) throws {
        try negErrno("io_uring_prep_futex_wait") { pv_uring_prep_futex_wait(ring, word, expected, userData) }
    }

    /// Queues a one-shot IORING_OP_POLL_ADD for readability of `fd`: completes with the revents.
    public func pollReadable(_ fd: FileDescriptor, userData: UInt64) throws {
        try negErrno("io_uring_prep_poll_add", "\(fd)") { pv_uring_prep_poll(ring, fd.rawValue, UInt32(POLLIN), userData) }
    }

    /// Submits what is queued and waits until `count` completions are available or `timeoutNs`
    /// passed (no error then); completions are not consumed (`harvest` does).
    public func submit(waitingFor count: Int, timeoutNs: Int64) throws {
        try negErrno("io_uring_submit_and_wait_timeout") { pv_uring_submit_and_wait_timeout(ring, UInt32(count), timeoutNs) }
    }

    /// Runs the completion work the kernel deferred to this thread, if it flagged any, so that
    /// `harvest` sees it (one system call, only when needed).
    public func flushDeferredCompletions() { pv_uring_flush_deferred(ring) }

    /// Completions ready, or deferred completion work flagged: no system call.
    public var hasCompletions: Bool { pv_uring_has_completions(ring) != 0 }
}

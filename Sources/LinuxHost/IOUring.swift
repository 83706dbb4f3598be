import CProcvisor
import Glibc

/// An io_uring instance (liburing). The owner frees the ring in `deinit`.
///
/// Every ring is restricted (`IORingPolicy`): created disabled, limited to the operations the
/// backends use, every SQE on a registered file (`Target.registered`), then enabled.
///
/// Where the kernel refuses io_uring (`io_uring_disabled`, a seccomp policy, an old kernel) `init` throws with EPERM/ENOSYS: callers fall back to a thread pool with
/// preadv/pwritev. Setting `PROCVISOR_FORCE_NO_IOURING=1` makes `IOUring.probe()` report it
/// refused, so tests cover both paths.
public final class IOUring {
    let ring: UnsafeMutableRawPointer
    /// IORING_REGISTER_ENABLE_RINGS has been done (by `enable`, or by `init(entries:)`).
    public private(set) var enabled = false

    /// A ring for any thread, enabled at once: register files (`registerFiles`) before using it.
    public init(entries: UInt32 = 64) throws {
        ring = try Self.make(IORingPolicy.Request(entries: entries))
        try enable()
    }

    /// Maps a ring made elsewhere (`IORingPolicy.create`, possibly in another process): its descriptor and the
    /// io_uring_params the kernel returned. The ring owns `fd` from then on; on failure `fd` is
    /// left to the caller. Not enabled: register what is needed, then `enable`.
    public init(adopting fd: FileDescriptor, params: [UInt8]) throws {
        var err: Int32 = 0
        guard let r = params.withUnsafeBytes({ pv_uring_adopt(fd.rawValue, $0.baseAddress, $0.count, &err) }) else {
            throw SystemError("io_uring_queue_mmap", "\(fd)", errno: Errno(rawValue: -err))
        }
        ring = r
    }

    init(raw: UnsafeMutableRawPointer) { ring = raw }

    /// A ring without restrictions, enabled: only for tests that show an operation the policy
    /// refuses does work where nothing restricts it (so the refusal is the policy's doing).
    init(unrestrictedForTesting entries: UInt32) throws {
        var err: Int32 = 0
        guard let r = pv_uring_create(entries, &err) else {
            throw SystemError("io_uring_queue_init", "\(entries) entries", errno: Errno(rawValue: -err))
        }
        ring = r
        enabled = true
    }

    deinit { pv_uring_destroy(ring) }

    /// A restricted, disabled ring, mapped.
    static func make(_ request: IORingPolicy.Request) throws -> UnsafeMutableRawPointer {
        let made = try IORingPolicy.create(request)
        var err: Int32 = 0
        guard let r = made.params.withUnsafeBytes({ pv_uring_adopt(made.fd.rawValue, $0.baseAddress, $0.count, &err) }) else {
            made.fd.close()
            throw SystemError("io_uring_queue_mmap", "ring \(made.fd) (\(request))", errno: Errno(rawValue: -err))
        }
        return r
    }

    /// The ring's descriptor (owned by the ring).
    public var descriptor: FileDescriptor { FileDescriptor(rawValue: pv_uring_ring_fd(ring)) }

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

    /// Queues a read into `buffer` (which must stay valid until its completion). `offset`
    /// UInt64.max reads at the file position (taps, eventfds).
    public func read(_ target: Target, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_read", "\(target)") {
            pv_uring_prep_raw(ring, PV_IORING_OP_READ, target.fd, UInt64(UInt(bitPattern: buffer.baseAddress)), UInt32(buffer.count),
                              offset, 0, 0, target.sqeFlags, userData)
        }
    }

    /// Queues a write from `buffer` (which must stay valid until its completion).
    public func write(_ target: Target, from buffer: UnsafeRawBufferPointer, offset: UInt64, userData: UInt64) throws {
        try negErrno("io_uring_prep_write", "\(target)") {
            pv_uring_prep_raw(ring, PV_IORING_OP_WRITE, target.fd, UInt64(UInt(bitPattern: buffer.baseAddress)), UInt32(buffer.count),
                              offset, 0, 0, target.sqeFlags, userData)
        }
    }

    /// Queues any SQE (io_uring_prep_rw's layout plus the operation's flags word): for tests
    /// showing what a restricted ring refuses. `sqeFlags` is IOSQE_*.
    public func prepareRaw(opcode: Int32, fd: Int32, address: UInt64 = 0, length: UInt32 = 0, offset: UInt64 = 0,
                           operationFlags: UInt32 = 0, address3: UInt64 = 0, sqeFlags: UInt32 = 0, userData: UInt64) throws {
        try negErrno("io_uring_prep_rw", "opcode \(opcode)") {
            pv_uring_prep_raw(ring, opcode, fd, address, length, offset, operationFlags, address3, sqeFlags, userData)
        }
    }

    /// io_uring_register with `opcode` and no argument: the kernel's answer (>= 0) or the errno.
    public func registerWithoutArgument(_ opcode: Int32) -> Result<Int32, Errno> {
        let rc = pv_uring_register_noarg(pv_uring_ring_fd(ring), UInt32(opcode))
        return rc < 0 ? .failure(Errno(rawValue: -rc)) : .success(rc)
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
    /// What an operation acts on: an index into the files registered with `registerFiles`
    /// (IOSQE_FIXED_FILE: the kernel skips the fd table lookup and refcount per op), or a plain
    /// descriptor, which the restrictions every ring carries refuse (EACCES): it is here so
    /// tests can show that.
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

    /// Points registered file `index` at `fd` (IORING_REGISTER_FILES_UPDATE), nil empties it. The
    /// table must exist (`registerFiles`; -1 entries there are empty slots).
    public func updateFile(_ index: Int, _ fd: FileDescriptor?) throws {
        try negErrno("IORING_REGISTER_FILES_UPDATE", "slot \(index) = \(fd.map { "\($0)" } ?? "empty")") {
            pv_uring_update_file(ring, UInt32(index), fd?.rawValue ?? -1)
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
    /// it. Kernels before 6.1 get COOP_TASKRUN, before 5.19 a plain ring (enabled all the same:
    /// every ring starts disabled, for its restrictions).
    public static func owned(entries: UInt32) throws -> IOUring {
        let choices: [UInt32] = [
            PV_IORING_SETUP_SINGLE_ISSUER | PV_IORING_SETUP_DEFER_TASKRUN | PV_IORING_SETUP_TASKRUN_FLAG,
            PV_IORING_SETUP_COOP_TASKRUN | PV_IORING_SETUP_TASKRUN_FLAG,
            0,
        ]
        var last: Error?
        for flags in choices {
            do {
                return IOUring(raw: try make(IORingPolicy.Request(entries: entries, flags: flags)))
            } catch let e as SystemError where e.errno == .invalidArgument {
                last = e  // a kernel without these flags: try the next set
            }
        }
        throw last!
    }

    /// Enables the ring (IORING_REGISTER_ENABLE_RINGS): submissions work from now on, and the
    /// restrictions apply. For a SINGLE_ISSUER ring from `owned`, the calling thread becomes its
    /// only submitter (and the only one that may register with it). Once only: the policy does
    /// not allow ENABLE_RINGS on an enabled ring.
    public func enable() throws {
        guard !enabled else { return }
        try negErrno("io_uring_enable_rings") { pv_uring_enable(ring) }
        enabled = true
    }

    /// Created with IORING_SETUP_SINGLE_ISSUER: once enabled, only the enabling thread submits
    /// and registers (others get EEXIST).
    public var isSingleIssuer: Bool { pv_uring_setup_flags(ring) & PV_IORING_SETUP_SINGLE_ISSUER != 0 }

    /// Whether the kernel implements IORING_OP_FUTEX_WAIT (Linux 6.7).
    public var supportsFutexWait: Bool { (try? probeFutexWait()) ?? false }

    /// As `supportsFutexWait`, throwing when the probe is refused.
    public func probeFutexWait() throws -> Bool { try supports(opcode: PV_IORING_OP_FUTEX_WAIT) }

    /// Whether the kernel implements SQE operation `opcode` (IORING_REGISTER_PROBE on this ring);
    /// throws with the errno when the probe itself is refused.
    public func supports(opcode: Int32) throws -> Bool {
        var supported = [UInt8](repeating: 0, count: 256)
        try negErrno("IORING_REGISTER_PROBE", "ring fd \(pv_uring_ring_fd(ring))") {
            pv_uring_probe_fd(pv_uring_ring_fd(ring), &supported, 256)
        }
        return opcode >= 0 && opcode < 256 && supported[Int(opcode)] == 1
    }

    /// Queues IORING_OP_FUTEX_WAIT on a shared 32-bit futex word (another process may wake it):
    /// completes with 0 once woken, at once with -EAGAIN if `word` no longer holds `expected`.
    public func futexWait(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32, userData: UInt64) throws {
        // The kernel's io_futex_prep layout (liburing 2.3 predates the opcode): fd = FUTEX2_*
        // flags (0x02: 32-bit, shared), addr = word, off = expected value, addr3 = bitset mask
        // (FUTEX_BITSET_MATCH_ANY). IOSQE_FIXED_FILE because the policy requires it on every
        // SQE; the kernel ignores it for an operation without a file.
        try negErrno("io_uring_prep_futex_wait") {
            pv_uring_prep_raw(ring, PV_IORING_OP_FUTEX_WAIT, 0x02, UInt64(UInt(bitPattern: word)), 0, UInt64(expected), 0,
                              0xffff_ffff, PV_IOSQE_FIXED_FILE, userData)
        }
    }

    /// Queues a one-shot IORING_OP_POLL_ADD for readability of `target`: completes with the revents.
    public func pollReadable(_ target: Target, userData: UInt64) throws {
        try negErrno("io_uring_prep_poll_add", "\(target)") {
            pv_uring_prep_raw(ring, PV_IORING_OP_POLL_ADD, target.fd, 0, 0, 0, UInt32(POLLIN), 0, target.sqeFlags, userData)
        }
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

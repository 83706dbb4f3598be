import Glibc
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

public enum BlockIO {
    /// Environment variable that forces the thread-pool engine (as `IOUring.probe` honours).
    public static let forceNoIOUringVariable = "PROCVISOR_FORCE_NO_IOURING"
    /// Worker threads of the fallback engine (fewer if the queue depth is smaller).
    public static let poolThreads = 4
    /// The most iovecs one request may have (UIO_MAXIOV).
    public static let maxSegments = 1024

    /// io_uring when allowed (and not forced off by `PROCVISOR_FORCE_NO_IOURING=1`), else the
    /// thread pool; `log` is called once with the choice and the reason. `queueDepth` bounds the
    /// requests the kernel (or the pool) works on at once; more may be submitted.
    /// Creates the pool's threads now, so a caller installing a seccomp filter afterwards does not
    /// need clone in its allow-list. Traps only if not even an eventfd or one thread can be had
    /// (see `engine(...)` for a throwing variant).
    public static func makeEngine(disk: FileDescriptor, queueDepth: Int,
                                  environment: [String: String] = Process.environment(),
                                  log: (String) -> Void) -> BlockIOEngine {
        do {
            return try engine(disk: disk, queueDepth: queueDepth, environment: environment, log: log)
        } catch {
            fatalError("block I/O: no engine: \(error)")
        }
    }

    /// As `makeEngine`, throwing when neither engine can be created.
    public static func engine(disk: FileDescriptor, queueDepth: Int,
                              environment: [String: String] = Process.environment(),
                              log: (String) -> Void) throws -> BlockIOEngine {
        let depth = Swift.max(1, Swift.min(queueDepth, 4096))
        let why: String
        if environment[forceNoIOUringVariable] == "1" {
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

// MARK: - Shared request state

/// One accepted request: an owned copy of its iovecs, advanced in place over short transfers.
/// Where a burst of requests is cut into io_uring_enter calls: after every `limit` requests, so
/// the first of a burst reach the disk while the rest is still being decoded, but not inside a
/// run of reads or writes that carry on from one another on the disk (same direction, next byte)
/// until the run reaches `mergeBytes`. Such a run goes in with one call, so the block layer's
/// plug merges it into large disk requests, as Linux's blkback gets from plugging its bios.
struct SubmitChunker {
    let limit: Int
    var mergeBytes: UInt64 = 1 << 20
    private var count = 0
    private var runOp: BlockIOOp?
    private var runEnd: UInt64 = 0
    private var runBytes: UInt64 = 0

    init(limit: Int) { self.limit = max(1, limit) }

    /// Counts one request in; true when what has been counted since the last cut should be
    /// submitted now.
    mutating func cutAfter(_ op: BlockIOOp, offset: UInt64, length: UInt64) -> Bool {
        let continues = (op == .read || op == .write) && op == runOp && offset == runEnd
        runBytes = continues ? runBytes + length : length
        runOp = op == .read || op == .write ? op : nil
        runEnd = offset &+ length
        count += 1
        guard count >= limit, !(continues && runBytes < mergeBytes) else { return false }
        count = 0
        runBytes = 0
        return true
    }
}

struct BlockTransfer {
    var tag: UInt64
    var op: BlockIOOp
    /// Where the rest starts on disk.
    var offset: UInt64
    var iov: UnsafeMutablePointer<iovec>?
    var iovCount: Int
    /// The first iovec with bytes left.
    var first = 0
    var done = 0
    /// read/write: bytes; discard: length; flush: 0.
    var total: Int
    var retries = 0
    /// The request's `fixedBuffer`.
    var fixedBuffer: Int?

    enum Accepted {
        case transfer(BlockTransfer)
        /// Needs no I/O, or is malformed.
        case done(BlockIOCompletion)
    }

    static func make(_ r: BlockIORequest) -> Accepted {
        func fail(_ e: Errno) -> Accepted { .done(BlockIOCompletion(tag: r.tag, result: .failure(e))) }
        switch r.op {
        case .flush:
            return .transfer(BlockTransfer(tag: r.tag, op: .flush, offset: 0, iov: nil, iovCount: 0, total: 0))
        case .discard:
            if r.length == 0 { return .done(BlockIOCompletion(tag: r.tag, result: .success(0))) }
            guard r.offset <= UInt64(Int64.max), r.length <= UInt64(Int64.max) - r.offset else { return fail(.invalidArgument) }
            return .transfer(BlockTransfer(tag: r.tag, op: .discard, offset: r.offset, iov: nil, iovCount: 0, total: Int(r.length)))
        case .read, .write:
            guard !r.iov.isEmpty, r.iov.count <= BlockIO.maxSegments else { return fail(.invalidArgument) }
            var total = 0
            for b in r.iov {
                guard b.baseAddress != nil || b.count == 0 else { return fail(.invalidArgument) }
                total += b.count
            }
            guard total > 0, r.offset <= UInt64(Int64.max), UInt64(total) <= UInt64(Int64.max) - r.offset else {
                return fail(.invalidArgument)
            }
            let v = UnsafeMutablePointer<iovec>.allocate(capacity: r.iov.count)
            for (i, b) in r.iov.enumerated() { v[i] = iovec(iov_base: b.baseAddress, iov_len: b.count) }
            return .transfer(BlockTransfer(tag: r.tag, op: r.op, offset: r.offset, iov: v, iovCount: r.iov.count, total: total,
                                           fixedBuffer: r.fixedBuffer))
        }
    }

    var remainingIovecs: Int { iovCount - first }
    var finished: Bool { done == total }

    /// Records `n` more bytes transferred (n ≤ total - done): moves the iovecs and the offset on.
    mutating func advance(by n: Int) {
        done += n
        offset += UInt64(n)
        guard let v = iov else { return }
        var left = n
        while left > 0 && first < iovCount {
            let len = v[first].iov_len
            if left >= len {
                left -= len
                first += 1
            } else {
                v[first].iov_base = v[first].iov_base.map { $0 + left }
                v[first].iov_len = len - left
                left = 0
            }
        }
        while first < iovCount && v[first].iov_len == 0 { first += 1 }
    }

    func release() { iov?.deallocate() }

    func completion(_ result: Result<Int, Errno>) -> BlockIOCompletion { BlockIOCompletion(tag: tag, result: result) }
}

/// Reads the eventfd to zero (non-blocking).
private func drainEventFD(_ fd: FileDescriptor) {
    var value: UInt64 = 0
    _ = Glibc.read(fd.rawValue, &value, 8)
}

private func signalEventFD(_ fd: FileDescriptor) {
    var one: UInt64 = 1
    _ = Glibc.write(fd.rawValue, &one, 8)
}

private func makeEventFD() throws -> FileDescriptor {
    let fd = try FileDescriptor.eventfd()
    do {
        try fd.setNonBlocking()
    } catch {
        fd.close()
        throw error
    }
    return fd
}

// MARK: - io_uring engine

/// io_uring on one disk: READV/WRITEV straight into the caller's pages, FSYNC(DATASYNC), FALLOCATE;
/// the disk registered as a fixed file (the ring's restrictions refuse anything else); at most `queueDepth` operations in
/// the kernel (so the completion queue, twice the submission queue, never overflows).
final class IOUringBlockIOEngine: BlockIOEngine {
    let name = "io_uring"
    let completionFD: FileDescriptor
    private var ring: IOUring?
    private let target: IOUring.Target
    let fixedFile: Bool
    private let depth: Int

    /// In-kernel transfers, indexed by slot (the SQE's user_data).
    private var slots: [BlockTransfer?]
    private var freeSlots: [Int]
    /// Slots whose transfer needs another SQE (short transfer, EAGAIN/EINTR), or whose SQE could not
    /// be queued yet.
    private var toQueue: [Int] = []
    /// Accepted, waiting for a slot.
    private var pending: [BlockTransfer] = []
    private var pendingHead = 0
    /// Completed, not yet returned by `reap`.
    private var ready: [BlockIOCompletion] = []
    private var closed = false
    /// Requests handed to the kernel per io_uring_enter.
    var submitChunk = Int.max
    /// Made by `owned`: one thread (the one that calls `adopt`) submits, reaps and waits; the
    /// completion eventfd is not signalled.
    let owned: Bool
    /// Tags of the owner's wake-up sources (never slot numbers).
    static let doorbellTag = UInt64.max
    static let kickTag = UInt64.max - 1
    /// Owned mode: a futex wait / a poll on the kick descriptor is in the kernel.
    private(set) var doorbellArmed = false
    private(set) var kickArmed = false
    /// Owned mode: the futex wait or the kick poll completed since the owner last looked.
    var doorbellRang = false
    var kicked = false

    /// `owned`: a ring for one thread (`IOUring.owned`: deferred completion work), which must call
    /// `adopt` before anything else and be the only one to use the engine, `close` included.
    /// The ring is restricted (`IORingPolicy`): it acts only on registered files, so the disk is
    /// registered (slot 0, with slot 1 kept for the owner's kick descriptor) or the engine is not
    /// made. A plain ring is enabled here; an owned one by `adopt`, on its thread.
    init(disk: FileDescriptor, queueDepth: Int, owned: Bool = false) throws {
        let ring = owned ? try IOUring.owned(entries: UInt32(queueDepth + 2)) : try IOUring(entries: UInt32(queueDepth))
        let efd = try makeEventFD()
        do {
            if !owned { try ring.registerEventFD(efd) }
            try ring.registerFiles(owned ? [disk, FileDescriptor(rawValue: -1)] : [disk])
        } catch {
            efd.close()
            throw error
        }
        self.ring = ring
        self.owned = owned
        self.completionFD = efd
        self.fixedFile = true
        self.target = .registered(0)
        self.depth = queueDepth
        self.slots = Array(repeating: nil, count: queueDepth)
        self.freeSlots = Array((0..<queueDepth).reversed())
    }

    /// Owned mode: the calling thread becomes the ring's only submitter.
    func adopt() throws { try ring?.enable() }

    /// Owned mode, the owner's thread: points registered buffer `index` (below `fixedBufferSlots`)
    /// at `buffer`, pinning its pages once for every transfer that names it
    /// (`BlockIORequest.fixedBuffer`). The first call registers the table.
    func setFixedBuffer(_ index: Int, _ buffer: UnsafeMutableRawBufferPointer) throws {
        guard owned, let ring, !closed else { throw SystemError("block I/O registered buffer", "not an owned, open engine", errno: .invalidArgument) }
        if !fixedBuffers {
            try ring.registerBufferTable(count: Self.fixedBufferSlots)
            fixedBuffers = true
            vectoredFixed = ring.supportsVectoredFixed
        }
        try ring.updateBuffer(index, buffer)
    }
    static let fixedBufferSlots = 2
    /// A registered buffer table exists (`setFixedBuffer`).
    private(set) var fixedBuffers = false
    /// The kernel has READV_FIXED / WRITEV_FIXED (Linux 6.15): transfers of several iovecs can use
    /// a registered buffer too, not only single-buffer ones.
    private(set) var vectoredFixed = false
    /// Reads and writes handed to the kernel (resubmissions of short ones included), and those
    /// of them on a registered buffer (READ_FIXED and kin).
    private(set) var transfers = 0
    private(set) var fixedTransfers = 0

    /// Whether `armDoorbell` can work (IORING_OP_FUTEX_WAIT, Linux 6.7).
    var supportsFutexWait: Bool { ring?.supportsFutexWait ?? false }

    /// Owned mode: queues a wait on a shared futex word (the domain's event-channel doorbell), so
    /// `waitForEvent` also returns when it is woken (`doorbellRang`). One at a time.
    func armDoorbell(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32) {
        guard let ring, !doorbellArmed, !closed else { return }
        if (try? ring.futexWait(word, expected: expected, userData: Self.doorbellTag)) != nil { doorbellArmed = true }
    }

    /// Owned mode: queues a poll for `fd` becoming readable (`kicked`). One at a time. The ring
    /// polls only registered files: `fd` goes into slot 1 first if another descriptor was there
    /// (the owner's thread registers; a SINGLE_ISSUER ring refuses other threads).
    func armKick(_ fd: FileDescriptor) {
        guard let ring, !kickArmed, !closed else { return }
        if kickFile != fd {
            guard (try? ring.updateFile(Self.kickSlot, fd)) != nil else { return }
            kickFile = fd
        }
        if (try? ring.pollReadable(.registered(Int32(Self.kickSlot)), userData: Self.kickTag)) != nil { kickArmed = true }
    }
    static let kickSlot = 1
    /// The descriptor in registered slot `kickSlot` (owned mode).
    private var kickFile: FileDescriptor?

    /// Owned mode: completions ready (or deferred work flagged) without a system call.
    var hasCompletions: Bool { !ready.isEmpty || (ring?.hasCompletions ?? false) }

    /// Owned mode: submits what is queued and sleeps until at least one completion (an I/O, the
    /// doorbell, the kick) is there; `reap` takes them.
    func waitForEvent(timeoutNs: Int64 = 100_000_000) {
        guard let ring, !closed else { return }
        do {
            try ring.submit(waitingFor: 1, timeoutNs: timeoutNs)
        } catch let e as SystemError where e.errno == .wouldBlock {
            usleep(1000)
        } catch {}
    }

    deinit { close() }

    private var inFlight: Int { depth - freeSlots.count }
    private var pendingCount: Int { pending.count - pendingHead }

    func submit(_ batch: [BlockIORequest]) throws {
        guard !closed, let ring else { throw SystemError("block I/O submit", "engine closed", errno: .badFileDescriptor) }
        let before = ready.count
        for r in batch {
            switch BlockTransfer.make(r) {
            case .transfer(let t): pending.append(t)
            case .done(let c): ready.append(c)
            }
        }
        try start(ring)
        if ready.count > before && !owned { signalEventFD(completionFD) }
    }

    /// Queues SQEs for retries and for pending transfers while slots are free, then submits them.
    private func start(_ ring: IOUring) throws {
        while !toQueue.isEmpty {
            guard ring.submissionSpace > 0 else { break }
            let s = toQueue.removeLast()
            if !queue(ring, slot: s) { break }
        }
        var chunker = SubmitChunker(limit: submitChunk)
        while pendingCount > 0, let s = freeSlots.last, ring.submissionSpace > 0 {
            freeSlots.removeLast()
            let t = pending[pendingHead]
            slots[s] = t
            pendingHead += 1
            if !queue(ring, slot: s) { break }
            if chunker.cutAfter(t.op, offset: t.offset, length: UInt64(t.total)) && pendingCount > 0 { _ = try? ring.submit() }
        }
        if pendingHead == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingHead = 0
        } else if pendingHead > 256 && pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        guard ring.unsubmitted > 0 else { return }
        do {
            try ring.submit()
        } catch let e as SystemError where e.errno == .wouldBlock || e.errno == Errno(rawValue: EBUSY) {
            // The entries stay queued; the next reap retries. Make sure there will be one (the
            // owner of an owned ring reaps after every wake-up anyway).
            if !owned { signalEventFD(completionFD) }
        }
    }

    /// Prepares the SQE for slot `s`; false (slot kept for later) if the queue is full.
    private func queue(_ ring: IOUring, slot s: Int) -> Bool {
        guard let t = slots[s] else { return true }
        do {
            let tag = UInt64(s)
            let count = Swift.min(t.remainingIovecs, BlockIO.maxSegments)
            if t.op == .read || t.op == .write { transfers += 1 }
            if t.op == .read || t.op == .write, let b = t.fixedBuffer, fixedBuffers, count == 1 || vectoredFixed {
                try ring.transferFixed(target, write: t.op == .write, iovecs: t.iov! + t.first, count: count, offset: t.offset,
                                       bufferIndex: b, userData: tag)
                fixedTransfers += 1
                return true
            }
            switch t.op {
            case .read:
                try ring.readv(target, iovecs: t.iov! + t.first, count: count, offset: t.offset, userData: tag)
            case .write:
                try ring.writev(target, iovecs: t.iov! + t.first, count: count, offset: t.offset, userData: tag)
            case .flush:
                try ring.fsync(target, dataOnly: true, userData: tag)
            case .discard:
                try ring.fallocate(target, mode: IOUring.fallocatePunchHole | IOUring.fallocateKeepSize,
                                   offset: t.offset, length: UInt64(t.total), userData: tag)
            }
            return true
        } catch {
            toQueue.append(s)
            return false
        }
    }

    /// Takes the kernel's completions: finishes transfers or schedules the rest of short ones.
    private func harvest(_ ring: IOUring) {
        if owned { ring.flushDeferredCompletions() }
        ring.harvest { userData, res in
            if userData == Self.doorbellTag {
                doorbellArmed = false
                doorbellRang = true
                return
            }
            if userData == Self.kickTag {
                kickArmed = false
                kicked = true
                return
            }
            let s = Int(userData)
            guard s < slots.count, var t = slots[s] else { return }
            var outcome: Result<Int, Errno>?
            if res < 0 {
                let e = Errno(rawValue: -res)
                if (e == .interrupted || e == .wouldBlock) && t.retries < 100 {
                    t.retries += 1
                } else if e == .badAddress && t.fixedBuffer != nil {
                    // The kernel did not find the buffers in the registered one: again, pinned as usual.
                    t.fixedBuffer = nil
                } else {
                    outcome = .failure(e)
                }
            } else {
                switch t.op {
                case .flush:
                    outcome = .success(0)
                case .discard:
                    outcome = .success(t.total)
                case .read, .write:
                    if res == 0 {
                        outcome = .failure(Errno(rawValue: EIO))  // end of file, or no progress
                    } else {
                        t.advance(by: Swift.min(Int(res), t.total - t.done))
                        if t.finished { outcome = .success(t.total) }
                    }
                }
            }
            if let outcome {
                ready.append(t.completion(outcome))
                t.release()
                slots[s] = nil
                freeSlots.append(s)
            } else {
                slots[s] = t
                toQueue.append(s)
            }
        }
    }

    func reap(wait: Bool) -> [BlockIOCompletion] {
        guard !closed, let ring else { return [] }
        if !owned { drainEventFD(completionFD) }  // before harvesting: a completion posted after this re-arms it
        harvest(ring)
        try? start(ring)
        while wait && ready.isEmpty && inFlight > 0 {
            do {
                try ring.submit(waitingFor: 1)
            } catch let e as SystemError where e.errno == .wouldBlock || e.errno == Errno(rawValue: EBUSY) {
                // EBUSY: completions are backed up (harvested below); EAGAIN: the kernel is short of
                // memory for a moment.
                if e.errno == .wouldBlock { usleep(1000) }
            } catch {
                break
            }
            harvest(ring)
            try? start(ring)
        }
        let out = ready
        ready.removeAll(keepingCapacity: true)
        return out
    }

    func close() {
        guard !closed else { return }
        closed = true
        for i in pendingHead..<pending.count { pending[i].release() }
        pending.removeAll()
        pendingHead = 0
        if let ring {
            // Transfers waiting for an SQE never reach the kernel again: drop them. Wait for the
            // rest (submitting any SQE still queued), so no buffer is touched after close returns.
            for s in toQueue {
                slots[s]?.release()
                slots[s] = nil
            }
            toQueue.removeAll()
            var failures = 0
            while slots.contains(where: { $0 != nil }) && failures < 3 {
                do { try ring.submit(waitingFor: 1) } catch { failures += 1 }
                ring.harvest { userData, _ in
                    let s = Int(userData)
                    if s < slots.count, let t = slots[s] { t.release(); slots[s] = nil }
                }
            }
        }
        ring = nil  // io_uring_queue_exit: closes the ring, releases the registered file and eventfd
        completionFD.close()
        ready.removeAll()
    }
}

// MARK: - Thread-pool engine

/// A lock with two condition variables (no Foundation in driver domains).
private final class PoolState {
    let mutex = Lock()
    let work = Condition()
    let done = Condition()
    let disk: Int32
    let eventFD: FileDescriptor
    var queue: [BlockTransfer] = []
    var queueHead = 0
    var finished: [BlockIOCompletion] = []
    /// Transfers a worker has taken and not finished.
    var busy = 0
    var stopping = false

    init(disk: Int32, eventFD: FileDescriptor) {
        self.disk = disk
        self.eventFD = eventFD
    }

    @inline(__always) func lock() { mutex.lock() }
    @inline(__always) func unlock() { mutex.unlock() }
    var queued: Int { queue.count - queueHead }

    /// A worker's loop: take a transfer, do it synchronously, post the completion.
    func run(index: Int) {
        Process.setName("pv-blkio-\(index)")  // prctl(PR_SET_NAME): this thread
        while true {
            lock()
            while queued == 0 && !stopping { work.wait(mutex) }
            if stopping { unlock(); return }
            var t = queue[queueHead]
            queueHead += 1
            if queueHead == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueHead = 0
            }
            busy += 1
            unlock()

            let result = perform(&t)
            t.release()

            lock()
            busy -= 1
            finished.append(t.completion(result))
            done.broadcast()
            unlock()
            signalEventFD(eventFD)
        }
    }

    private func perform(_ t: inout BlockTransfer) -> Result<Int, Errno> {
        switch t.op {
        case .flush:
            while fdatasync(disk) != 0 {
                let e = Errno.current
                if e != .interrupted { return .failure(e) }
            }
            return .success(0)
        case .discard:
            do {
                try MemFD.punchHole(FileDescriptor(rawValue: disk), offset: Int(t.offset), length: t.total)
                return .success(t.total)
            } catch let e as SystemError {
                return .failure(e.errno)
            } catch {
                return .failure(Errno(rawValue: EIO))
            }
        case .read, .write:
            while !t.finished {
                let v = t.iov! + t.first
                let n = Int32(Swift.min(t.remainingIovecs, BlockIO.maxSegments))
                let off = off_t(Int64(bitPattern: t.offset))
                let rc = t.op == .read ? preadv(disk, v, n, off) : pwritev(disk, v, n, off)
                if rc < 0 {
                    let e = Errno.current
                    if (e == .interrupted || e == .wouldBlock) && t.retries < 100 {
                        t.retries += 1
                        continue
                    }
                    return .failure(e)
                }
                if rc == 0 { return .failure(Errno(rawValue: EIO)) }  // end of file, or no progress
                t.advance(by: Swift.min(rc, t.total - t.done))
            }
            return .success(t.total)
        }
    }
}

/// The fallback: a fixed pool of threads doing preadv/pwritev/fdatasync/fallocate; each worker
/// finishes a request (looping over short transfers) before posting its completion and writing the
/// eventfd.
final class ThreadPoolBlockIOEngine: BlockIOEngine {
    let name = "threads"
    let completionFD: FileDescriptor
    private let state: PoolState
    private var threads: [pthread_t] = []
    private var closed = false
    var threadCount: Int { threads.count }

    private final class Start {
        let state: PoolState
        let index: Int
        init(_ state: PoolState, _ index: Int) { self.state = state; self.index = index }
    }

    init(disk: FileDescriptor, queueDepth: Int) throws {
        completionFD = try makeEventFD()
        state = PoolState(disk: disk.rawValue, eventFD: completionFD)
        let count = Swift.max(1, Swift.min(BlockIO.poolThreads, queueDepth))
        var lastError: Int32 = 0
        for i in 0..<count {
            let box = Unmanaged.passRetained(Start(state, i)).toOpaque()
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { arg in
                let start = Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue()
                start.state.run(index: start.index)
                return nil
            }, box)
            if rc != 0 {
                Unmanaged<Start>.fromOpaque(box).release()
                lastError = rc
                continue
            }
            threads.append(tid)
        }
        if threads.isEmpty {
            completionFD.close()
            closed = true
            throw SystemError("pthread_create", "block I/O worker", errno: Errno(rawValue: lastError))
        }
    }

    deinit { close() }

    func submit(_ batch: [BlockIORequest]) throws {
        guard !closed else { throw SystemError("block I/O submit", "engine closed", errno: .badFileDescriptor) }
        var accepted: [BlockTransfer] = []
        accepted.reserveCapacity(batch.count)
        var immediate: [BlockIOCompletion] = []
        for r in batch {
            switch BlockTransfer.make(r) {
            case .transfer(let t): accepted.append(t)
            case .done(let c): immediate.append(c)
            }
        }
        state.lock()
        state.queue.append(contentsOf: accepted)
        state.finished.append(contentsOf: immediate)
        if accepted.count == 1 {
            state.work.signal()
        } else if accepted.count > 1 {
            state.work.broadcast()
        }
        state.unlock()
        if !immediate.isEmpty { signalEventFD(completionFD) }
    }

    func reap(wait: Bool) -> [BlockIOCompletion] {
        guard !closed else { return [] }
        drainEventFD(completionFD)  // before taking: a completion posted after this re-arms it
        state.lock()
        if wait {
            while state.finished.isEmpty && (state.queued > 0 || state.busy > 0) {
                state.done.wait(state.mutex)
            }
        }
        let out = state.finished
        state.finished.removeAll(keepingCapacity: true)
        state.unlock()
        return out
    }

    func close() {
        guard !closed else { return }
        closed = true
        state.lock()
        state.stopping = true
        for i in state.queueHead..<state.queue.count { state.queue[i].release() }
        state.queue.removeAll()
        state.queueHead = 0
        state.work.broadcast()
        state.unlock()
        for t in threads { pthread_join(t, nil) }  // each finishes the transfer it holds first
        threads.removeAll()
        state.finished.removeAll()
        completionFD.close()
    }
}

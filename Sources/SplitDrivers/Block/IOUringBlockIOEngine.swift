import LinuxHost

/// io_uring on one disk: READV/WRITEV straight into the caller's pages, FSYNC(DATASYNC), FALLOCATE;
/// the disk registered as a fixed file (the ring's restrictions refuse anything else); at most `queueDepth` operations in
/// the kernel (so the completion queue, twice the submission queue, never overflows).
final class IOUringBlockIOEngine: BlockIOEngine {
    let name = "io_uring"
    let completionFD: FileDescriptor
    @exclusivity(unchecked) private var ring: IOUring?
    private let target: IOUring.Target
    let fixedFile: Bool
    private let depth: Int

    /// In-kernel transfers, indexed by slot (the SQE's user_data).
    @exclusivity(unchecked) private var slots: [BlockTransfer?]
    @exclusivity(unchecked) private var freeSlots: [Int]
    /// Slots whose transfer needs another SQE (short transfer, EAGAIN/EINTR), or whose SQE could not
    /// be queued yet.
    @exclusivity(unchecked) private var toQueue: [Int] = []
    /// Accepted, waiting for a slot.
    @exclusivity(unchecked) private var pending: [BlockTransfer] = []
    @exclusivity(unchecked) private var pendingHead = 0
    /// Completed, not yet returned by `reap`.
    @exclusivity(unchecked) private var ready: [BlockIOCompletion] = []
    @exclusivity(unchecked) private var closed = false
    /// Requests handed to the kernel per io_uring_enter.
    @exclusivity(unchecked) var submitChunk = Int.max
    /// Made by `owned`: one thread (the one that calls `adopt`) submits, reaps and waits; the
    /// completion eventfd is not signalled.
    let owned: Bool
    /// Tags of the owner's wake-up sources (never slot numbers).
    static let doorbellTag = UInt64.max
    static let kickTag = UInt64.max - 1
    /// Owned mode: a futex wait / a poll on the kick descriptor is in the kernel.
    @exclusivity(unchecked) private(set) var doorbellArmed = false
    @exclusivity(unchecked) private(set) var kickArmed = false
    /// Owned mode: the futex wait or the kick poll completed since the owner last looked.
    @exclusivity(unchecked) var doorbellRang = false
    @exclusivity(unchecked) var kicked = false

    /// `owned`: a ring for one thread (`IOUring.owned`: deferred completion work), which must call
    /// `adopt` before anything else and be the only one to use the engine, `close` included.
    /// The ring is restricted (`IORingPolicy`): it acts only on registered files, so the disk is
    /// registered (slot 0, with slot 1 kept for the owner's kick descriptor) or the engine is not
    /// made. A plain ring is enabled here; an owned one by `adopt`, on its thread.
    init(disk: FileDescriptor, queueDepth: Int, owned: Bool = false) throws {
        let ring = owned ? try IOUring.owned(entries: UInt32(queueDepth + 2)) : try IOUring(entries: UInt32(queueDepth))
        let efd = try BlockIOEventFD.make()
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
    @exclusivity(unchecked) private(set) var fixedBuffers = false
    /// The kernel has READV_FIXED / WRITEV_FIXED (Linux 6.15): transfers of several iovecs can use
    /// a registered buffer too, not only single-buffer ones.
    @exclusivity(unchecked) private(set) var vectoredFixed = false
    /// Reads and writes handed to the kernel (resubmissions of short ones included), and those
    /// of them on a registered buffer (READ_FIXED and kin).
    @exclusivity(unchecked) private(set) var transfers = 0
    @exclusivity(unchecked) private(set) var fixedTransfers = 0

    /// Whether `armDoorbell` can work (IORING_OP_FUTEX_WAIT, Linux 6.7); throws when the kernel
    /// refuses to say.
    func supportsFutexWait() throws -> Bool {
        guard let ring, !closed else { throw SystemError("block I/O probe", "engine closed", errno: .badFileDescriptor) }
        return try ring.probeFutexWait()
    }

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
    @exclusivity(unchecked) private var kickFile: FileDescriptor?

    /// Owned mode: completions ready (or deferred work flagged) without a system call.
    var hasCompletions: Bool { !ready.isEmpty || (ring?.hasCompletions ?? false) }

    /// Owned mode: submits what is queued and sleeps until at least one completion (an I/O, the
    /// doorbell, the kick) is there; `reap` takes them.
    func waitForEvent(timeoutNs: Int64 = 100_000_000) {
        guard let ring, !closed else { return }
        do {
            try ring.submit(waitingFor: 1, timeoutNs: timeoutNs)
        } catch let e as SystemError where e.errno == .wouldBlock {
            PosixThread.sleep(microseconds: 1000)
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
        if ready.count > before && !owned { BlockIOEventFD.signal(completionFD) }
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
        } catch let e as SystemError where e.errno == .wouldBlock || e.errno == .busy {
            // The entries stay queued; the next reap retries. Make sure there will be one (the
            // owner of an owned ring reaps after every wake-up anyway).
            if !owned { BlockIOEventFD.signal(completionFD) }
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
                        outcome = .failure(.ioError)  // end of file, or no progress
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
        if !owned { BlockIOEventFD.drain(completionFD) }  // before harvesting: a completion posted after this re-arms it
        harvest(ring)
        try? start(ring)
        while wait && ready.isEmpty && inFlight > 0 {
            do {
                try ring.submit(waitingFor: 1)
            } catch let e as SystemError where e.errno == .wouldBlock || e.errno == .busy {
                // EBUSY: completions are backed up (harvested below); EAGAIN: the kernel is short of
                // memory for a moment.
                if e.errno == .wouldBlock { PosixThread.sleep(microseconds: 1000) }
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

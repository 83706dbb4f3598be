import DomainRuntime
import LinuxHost
import ProcvisorABI

/// One queue of a vbd: its ring (one or more pages), port, I/O engine, grant mappings, and the
/// thread that serves it.
final class BlkbackQueue {
    unowned let device: BlkbackDevice
    let index: Int
    let disk: FileDescriptor
    private let kickEvent = Kick()
    @exclusivity(unchecked) private(set) var port: EventChannels.Port?
    @exclusivity(unchecked) private var engine: BlockIOEngine?
    /// What this queue took from its ring (written by the queue's thread alone, read by the
    /// device's thread for `statistics/`): Linux blkback's rd_req, wr_req, f_req, ds_req,
    /// rd_sect, wr_sect.
    @exclusivity(unchecked) var counters = BlkbackCounters()
    @exclusivity(unchecked) private var ring: BackRing?
    @exclusivity(unchecked) private var ringMapping: GrantMappingRun?
    private var domain: Domain { device.domain }
    /// Persistent grants: gref → mapping, kept until disconnect. Linux keeps 1056 per ring;
    /// mapping costs a hypercall here and a mapped page costs nothing but address space, so the
    /// limit is higher (a queue of 1 MiB requests keeps all its pages mapped).
    @exclusivity(unchecked) private var persistentMaps: [GrantRef: PersistentPage] = [:]
    /// A persistent data page: its mapping, and where transfers address it (its alias in
    /// `fixedRegion`, index `alias`, when it has one; else the mapping, alias -1).
    private struct PersistentPage {
        let mapping: GrantMapping
        let io: UnsafeMutableRawPointer
        let alias: Int
    }
    /// Owned io_uring queues: the persistent data pages again, back to back, registered with the
    /// ring as one buffer (`fixedPages` of them so far), so transfers into them skip the kernel's
    /// pinning of every page of every transfer. On unless `fixed-buffers=0`.
    @exclusivity(unchecked) private var fixedRegion: AliasRegion?
    @exclusivity(unchecked) private var fixedPages = 0
    /// `fixedRegion.count` at the queue thread's previous look.
    @exclusivity(unchecked) private var fixedSeen = 0
    @exclusivity(unchecked) private var fixedFailed = false
    /// Registered buffers are allowed (`fixed-buffers=0` turns them off).
    private let fixedAllowed: Bool
    /// Indirect pages, mapped read-only (the frontend grants them so).
    @exclusivity(unchecked) private var persistentIndirect: [GrantRef: GrantMapping] = [:]
    static let maxPersistentGrants = 8192
    /// A request in flight: its id and op, its entry in the in-flight log, mappings to drop after
    /// completion, and for one staged in `bounce`, its run there and (reads) where the bytes go
    /// when it completes.
    private struct Pending {
        let id: UInt64
        let op: UInt8
        let entry: BlkbackInflightLog.Entry
        var transient: [GrantMapping] = []
        var bounce: BounceBuffers.Run? = nil
        var readInto: [UnsafeMutableRawBufferPointer] = []
    }
    /// Requests in flight, by engine tag.
    @exclusivity(unchecked) private var inFlight: [UInt64: Pending] = [:]
    /// A response for the ring, and the log entry of the request it answers.
    private struct Answer {
        let response: BlkifResponse
        let entry: BlkbackInflightLog.Entry
    }
    /// Every request taken off the ring and not yet answered where the frontend sees it, in
    /// memory the supervisor keeps across restarts of this driver domain (`BlkbackInflightLog`);
    /// nil when the supervisor keeps none.
    @exclusivity(unchecked) private var log: BlkbackInflightLog?
    @exclusivity(unchecked) private var logMemory: SharedMapping?
    /// What the previous incarnation's log says is to be done, between `attach` and `connect`.
    @exclusivity(unchecked) private var recovery: BlkbackInflightLog.Recovery?
    /// Requests the previous incarnation took and did not answer, in the order it took them:
    /// handled again from the log before any new one; `replayed` of them so far.
    @exclusivity(unchecked) private var replay: [BlkbackInflightLog.Entry] = []
    @exclusivity(unchecked) private var replayed = 0
    /// Log bytes per queue: enough for the largest ring (`max-ring-page-order`) whatever this
    /// frontend chose, since the supervisor gives a device's log one size for good and a frontend
    /// may connect again with other rings. Pages beyond what a smaller ring uses are never touched.
    static let logBytes = BlkbackInflightLog.bytes(slots: BlkifRing.slots(ringPageOrder: BlkbackDevice.maxRingPageOrder))
    /// Staging for large requests (`BounceBuffers`), made at the first one while the driver
    /// domain's staging budget lasts (`staging-mib=`).
    @exclusivity(unchecked) private var bounce: BounceBuffers?
    @exclusivity(unchecked) private var bounceTried = false
    /// `bounce` is registered with the owned ring as buffer 1.
    @exclusivity(unchecked) private var bounceRegistered = false
    /// Requests of at least this many bytes are staged (`bounce-min=` KiB; 64 KiB).
    private let bounceMin: Int
    /// One queue's staging: four 1 MiB transfers, or 32 of Linux's 128 KiB requests.
    static let bounceBytes = 4 << 20
    /// Requests that went through `bounce`.
    @exclusivity(unchecked) private var staged = 0
    @exclusivity(unchecked) private var nextTag: UInt64 = 1
    /// Guards everything below `port` (the dispatcher takes requests, the queue thread completes them).
    private let mutex = Lock()
    /// Set by `teardown`: nothing is touched any more.
    @exclusivity(unchecked) private var closed = false
    /// A WRITE_BARRIER taken off the ring, waiting for the queue thread to run it, and its log entry.
    @exclusivity(unchecked) private var barrier: BlkifRequest.ReadWrite?
    @exclusivity(unchecked) private var barrierEntry = BlkbackInflightLog.none
    /// Why `mappings` last returned nil: `gref N (GNTST_...)`.
    @exclusivity(unchecked) private var mapFailure = ""
    @exclusivity(unchecked) private(set) var slots = 0
    /// The queue's thread owns an io_uring and sleeps in it, on completions and on the domain's
    /// doorbell (IORING_OP_FUTEX_WAIT): it takes its requests itself, no dispatcher in between.
    @exclusivity(unchecked) private(set) var owned = false
    /// Requests handed to the disk per io_uring_enter (`submit-chunk=N`, owned queues; default 4),
    /// runs of requests that continue one another on the disk excepted (`SubmitChunker`).
    @exclusivity(unchecked) private var submitChunk = Int.max
    /// Batches left before the one `fail-submit=N` refuses (0: none is).
    @exclusivity(unchecked) private var submitsBeforeFailure = 0
    var engineName: String { engine?.name ?? "?" }
    private var label: String { device.label + (index > 0 ? " queue \(index)" : "") }

    init(device: BlkbackDevice, index: Int, disk: FileDescriptor) {
        self.device = device
        self.index = index
        self.disk = disk
        fixedAllowed = device.owner.settings.fixedBuffers
        bounceMin = device.owner.settings.bounceMinBytes
    }

    func kick() { kickEvent.raise() }

    /// Maps the ring the frontend granted (`refs`, back to back) and opens the queue's in-flight
    /// log. Connecting afresh, the log starts empty (the queue runs without one, as before there
    /// was one, when the supervisor keeps none). Resuming after a restart of this driver domain,
    /// the log an earlier incarnation left is checked against the ring and kept for `connect`;
    /// throws, having changed nothing the frontend can see, when there is none or it is not
    /// trusted.
    func attach(refs: [GrantRef], resuming: Bool) throws {
        guard kickEvent.valid else { throw BlkbackStop.setup("cannot create an eventfd") }
        let run: GrantMappingRun
        do {
            run = try domain.grantTable.mapRun(domid: device.frontend, refs: refs)
        } catch {
            throw BlkbackStop.setup("cannot map ring \(index) (\(refs.count) page\(refs.count == 1 ? "" : "s"), grants \(refs)): \(error)")
        }
        ringMapping = run
        let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size, pages: refs.count)
        let ring = BackRing(page: run.base, layout: layout)
        self.ring = ring
        slots = Int(layout.count)
        let memory: SharedMapping
        let incarnations: Int
        do {
            (memory, incarnations) = try domain.inflightLog(.vbd, frontend: device.frontend, devid: device.devid, queue: index, bytes: Self.logBytes)
        } catch {
            if resuming { throw BlkbackStop.setup("queue \(index) has no in-flight log (\(error))") }
            if index == 0 {
                device.owner.log("blkback: \(label): no in-flight log (\(error)); requests in flight are lost if this driver domain is restarted")
            }
            return
        }
        logMemory = memory
        let log = BlkbackInflightLog(memory: memory.base, bytes: memory.length, slots: slots)
        self.log = log
        guard resuming else {
            log.format(requestsConsumed: ring.reqCons)
            return
        }
        guard incarnations > 0 else {
            throw BlkbackStop.setup("queue \(index)'s in-flight log is new: nothing is known of the requests in flight")
        }
        do {
            recovery = try log.check(requestProducer: ring.reqProd, responsesPublished: ring.rspProd)
        } catch {
            throw BlkbackStop.setup("queue \(index): \(error)")
        }
    }

    /// Makes the queue's I/O engine and binds the frontend's port (after `attach`). Resuming, then
    /// takes the ring over where the log says: the answers the previous incarnation wrote but did
    /// not publish are published again, the requests it took and did not answer wait in `replay`
    /// for the queue thread, ahead of anything new on the ring, and the frontend is notified in any
    /// case (the notification the previous incarnation owed may never have been sent).
    func connect(remotePort: EventChannels.Port) throws {
        let depth = max(64, slots)
        let settings = device.owner.settings
        let log: (String) -> Void = { [owner = device.owner, index] line in
            if index == 0 { owner.log("blkback: \(line)") }
        }
        if device.owner.ownedQueues && !settings.io.forceThreadPool {
            // Why a queue goes to the event dispatcher instead, said for every queue when it is
            // an error (it is not the kernel's lack of IORING_OP_FUTEX_WAIT).
            do {
                let uring = try IOUringBlockIOEngine(disk: disk, queueDepth: depth, owned: true)
                let futexWait: Bool
                do { futexWait = try uring.supportsFutexWait() } catch {
                    uring.close()
                    throw error
                }
                if futexWait {
                    submitChunk = settings.submitChunk
                    uring.submitChunk = submitChunk
                    engine = uring
                    owned = true
                    if device.persistent && fixedAllowed {
                        fixedRegion = try? AliasRegion(capacity: Self.maxPersistentGrants)
                    }
                    log("block I/O: io_uring, queue depth \(depth)\(uring.fixedFile ? ", registered file" : ""); each queue's thread sleeps in its ring, on completions and on the doorbell (IORING_OP_FUTEX_WAIT)")
                } else {
                    uring.close()
                    log("block I/O: this kernel's io_uring has no IORING_OP_FUTEX_WAIT; the event dispatcher feeds each queue")
                }
            } catch {
                device.owner.log("blkback: \(label): no io_uring of its own (\(error)); the event dispatcher feeds it")
            }
        }
        // The `fail-submit=N` test setting: only in a device connected afresh, so the incarnation
        // that takes it over after the crash it causes does not crash again.
        if index == 0 && recovery == nil, let n = settings.failSubmit { submitsBeforeFailure = n }
        if engine == nil { engine = BlockIO.makeEngine(disk: disk, queueDepth: depth, settings: settings.io, log: log) }
        let port = try domain.eventChannels.bindInterdomain(remote: device.frontend, remotePort: remotePort)
        self.port = port
        if let recovery, let log = self.log, let ring {
            log.resume(recovery, ring: ring)
            replay = recovery.reissue
            self.recovery = nil
            try? domain.eventChannels.send(port)
            device.owner.log("blkback: \(label): resumed at req_cons \(recovery.requestsConsumed), rsp_prod \(recovery.responsesPublished): \(recovery.republish.count) answer\(recovery.republish.count == 1 ? "" : "s") published again, \(recovery.reissue.count) request\(recovery.reissue.count == 1 ? "" : "s") to handle again")
        }
    }

    /// The queue thread: completions, barriers, and the ring once at the start (requests put
    /// there before the port was registered). Requests themselves are taken by the event
    /// dispatcher (`serviceRing`), so an IO costs no hand-off between threads on its way in.
    func run() {
        if owned, let uring = engine as? IOUringBlockIOEngine {
            runOwned(uring)
        } else {
            runDispatched()
        }
        device.queueEnded()
    }

    /// The queue's thread alone: takes requests, submits them, answers completions, and sleeps
    /// in one io_uring_enter until an I/O completes, the frontend rings or the device thread
    /// kicks. Closes the engine before it returns (the ring belongs to this thread).
    private func runOwned(_ uring: IOUringBlockIOEngine) {
        do {
            try uring.adopt()
        } catch {
            locked { uring.close() }
            internalFailure("cannot take over the io_uring: \(error)")
            return
        }
        let bell = domain.eventChannels.doorbell
        var poll = AdaptivePoll(maxNs: device.owner.settings.pollNs ?? AdaptivePoll.defaultMaxNs)
        var lastAnswered: UInt64 = 0  // when completions were last answered (monotonic ns)
        while !stopped {
            serviceRing()
            refreshFixedBuffer(uring)
            if reapAndRespond() > 0 { lastAnswered = MonotonicClock.nanoseconds() }
            if locked({ barrier != nil }) {
                runBarrier()
                continue
            }
            if uring.kicked {
                uring.kicked = false
                kickEvent.drain()
            }
            uring.doorbellRang = false
            // Idle from here. With I/O in flight, or just after answering (the frontend sends
            // the next requests within microseconds), look a while before sleeping: this vCPU
            // would halt, and a halted vCPU takes tens of microseconds to wake.
            let idleSince = MonotonicClock.nanoseconds()
            if poll.windowNs > 0 && (idleSince < lastAnswered + poll.maxNs || locked({ !inFlight.isEmpty })) {
                let deadline = idleSince + poll.windowNs
                var now = idleSince
                var nextYield = now + AdaptivePoll.yieldEveryNs
                while now < deadline && !stopped && !uring.hasCompletions && !hasRequests {
                    SharedAtomic.relax()
                    now = MonotonicClock.nanoseconds()
                    if now >= nextYield {
                        PosixThread.yield()  // a runnable frontend on this vCPU goes first
                        nextYield = now + AdaptivePoll.yieldEveryNs
                    }
                }
                if now < deadline { continue }
            }
            // Sleep, unless something arrived: counted as a sleeper first, so a frontend that
            // rings after the check below wakes the futex wait.
            SharedAtomic.fetchAdd(bell.sleepers, 1)
            let seen = SharedAtomic.load(bell.word)
            if !stopped && !hasRequests && !uring.hasCompletions {
                uring.armDoorbell(bell.word, expected: seen)
                uring.armKick(kickEvent.fd)
                uring.waitForEvent()
                poll.idled(MonotonicClock.nanoseconds() - idleSince)
            }
            SharedAtomic.fetchAdd(bell.sleepers, UInt32.max)  // -1
        }
        locked {
            uring.close()
            for (_, f) in inFlight where !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
            inFlight.removeAll()
        }
    }

    /// The queue thread (which alone may register with its ring): registers the aliased persistent
    /// pages as buffer 0 when there are more of them than it covers: at once while they keep
    /// doubling, else once the frontend's pool has stopped growing (no new page since the last
    /// look). Each registration pins the whole range again, so the pool is pinned about twice in
    /// all. A refusal (RLIMIT_MEMLOCK, say) is logged once; transfers then go without.
    private func refreshFixedBuffer(_ uring: IOUringBlockIOEngine) {
        locked {
            guard !closed, !fixedFailed, let region = fixedRegion else { return }
            let n = region.count
            defer { fixedSeen = n }
            guard n > fixedPages, n >= 2 * fixedPages || n == fixedSeen else { return }
            do {
                try uring.setFixedBuffer(0, UnsafeMutableRawBufferPointer(start: region.base, count: n * region.pageSize))
                fixedPages = n
            } catch {
                fixedFailed = true
                device.owner.log("blkback: \(label): persistent pages not registered with io_uring (\(error)); transfers pin them each time")
            }
        }
    }

    /// Requests on the ring not yet taken (a corrupt index counts: `serviceRing` reports it).
    private var hasRequests: Bool {
        locked {
            guard let ring, !closed else { return false }
            if replayed < replay.count { return true }
            return ((try? ring.pendingRequests()) ?? 1) > 0
        }
    }

    /// Served with the event dispatcher: it takes the requests; this thread answers completions
    /// (woken by the engine's eventfd) and runs barriers.
    private func runDispatched() {
        serviceRing()
        let pollNs = device.owner.settings.pollNs ?? 0
        while !stopped {
            if pollNs > 0 && locked({ !inFlight.isEmpty }) {
                // Completions expected soon: look for them a while rather than sleep (a sleeping
                // vCPU takes tens of microseconds to wake in a VM).
                let deadline = MonotonicClock.nanoseconds() + pollNs
                while MonotonicClock.nanoseconds() < deadline && !stopped {
                    if reapAndRespond() > 0 { break }
                    SharedAtomic.relax()
                }
            }
            kickEvent.wait(timeoutMs: 500, other: engine?.completionFD)
            reapAndRespond()
            if device.owner.queueThreadSubmits { serviceRing() }
            if locked({ barrier != nil }) {
                runBarrier()
                serviceRing()
            }
        }
    }

    private var stopped: Bool { SharedAtomic.load(&device.stop) != 0 }

    private func locked<R>(_ body: () -> R) -> R {
        mutex.lock()
        defer { mutex.unlock() }
        return body()
    }

    /// Takes every request on the ring and submits them to the engine as one batch; answers the
    /// refused ones. Called by the event dispatcher on every event of this queue's port (and by
    /// the queue thread); never waits for I/O. A WRITE_BARRIER stops the intake: the queue
    /// thread runs it once everything before it has completed, then takes the rest.
    func serviceRing() {
        mutex.lock()
        defer { mutex.unlock() }
        guard !closed, barrier == nil, !stopped, let ring, let engine else { return }
        var batch: [BlockIORequest] = []
        var responses: [Answer] = []
        var chunker = SubmitChunker(limit: submitChunk)
        do {
            intake: repeat {
                while let (request, entry) = try nextRequest(ring) {
                    let before = batch.count
                    if let b = handle(request, entry: entry, into: &batch, responses: &responses) {
                        barrier = b
                        barrierEntry = entry
                        break intake
                    }
                    if batch.count > before, let r = batch.last, chunker.cutAfter(r.op, offset: r.offset, length: r.length) {
                        // The first requests of a burst reach the disk before the rest is decoded.
                        try submit(batch, to: engine)
                        batch.removeAll(keepingCapacity: true)
                    }
                }
            } while ring.finalCheckForRequests()
        } catch let e as RingError {
            device.fail(.ring(queue: index, e))
            return
        } catch {
            internalFailure("the I/O engine refused a batch: \(error)")
            return
        }
        if !batch.isEmpty {
            do {
                try submit(batch, to: engine)
            } catch {
                internalFailure("the I/O engine refused a batch: \(error)")
                return
            }
        }
        respond(&responses)
        if barrier != nil { kickEvent.raise() }
    }

    /// Hands a batch to the engine (caller holds the lock); `fail-submit=N` makes the Nth throw
    /// as the kernel would refuse it.
    private func submit(_ batch: [BlockIORequest], to engine: BlockIOEngine) throws {
        if submitsBeforeFailure > 0 {
            submitsBeforeFailure -= 1
            if submitsBeforeFailure == 0 {
                throw SystemError("io_uring_enter", "fail-submit test setting", errno: .ioError)
            }
        }
        try engine.submit(batch)
    }

    /// An error of this backend's own making, not the frontend's (the I/O engine refused what it
    /// was given): with an in-flight log, the driver domain crashes so that a new incarnation
    /// takes the device over and the guest sees only a pause; without one, a restart would lose
    /// what is in flight, so only this device fails.
    private func internalFailure(_ why: String) {
        if log != nil { device.owner.crashForRestart("\(label): \(why)") }
        device.fail(.setup("\(label): \(why)"))
    }

    /// The next request to handle and its log entry (caller holds the lock): first those the
    /// previous incarnation took and did not answer (`replay`, from the log's copies), then the
    /// ring's, each recorded in the log before it is handled and then decoded from the log's copy
    /// (what a new incarnation would handle again). Nil when there is none.
    private func nextRequest(_ ring: BackRing) throws -> (UnsafeRawPointer, BlkbackInflightLog.Entry)? {
        if replayed < replay.count, let log {
            let e = replay[replayed]
            replayed += 1
            if replayed == replay.count {
                replay = []
                replayed = 0
            }
            return (log.request(e), e)
        }
        guard let slot = try ring.takeRequest() else { return nil }
        guard let log else { return (slot, BlkbackInflightLog.none) }
        let e = log.take(slot, at: ring.reqCons &- 1)
        return (log.request(e), e)
    }

    /// Answers what the engine has completed; returns how many.
    @discardableResult
    private func reapAndRespond() -> Int {
        locked {
            guard !closed, let engine else { return 0 }
            var responses = engine.reap(wait: false).map(complete)
            let n = responses.count
            respond(&responses)
            return n
        }
    }

    /// Puts responses on the ring and notifies (caller holds the lock). Each request's log entry
    /// says answered, and at which ring index, before the response is written there and
    /// published; the entries are freed once `rsp_prod` has passed them.
    private func respond(_ responses: inout [Answer]) {
        guard !responses.isEmpty, let ring, let port else { return }
        for a in responses {
            if let log, a.entry != BlkbackInflightLog.none { log.answer(a.entry, at: ring.rspProdPvt, with: a.response) }
            a.response.encode(to: ring.nextResponse())
        }
        let notify = ring.pushResponses()
        if let log {
            for a in responses where a.entry != BlkbackInflightLog.none { log.release(a.entry) }
        }
        responses.removeAll(keepingCapacity: true)
        if notify { try? domain.eventChannels.send(port) }
    }

    /// Queue thread, lock not held: waits until nothing is in flight (Linux's drain_io), then
    /// flush, the write if the barrier has data, flush; answers the barrier once.
    private func runBarrier() {
        guard let (rw, entry) = locked({ barrier.map { ($0, barrierEntry) } }) else { return }
        func waitCompletions() {
            if owned, let uring = engine as? IOUringBlockIOEngine {
                uring.armKick(kickEvent.fd)
                uring.waitForEvent()
                if uring.kicked { uring.kicked = false; kickEvent.drain() }
            } else {
                kickEvent.wait(timeoutMs: 100, other: engine?.completionFD)
            }
        }
        while !stopped {
            reapAndRespond()
            if locked({ inFlight.isEmpty }) { break }
            waitCompletions()
        }
        /// One engine request, waited for; other completions are answered meanwhile.
        func step(_ make: (UInt64) -> BlockIORequest, transient: [GrantMapping] = []) -> Bool {
            let tag: UInt64? = locked {
                guard !closed, let engine else { return nil }
                let tag = nextTag
                nextTag &+= 1
                // A step of the barrier, answered by the barrier's own response.
                inFlight[tag] = Pending(id: rw.id, op: rw.operation.rawValue, entry: BlkbackInflightLog.none, transient: transient)
                do { try engine.submit([make(tag)]) } catch { inFlight[tag] = nil; return nil }
                return tag
            }
            guard let tag else { return false }
            var ok: Bool?
            while ok == nil && !stopped {
                locked {
                    guard !closed, let engine else { return }
                    var responses: [Answer] = []
                    for c in engine.reap(wait: false) {
                        let a = complete(c)
                        if c.tag == tag { ok = a.response.status == .okay } else { responses.append(a) }
                    }
                    respond(&responses)
                }
                if ok == nil { waitCompletions() }
            }
            return ok ?? false
        }
        var status = BlkifStatus.okay
        if stopped { return }
        if !step({ .flush(tag: $0) }) { status = .error }
        if status == .okay && !rw.segments.isEmpty {
            var transient: [GrantMapping] = []
            if let (iov, fixed) = locked({ buffers(rw.segments, transient: &transient) }) {
                if !step({ .write(offset: rw.sectorNumber * 512, from: iov, tag: $0, fixedBuffer: fixed ? 0 : nil) }, transient: transient) {
                    status = .error
                }
            } else {
                device.owner.log("blkback: \(label): request \(rw.id) (BLKIF_OP_WRITE_BARRIER): \(mapFailure) is not granted to this backend")
                status = .error
            }
            if status == .okay && !step({ .flush(tag: $0) }) { status = .error }
        }
        locked {
            var responses = [Answer(response: BlkifResponse(id: rw.id, operation: rw.operation.rawValue, status: status), entry: entry)]
            respond(&responses)
            barrier = nil
            barrierEntry = BlkbackInflightLog.none
        }
    }

    /// Validates one request (the bytes of a slot, as the log holds them) and turns it into an
    /// engine request, or an immediate response; `entry` is its log entry, which the response
    /// carries. Returns a barrier with data or a barrier alone, which the caller runs after draining.
    private func handle(_ request: UnsafeRawPointer, entry: BlkbackInflightLog.Entry, into batch: inout [BlockIORequest],
                        responses: inout [Answer]) -> BlkifRequest.ReadWrite? {
        let req: BlkifRequest
        do {
            req = try BlkifRequest.decode(slot: request, maxIndirectSegments: BlkbackDevice.maxIndirectSegments)
        } catch let e as BlkifRequestError {
            device.owner.log("blkback: \(label): \(e)")
            responses.append(Answer(response: e.response, entry: entry))
            return nil
        } catch {
            return nil
        }
        func fail(_ status: BlkifStatus, _ why: String, op: UInt8? = nil) {
            device.owner.log("blkback: \(label): request \(req.id) (\(req.operation.xenName)): \(why)")
            responses.append(Answer(response: BlkifResponse(id: req.id, operation: op ?? req.operation.rawValue, status: status), entry: entry))
        }
        let tag = nextTag
        nextTag &+= 1
        var op: BlkifOp
        var sectorNumber: UInt64
        var segments: [BlkifSegment]
        switch req {
        case let .readWrite(rw):
            if rw.operation == .writeBarrier {
                if device.readOnly && !rw.segments.isEmpty { fail(.error, "write to a read-only disk"); return nil }
                return rw
            }
            if rw.operation == .flushDiskcache {
                BlkbackCounters.bump(&counters.flush)
                inFlight[tag] = Pending(id: rw.id, op: rw.operation.rawValue, entry: entry)
                batch.append(.flush(tag: tag))
                return nil
            }
            op = rw.operation
            sectorNumber = rw.sectorNumber
            segments = rw.segments
        case let .indirect(ind):
            guard ind.indirectOp == .read || ind.indirectOp == .write else {
                fail(.error, "indirect_op \(ind.indirectOp.xenName) is not a read or a write", op: ind.indirectOp.rawValue)
                return nil
            }
            var transient: [GrantMapping] = []
            guard let pages = mappings(ind.indirectGrefs.prefix(ind.pageCount).map { $0 }, readonly: true, transient: &transient) else {
                fail(.error, "indirect page \(mapFailure) is not granted to this backend", op: ind.indirectOp.rawValue)
                return nil
            }
            do {
                segments = try ind.segments(pages: pages.map { UnsafeRawPointer($0.base) })
            } catch let e as BlkifRequestError {
                if !transient.isEmpty { _ = domain.grantTable.unmap(transient) }
                device.owner.log("blkback: \(label): \(e)")
                responses.append(Answer(response: e.response, entry: entry))
                return nil
            } catch {
                return nil
            }
            if !transient.isEmpty { _ = domain.grantTable.unmap(transient) }
            op = ind.indirectOp
            sectorNumber = ind.sectorNumber
        case let .discard(d):
            if device.readOnly { fail(.error, "discard on a read-only disk"); return nil }
            guard d.sectorNumber <= device.sectors, d.nrSectors <= device.sectors - d.sectorNumber else {
                fail(.error, "discard \(d.sectorNumber)+\(d.nrSectors) past the end of the disk")
                return nil
            }
            BlkbackCounters.bump(&counters.discard)
            inFlight[tag] = Pending(id: d.id, op: BlkifOp.discard.rawValue, entry: entry)
            batch.append(.discard(offset: d.sectorNumber * 512, length: d.nrSectors * 512, tag: tag))
            return nil
        }
        // An indirect request is answered with its indirect_op, as Linux's blkback does (and
        // Linux's blkfront checks).
        let wireOp = op.rawValue
        let writing = op == .write
        if writing && device.readOnly { fail(.error, "write to a read-only disk", op: wireOp); return nil }
        let count = segments.reduce(UInt64(0)) { $0 + UInt64($1.sectorCount) }
        guard sectorNumber <= device.sectors, count <= device.sectors - sectorNumber else {
            fail(.error, "sectors \(sectorNumber)+\(count) past the end of the disk (\(device.sectors) sectors)", op: wireOp)
            return nil
        }
        if writing {
            BlkbackCounters.bump(&counters.writes)
            BlkbackCounters.bump(&counters.writeSectors, by: count)
        } else {
            BlkbackCounters.bump(&counters.reads)
            BlkbackCounters.bump(&counters.readSectors, by: count)
        }
        if segments.isEmpty {
            // A read or write of nothing: nothing to do.
            responses.append(Answer(response: BlkifResponse(id: req.id, operation: wireOp, status: .okay), entry: entry))
            return nil
        }
        var transient: [GrantMapping] = []
        guard let (iov, fixed) = buffers(segments, transient: &transient) else {
            fail(.error, "\(mapFailure) is not granted to this backend", op: wireOp)
            return nil
        }
        let offset = sectorNumber * 512
        let total = Int(count) * 512
        if let (buffer, run, index) = staging(total) {
            // One contiguous stretch for the disk; the grant pages' bytes copied in now
            // (writes) or out at completion (reads).
            if writing { BounceBuffers.gather(iov, into: buffer) }
            inFlight[tag] = Pending(id: req.id, op: wireOp, entry: entry, transient: transient, bounce: run, readInto: writing ? [] : iov)
            let one = [UnsafeMutableRawBufferPointer(start: buffer, count: total)]
            batch.append(writing ? .write(offset: offset, from: one, tag: tag, fixedBuffer: index)
                                 : .read(offset: offset, into: one, tag: tag, fixedBuffer: index))
            return nil
        }
        inFlight[tag] = Pending(id: req.id, op: wireOp, entry: entry, transient: transient)
        let registered = fixed ? 0 : nil
        batch.append(writing ? .write(offset: offset, from: iov, tag: tag, fixedBuffer: registered)
                             : .read(offset: offset, into: iov, tag: tag, fixedBuffer: registered))
        return nil
    }

    /// A stretch of `bounce` for a request of `total` bytes (and its registered buffer index),
    /// when it is large enough to be staged and one is free. Makes the region at the first
    /// such request; an owned ring registers it then (this is its thread).
    private func staging(_ total: Int) -> (UnsafeMutableRawPointer, BounceBuffers.Run, Int?)? {
        guard total >= bounceMin, total <= Self.bounceBytes else { return nil }
        if bounce == nil {
            guard !bounceTried else { return nil }
            bounceTried = true
            // Without budget (all taken by other queues, or staging-mib=0) large requests go to
            // the grant pages directly, as they did before staging.
            guard device.owner.reserveStaging(Self.bounceBytes) else { return nil }
            guard let b = BounceBuffers(bytes: Self.bounceBytes) else {
                device.owner.releaseStaging(Self.bounceBytes)
                device.owner.log("blkback: \(label): no memory for staging large transfers; they go to the grant pages directly")
                return nil
            }
            bounce = b
            if owned, fixedAllowed, let uring = engine as? IOUringBlockIOEngine {
                do {
                    try uring.setFixedBuffer(1, b.region)
                    bounceRegistered = true
                } catch {
                    device.owner.log("blkback: \(label): staging buffer not registered with io_uring (\(error))")
                }
            }
        }
        guard let b = bounce, let run = b.take(total) else { return nil }
        staged += 1
        return (b.address(run), run, bounceRegistered ? 1 : nil)
    }

    /// The segments' bytes in the frontend's pages, and whether they all lie in the registered
    /// buffer; nil (nothing left mapped) when a gref cannot be mapped.
    private func buffers(_ segments: [BlkifSegment], transient: inout [GrantMapping]) -> (iov: [UnsafeMutableRawBufferPointer], fixed: Bool)? {
        // The usual case once a frontend's pages are known: every one persistently mapped.
        var iov: [UnsafeMutableRawBufferPointer] = []
        iov.reserveCapacity(segments.count)
        var fixed = fixedPages > 0
        for seg in segments {
            guard let p = persistentMaps[seg.gref] else { break }
            if p.alias < 0 || p.alias >= fixedPages { fixed = false }
            iov.append(UnsafeMutableRawBufferPointer(start: p.io + seg.byteOffset, count: seg.byteCount))
        }
        if iov.count == segments.count { return (iov, fixed) }
        guard let maps = mappings(segments.map(\.gref), readonly: false, transient: &transient) else { return nil }
        return (zip(segments, maps).map { seg, m in UnsafeMutableRawBufferPointer(start: m.base + seg.byteOffset, count: seg.byteCount) }, false)
    }

    /// The frontend's pages for `grefs`: persistent mappings when negotiated (and room is left),
    /// else mapped for this request only (appended to `transient`). New ones are mapped 16 per
    /// hypercall. Nil when any cannot be mapped (the request's transient ones are unmapped).
    private func mappings(_ grefs: [GrantRef], readonly: Bool, transient: inout [GrantMapping]) -> [GrantMapping]? {
        /// This request's transient mappings (the persistent ones are looked up below).
        var known: [GrantRef: GrantMapping] = [:]
        var missing: [GrantRef] = []
        for g in grefs where (readonly ? persistentIndirect[g] : persistentMaps[g]?.mapping) == nil && !missing.contains(g) { missing.append(g) }
        let firstTransient = transient.count
        for start in stride(from: 0, to: missing.count, by: 16) {
            let chunk = missing[start..<min(missing.count, start + 16)]
            let results = domain.grantTable.map(chunk.map { (device.frontend, $0, readonly) })
            var failed = false
            for (g, r) in zip(chunk, results) {
                guard case let .success(m) = r else {
                    if !failed, case let .failure(e) = r { mapFailure = "gref \(g) (\(e))" }
                    failed = true
                    continue
                }
                if device.persistent && persistentMaps.count + persistentIndirect.count < Self.maxPersistentGrants {
                    if readonly {
                        persistentIndirect[g] = m
                    } else if let region = fixedRegion, let a = region.append(m.base) {
                        persistentMaps[g] = PersistentPage(mapping: m, io: region.address(a), alias: a)
                    } else {
                        persistentMaps[g] = PersistentPage(mapping: m, io: m.base, alias: -1)
                    }
                } else {
                    transient.append(m)
                    known[g] = m
                }
            }
            if failed {
                let mine = Array(transient[firstTransient...])
                if !mine.isEmpty { _ = domain.grantTable.unmap(mine) }
                transient.removeSubrange(firstTransient...)
                return nil
            }
        }
        var out: [GrantMapping] = []
        out.reserveCapacity(grefs.count)
        for g in grefs {
            guard let m = (readonly ? persistentIndirect[g] : persistentMaps[g]?.mapping) ?? known[g] else { return nil }
            out.append(m)
        }
        return out
    }

    private func complete(_ c: BlockIOCompletion) -> Answer {
        guard let f = inFlight.removeValue(forKey: c.tag) else {
            return Answer(response: BlkifResponse(id: 0, operation: 0, status: .error), entry: BlkbackInflightLog.none)
        }
        if let run = f.bounce, let b = bounce {
            if case .success = c.result, !f.readInto.isEmpty { BounceBuffers.scatter(b.address(run), to: f.readInto) }
            b.give(run)
        }
        if !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
        switch c.result {
        case .success:
            return Answer(response: BlkifResponse(id: f.id, operation: f.op, status: .okay), entry: f.entry)
        case let .failure(e):
            device.owner.log("blkback: \(label): request \(f.id) failed: \(e)")
            return Answer(response: BlkifResponse(id: f.id, operation: f.op, status: .error), entry: f.entry)
        }
    }

    /// After the thread has ended: the engine (in-flight I/O finishes or is cancelled into the
    /// pages first), the grants, the ring, the port.
    func teardown() {
        mutex.lock()
        defer { mutex.unlock() }
        closed = true
        if owned, let uring = engine as? IOUringBlockIOEngine, uring.transfers > 0 {
            device.owner.log("blkback: \(label): \(uring.transfers) transfers, \(uring.fixedTransfers) on registered buffers, \(staged) staged")
        } else if staged > 0 {
            device.owner.log("blkback: \(label): \(staged) staged")
        }
        if let e = engine {
            e.close()
            for (_, f) in inFlight where !f.transient.isEmpty { _ = domain.grantTable.unmap(f.transient) }
            inFlight.removeAll()
        }
        engine = nil
        if bounce != nil {
            bounce = nil
            device.owner.releaseStaging(Self.bounceBytes)
        }
        // The aliases first: unmapping a grant that is still mapped somewhere is refused.
        fixedRegion?.release()
        fixedRegion = nil
        let persistent = persistentMaps.values.map(\.mapping) + Array(persistentIndirect.values)
        if !persistent.isEmpty { _ = domain.grantTable.unmap(persistent) }
        persistentMaps.removeAll()
        persistentIndirect.removeAll()
        if let m = ringMapping { _ = domain.grantTable.unmap(m) }
        ringMapping = nil
        ring = nil
        // The log's memory stays with the supervisor as it is: a device torn down is Closed, never
        // resumed, and its next connection starts the log afresh.
        log = nil
        replay = []
        recovery = nil
        logMemory?.unmap()
        logMemory = nil
        if let p = port { try? domain.eventChannels.close(p) }
        kickEvent.close()
    }
}

/// A queue's request counts (`BlkbackQueue.counters`): one writer (the queue's thread), read by
/// the device's thread with atomic loads.
struct BlkbackCounters: Equatable {
    var reads: UInt64 = 0
    var writes: UInt64 = 0
    var flush: UInt64 = 0
    var discard: UInt64 = 0
    var readSectors: UInt64 = 0
    var writeSectors: UInt64 = 0

    static func bump(_ p: UnsafeMutablePointer<UInt64>, by n: UInt64 = 1) {
        SharedAtomic.store(p, SharedAtomic.load(p) &+ n)
    }

    /// A consistent enough copy for statistics (each field loaded atomically).
    static func snapshot(_ p: UnsafeMutablePointer<BlkbackCounters>) -> BlkbackCounters {
        p.withMemoryRebound(to: UInt64.self, capacity: 6) { w in
            BlkbackCounters(reads: SharedAtomic.load(w), writes: SharedAtomic.load(w + 1), flush: SharedAtomic.load(w + 2),
                            discard: SharedAtomic.load(w + 3), readSectors: SharedAtomic.load(w + 4), writeSectors: SharedAtomic.load(w + 5))
        }
    }

    static func + (a: BlkbackCounters, b: BlkbackCounters) -> BlkbackCounters {
        BlkbackCounters(reads: a.reads &+ b.reads, writes: a.writes &+ b.writes, flush: a.flush &+ b.flush, discard: a.discard &+ b.discard,
                        readSectors: a.readSectors &+ b.readSectors, writeSectors: a.writeSectors &+ b.writeSectors)
    }

    /// The backend's `statistics` node: `key value` pairs (as netback's), the keys Linux
    /// blkback's sysfs statistics files. `oo_req` (requests that waited for a free request
    /// structure) is always 0 here: blkback takes every request its ring holds.
    var text: String {
        "oo_req 0 rd_req \(reads) wr_req \(writes) f_req \(flush) ds_req \(discard) rd_sect \(readSectors) wr_sect \(writeSectors)"
    }
}

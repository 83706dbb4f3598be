import LinuxHost

/// A lock with two condition variables (no Foundation in driver domains).
private final class PoolState {
    let mutex = Lock()
    let work = Condition()
    let done = Condition()
    let disk: FileDescriptor
    let eventFD: FileDescriptor
    @exclusivity(unchecked) var queue: [BlockTransfer] = []
    @exclusivity(unchecked) var queueHead = 0
    @exclusivity(unchecked) var finished: [BlockIOCompletion] = []
    /// Transfers a worker has taken and not finished.
    @exclusivity(unchecked) var busy = 0
    @exclusivity(unchecked) var stopping = false

    init(disk: FileDescriptor, eventFD: FileDescriptor) {
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
            BlockIOEventFD.signal(eventFD)
        }
    }

    private func perform(_ t: inout BlockTransfer) -> Result<Int, Errno> {
        switch t.op {
        case .flush:
            return disk.syncData().map { 0 }  // EINTR retried
        case .discard:
            do {
                try MemFD.punchHole(disk, offset: Int(t.offset), length: t.total)
                return .success(t.total)
            } catch let e as SystemError {
                return .failure(e.errno)
            } catch {
                return .failure(.ioError)
            }
        case .read, .write:
            while !t.finished {
                let v = t.iov! + t.first
                let n = Swift.min(t.remainingIovecs, BlockIO.maxSegments)
                let off = Int64(bitPattern: t.offset)
                // preadv/pwritev, nothing retried inside: EINTR and EAGAIN count against `retries`.
                let result = t.op == .read ? disk.read(vector: v, count: n, at: off) : disk.write(vector: v, count: n, at: off)
                switch result {
                case let .failure(e):
                    if (e == .interrupted || e == .wouldBlock) && t.retries < 100 {
                        t.retries += 1
                        continue
                    }
                    return .failure(e)
                case let .success(rc):
                    if rc == 0 { return .failure(.ioError) }  // end of file, or no progress
                    t.advance(by: Swift.min(rc, t.total - t.done))
                }
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
    @exclusivity(unchecked) private var threads: [PosixThread] = []
    @exclusivity(unchecked) private var closed = false
    var threadCount: Int { threads.count }

    init(disk: FileDescriptor, queueDepth: Int) throws {
        completionFD = try BlockIOEventFD.make()
        let state = PoolState(disk: disk, eventFD: completionFD)
        self.state = state
        let count = Swift.max(1, Swift.min(BlockIO.poolThreads, queueDepth))
        var lastError = Errno(rawValue: 0)
        for i in 0..<count {
            do {
                threads.append(try PosixThread.start { state.run(index: i) })
            } catch {
                if let e = error as? SystemError { lastError = e.errno }
            }
        }
        if threads.isEmpty {
            completionFD.close()
            closed = true
            throw SystemError("pthread_create", "block I/O worker", errno: lastError)
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
        if !immediate.isEmpty { BlockIOEventFD.signal(completionFD) }
    }

    func reap(wait: Bool) -> [BlockIOCompletion] {
        guard !closed else { return [] }
        BlockIOEventFD.drain(completionFD)  // before taking: a completion posted after this re-arms it
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
        for t in threads { t.join() }  // each finishes the transfer it holds first
        threads.removeAll()
        state.finished.removeAll()
        completionFD.close()
    }
}

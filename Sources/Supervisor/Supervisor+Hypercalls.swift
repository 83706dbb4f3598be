import LinuxHost
import ProcvisorABI
import Toolstack

extension Supervisor {
    /// Messages handled per wakeup, so one chatty domain cannot starve the others.
    static let hypercallBatch = 64

    func hypercallReadable(_ dom: DomainRecord) {
        for _ in 0..<Self.hypercallBatch {
            guard dom.hasProcess, !dom.released, dom.phase != .dying else { return }
            let message: UnixSocket.Message?
            do {
                message = try UnixSocket.receive(dom.hypercallFD, maxSize: HypercallRequest.maxMessageSize + 1, nonBlocking: true)
            } catch let e as SystemError where e.errno == .wouldBlock {
                return
            } catch let e as SystemError where e.errno == .connectionReset {
                unwatchHypercalls(dom)  // the process is going away; SIGCHLD finishes the story
                return
            } catch {
                crash(dom, "hypercall channel failed: \(error)")
                return
            }
            guard let message else {
                // The domain closed its channel: it is exiting; SIGCHLD finishes the story.
                unwatchHypercalls(dom)
                return
            }
            // Descriptors from a domain are never expected yet; close them so none leak.
            message.fds.forEach { $0.close() }
            if message.truncated || message.bytes.count > HypercallRequest.maxMessageSize {
                crash(dom, "oversized hypercall (more than \(HypercallRequest.maxMessageSize) bytes)")
                return
            }
            let request: HypercallRequest
            do {
                request = try HypercallRequest.decode(message.bytes)
            } catch {
                answer(dom, seq: message.bytes.count >= 16 ? Self.seqOf(message.bytes) : 0, .malformed("\(error)"))
                continue
            }
            answer(dom, seq: request.seq, dispatch(dom, request))
        }
    }

    static func seqOf(_ b: [UInt8]) -> UInt64 {
        var r = WireReader(b, what: "seq", offset: 8)
        return (try? r.u64()) ?? 0
    }

    func unwatchHypercalls(_ dom: DomainRecord) {
        dom.watchTokens.removeAll { fd, token in
            if fd == dom.hypercallFD { loop.unwatch(fd, token: token); return true }
            return false
        }
    }

    /// Turns a handler's outcome into the request's one reply (none when deferred or crashed).
    func answer(_ dom: DomainRecord, seq: UInt64, _ outcome: HypercallOutcome) {
        switch outcome {
        case let .reply(rc, payload, fds, owned):
            reply_(dom, HypercallReply(seq: seq, rc: rc, payload: payload), fds: fds)
            owned.forEach { $0.close() }
        case .deferred:
            break
        case let .malformed(why):
            if countMalformed(dom, why) { reply_(dom, .error(seq, .EINVAL)) }
        case let .crash(why):
            crash(dom, why)
        }
    }

    /// Counts a malformed hypercall; at the limit the domain is crashed. True while it lives on.
    func countMalformed(_ dom: DomainRecord, _ why: String) -> Bool {
        dom.malformedHypercalls += 1
        logger.warning("malformed hypercall", metadata: ["domid": "\(dom.domid)", "error": "\(why)"])
        if dom.malformedHypercalls >= options.malformedHypercallLimit {
            crash(dom, "sent \(dom.malformedHypercalls) malformed hypercalls (last: \(why))")
            return false
        }
        return true
    }

    /// Sends a reply without blocking. A domain that does not read its replies is flooding: crash it.
    func reply_(_ dom: DomainRecord, _ reply: HypercallReply, fds: [FileDescriptor] = []) {
        send(dom, on: dom.hypercallFD, reply.encode(), fds: fds, overflow: "hypercall flood: replies are not being read")
    }

    /// Sends a channel message (with descriptors) on the domain's event socket. What it has no
    /// room for waits in `pendingChannelEvents` (others' actions cause these messages: a domain
    /// must not be crashed because a peer binds and closes its port in a loop) and is sent as
    /// soon as there is room; a domain that takes none of them for `xenstoreEventTimeoutMs` is
    /// crashed, as one that does not read its replies.
    func pushChannelEvent(_ dom: DomainRecord, _ event: ChannelEvent, fds: [FileDescriptor] = []) {
        guard dom.hasProcess, !dom.released else { return }
        let p = dom.process
        if p.pendingChannelEvents.isEmpty {
            do {
                try UnixSocket.send(dom.eventFD, event.encode(), fds: fds, nonBlocking: true)
                return
            } catch let e as SystemError where e.errno == .wouldBlock {
                // queued below
            } catch let e as SystemError where e.errno == .brokenPipe || e.errno == .connectionReset {
                return
            } catch {
                return crash(dom, "a channel event could not be sent to it: \(error)")
            }
        }
        let copies: [FileDescriptor]
        do { copies = try fds.map { try $0.duplicate() } } catch {
            return crash(dom, "its channel events cannot be kept for it: \(error)")
        }
        func portOf(_ e: ChannelEvent) -> EvtchnPort? {
            switch e {
            case let .portBound(port, _, _), let .portUnbound(port): return port
            // An upcall is not a state: it stays, whatever comes after it for its port.
            case .peerPages, .upcall: return nil
            }
        }
        if let changed = portOf(event) { p.pendingChannelEvents.removeAll { portOf($0.event) == changed } }
        p.pendingChannelEvents.append((event, copies))
        if p.channelBacklogSince == nil { p.channelBacklogSince = MonotonicClock.nanoseconds() }
        if p.channelRetryTimer == nil { retryChannelEvents(dom) }
    }

    /// Tries the queued channel events again in 10 ms.
    private func retryChannelEvents(_ dom: DomainRecord) {
        dom.process.channelRetryTimer = loop.after(ms: 10) { [weak self, weak dom] in
            guard let self, let dom else { return }
            dom.process.channelRetryTimer = nil
            flushChannelEvents(dom)
        }
    }

    /// Sends the queued channel events that fit; comes back later for the rest.
    func flushChannelEvents(_ dom: DomainRecord) {
        let p = dom.process
        guard dom.hasProcess, !dom.released else { return dropChannelEvents(dom) }
        while let (event, fds) = p.pendingChannelEvents.first {
            do {
                try UnixSocket.send(dom.eventFD, event.encode(), fds: fds, nonBlocking: true)
            } catch let e as SystemError where e.errno == .wouldBlock {
                break
            } catch {
                dropChannelEvents(dom)
                return
            }
            fds.forEach { $0.close() }
            p.pendingChannelEvents.removeFirst()
        }
        guard !p.pendingChannelEvents.isEmpty else {
            p.channelBacklogSince = nil
            return
        }
        let waited = MonotonicClock.nanoseconds() - (p.channelBacklogSince ?? 0)
        if waited / 1_000_000 >= options.xenstoreEventTimeoutMs {
            dropChannelEvents(dom)
            return crash(dom, "event socket overflow: the domain has not taken its events for \(waited / 1_000_000_000) s")
        }
        retryChannelEvents(dom)
    }

    /// Forgets the queued channel events (the domain is gone), closing their descriptors.
    func dropChannelEvents(_ dom: DomainRecord) {
        let p = dom.process
        for (_, fds) in p.pendingChannelEvents { fds.forEach { $0.close() } }
        p.pendingChannelEvents.removeAll()
        loop.cancel(p.channelRetryTimer)
        p.channelRetryTimer = nil
        p.channelBacklogSince = nil
    }

    /// One datagram to a live domain without blocking; a full socket crashes the domain with
    /// `overflow` as the reason. EPIPE/ECONNRESET: the domain is exiting, and SIGCHLD will tell.
    /// Any other failure (ETOOMANYREFS: descriptors in flight to it that it does not take, say)
    /// would leave the domain waiting for a reply that never comes: it is crashed with the errno.
    private func send(_ dom: DomainRecord, on fd: FileDescriptor, _ bytes: [UInt8], fds: [FileDescriptor], overflow: String) {
        guard dom.hasProcess, !dom.released else { return }
        do {
            try UnixSocket.send(fd, bytes, fds: fds, nonBlocking: true)
        } catch let e as SystemError where e.errno == .wouldBlock {
            crash(dom, overflow)
        } catch let e as SystemError where e.errno == .brokenPipe || e.errno == .connectionReset {
            return
        } catch {
            crash(dom, "a message to it could not be sent: \(error)")
        }
    }

    /// Looks the operation up in the hypercall table and runs its handler, if the domain's phase
    /// and (inside a multicall) the row allow it.
    func dispatch(_ dom: DomainRecord, _ r: HypercallRequest, inMulticall: Bool = false) -> HypercallOutcome {
        guard let op = HypercallOp(rawValue: r.op), let row = Self.hypercallTable[op] else { return .error(.ENOSYS) }
        guard row.phases.contains(dom.phase) else { return .error(.EPERM) }
        if inMulticall && !row.multicall.allows(r) { return .error(.EINVAL) }
        return row.handle(self, dom, r)
    }

    // MARK: the handlers that need no service of their own

    /// `SCHEDOP_block` calls a domain may have waiting at once.
    static let maxPendingBlocks = 64

    func seccompViolation(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        let nr = Int(Int64(bitPattern: r.args[0]))
        let name = Syscalls.name(nr) ?? "#\(nr)"
        // The reporter sends one report and the process dies of SIGSYS. More reports are a
        // domain making its own: logged once, then counted as malformed (so it cannot flood
        // the logs, and is crashed at the limit).
        guard !dom.seccompReported else { return .malformed("another report of a forbidden system call (\(name))") }
        dom.seccompReported = true
        if dom.crashReason == nil { dom.crashReason = "forbidden system call \(name)" }
        log("\(dom.label): forbidden system call \(name)")
        logger.error("forbidden system call", metadata: ["domid": "\(dom.domid)", "name": "\(dom.name)", "syscall": "\(name)"])
        return .deferred
    }

    func bootstrap(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard !dom.bootstrapped else { return .error(.EPERM) }
        dom.bootstrapped = true
        if dom.process.awaitingPages {
            // A restore's kernel, started while its pages are read: it learns its start-info
            // (resume record included) once they are all in (`restoreFinish`).
            dom.process.deferredBootstrap = r.seq
            return .deferred
        }
        return startInfoReply(dom)
    }

    /// The bootstrap's answer: the start-info and the descriptors a domain maps.
    func startInfoReply(_ dom: DomainRecord) -> HypercallOutcome {
        let c = dom.config
        let info = StartInfo(domid: dom.domid, name: dom.name, uuid: dom.uuid,
                             memoryKB: UInt64(c.memory) * 1024, maxMemoryKB: UInt64(c.maxmem) * 1024,
                             vcpus: UInt32(c.vcpus), maxVCPUs: UInt32(c.maxvcpus), cmdline: c.commandLine,
                             flags: c.driverDomain ? StartInfo.driverDomainFlag : 0,
                             engageTimeoutMs: UInt32(options.engageTimeoutMs), machineFrames: machine.totalFrames,
                             storePort: dom.store?.port ?? 0, resumeRecord: dom.process.resumeRecord)
        var fds: [FileDescriptor] = []
        if let events = eventChannels.bootDescriptors(dom.domid), let mem = machine.domains[dom.domid], let store = dom.store {
            fds = events + [mem.ramFD, mem.p2mReadOnlyFD, machine.m2pReadOnlyFD, store.page.fd, store.kick]
        }
        return .ok(0, info.encode(), fds: fds)
    }

    static func xenVersion(_ r: HypercallRequest) -> HypercallOutcome {
        switch XenVersionCmd(rawValue: r.args[0]) {
        case .version: return .ok(Int64(ProcvisorVersion.major << 16 | ProcvisorVersion.minor))
        case .extraversion: return .ok(0, Array(ProcvisorVersion.extra.utf8))
        case .capabilities: return .ok(0, Array(ProcvisorVersion.capabilities.utf8))
        case .pagesize: return .ok(4096)
        case nil: return .error(.ENOSYS)
        }
    }

    func consoleIO(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard ConsoleIOCmd(rawValue: r.args[0]) == .write else { return .error(.ENOSYS) }
        guard r.args[1] == UInt64(r.payload.count) else { return .error(.EINVAL) }
        consoles.readable(dom)  // what the guest printed before this call comes first
        consoles.output(dom, r.payload[...])
        return .ok()
    }

    static func vcpuOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        switch VCPUOp(rawValue: r.args[0]) {
        case .isUp:
            let vcpu = r.args[1]
            if vcpu < UInt64(dom.config.vcpus) { return .ok(1) }
            if vcpu < UInt64(dom.config.maxvcpus) { return .ok(0) }
            return .error(.ENOENT)
        default:
            return .error(.ENOSYS)
        }
    }

    func schedOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        switch SchedOp(rawValue: r.args[0]) {
        case .yield:
            return .ok()
        case .block:
            if dom.requestedShutdown != nil { return .ok(1) }
            // One per thread that can block; a domain asking for more is refused, not queued.
            guard dom.pendingBlocks.count < Self.maxPendingBlocks else { return .error(.EBUSY) }
            let seq = r.seq
            let timeoutNs = r.args[1]
            var timer: UInt64?
            if timeoutNs != UInt64.max {
                timer = loop.after(ms: max(1, timeoutNs / 1_000_000)) { [weak self, weak dom] in
                    guard let self, let dom else { return }
                    dom.pendingBlocks.removeAll { $0.seq == seq }
                    self.reply_(dom, HypercallReply(seq: seq, rc: 0))
                }
            }
            dom.pendingBlocks.append((seq, timer))
            return .deferred
        case .shutdown:
            guard let reason = ShutdownReason(rawValue: UInt32(truncatingIfNeeded: r.args[1])), r.args[1] <= 5 else {
                return .error(.EINVAL)
            }
            if reason == .suspend { return guestSuspend(dom, r) }
            guardedShutdown(dom, reason: reason)
            return .ok()
        case nil:
            return .error(.ENOSYS)
        }
    }

    func setTimerOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        loop.cancel(dom.virqTimer)
        dom.virqTimer = nil
        let deadline = r.args[0]
        if deadline != 0 {
            // To the nanosecond (the loop's timerfd); a deadline passed already fires at once,
            // one absurdly far away is held to a year.
            dom.virqTimer = loop.at(deadline) { [weak self, weak dom] in
                guard let self, let dom, dom.hasProcess else { return }
                dom.virqTimer = nil
                self.eventChannels.raiseVirq(dom.domid, .timer)
            }
        }
        return .ok()
    }

    /// `__HYPERVISOR_multicall`: each call's outcome becomes its entry in the results; none is
    /// sent on its own. Rows that hand back descriptors or block are refused inside (EINVAL).
    func multicall(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        let calls: [HypercallRequest]
        do {
            calls = try Multicall.decode(r.payload)
        } catch {
            return .malformed("multicall: \(error)")
        }
        var results: [HypercallReply] = []
        for c in calls {
            switch dispatch(dom, c, inMulticall: true) {
            case let .reply(rc, payload, fds, owned):
                owned.forEach { $0.close() }
                // A multicall's results carry no descriptors. No row a multicall may carry hands
                // any back; should one ever do, its caller gets EINVAL, not a reply it cannot use.
                if !fds.isEmpty {
                    logger.error("a multicall carried an operation that returns descriptors", metadata: ["domid": "\(dom.domid)", "op": "\(c.op)"])
                    results.append(.error(c.seq, .EINVAL))
                } else {
                    results.append(HypercallReply(seq: c.seq, rc: rc, payload: payload))
                }
            case .deferred:
                results.append(.error(c.seq, .EINVAL))
            case let .malformed(why):
                guard countMalformed(dom, why) else { return .deferred }
                results.append(.error(c.seq, .EINVAL))
            case let .crash(why):
                return .crash(why)
            }
            if !dom.hasProcess || dom.phase != .running { break }
        }
        return .ok(0, Multicall.encodeResults(results))
    }

    /// The runtime says it is up. Nothing the domain may do depends on this: the supervisor
    /// installed the bounding filter before exec, so a domain that claims to be engaged without
    /// narrowing it further is exactly as confined. The check below only confirms, from /proc,
    /// that the bound is in place (a kernel bug or a launcher regression would show here).
    func engage(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard dom.bootstrapped else { return .error(.EPERM) }
        let status: (mode: Int, filters: Int)
        do {
            status = try ProcFS.seccomp(of: dom.pid)
        } catch {
            return .crash("cannot verify the domain's seccomp bound: \(error)")
        }
        guard status.mode == 2, status.filters >= 1 else {
            return .crash("seccomp bound missing (Seccomp: \(status.mode), filters: \(status.filters))")
        }
        loop.cancel(dom.engageTimer)
        dom.engageTimer = nil
        dom.phase = .running
        if dom.startPaused {
            // Stop it before it reads the reply, so no guest code runs until `xl unpause`.
            try? Signals.send(Signals.stop, to: dom.pid)
            dom.paused = true
        }
        log("\(dom.label): sandbox engaged, \(dom.startPaused ? "paused" : "running")")
        scheduleStandby(dom)
        logger.info("domain engaged", metadata: ["domid": "\(dom.domid)", "paused": "\(dom.startPaused)"])
        if let w = dom.createWaiter {
            w.send(.created(domid: dom.domid.rawValue))
            dom.createWaiter = nil
        }
        return .ok()
    }
}

import Glibc
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
                malformed(dom, seq: message.bytes.count >= 16 ? Self.seqOf(message.bytes) : 0, "\(error)")
                continue
            }
            if let reply = dispatch(dom, request) { reply_(dom, reply, fds: replyFDs) }
            replyFDs = []
            replyOwnedFDs.forEach { $0.close() }
            replyOwnedFDs = []
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

    func malformed(_ dom: DomainRecord, seq: UInt64, _ why: String) {
        dom.malformedHypercalls += 1
        logger.warning("malformed hypercall", metadata: ["domid": "\(dom.domid)", "error": "\(why)"])
        if dom.malformedHypercalls >= options.malformedHypercallLimit {
            crash(dom, "sent \(dom.malformedHypercalls) malformed hypercalls (last: \(why))")
            return
        }
        reply_(dom, .error(seq, .EINVAL))
    }

    /// Sends a reply without blocking. A domain that does not read its replies is flooding: crash it.
    func reply_(_ dom: DomainRecord, _ reply: HypercallReply, fds: [FileDescriptor] = []) {
        guard dom.hasProcess, !dom.released else { return }
        do {
            try UnixSocket.send(dom.hypercallFD, reply.encode(), fds: fds, nonBlocking: true)
        } catch let e as SystemError where e.errno == .wouldBlock {
            crash(dom, "hypercall flood: replies are not being read")
        } catch {
            // EPIPE/ECONNRESET: the domain is exiting; SIGCHLD will tell.
        }
    }

    /// Handles one request; nil when the reply is deferred (SCHEDOP_block) or there is none.
    func dispatch(_ dom: DomainRecord, _ r: HypercallRequest, inMulticall: Bool = false) -> HypercallReply? {
        let seq = r.seq
        guard let op = HypercallOp(rawValue: r.op) else { return .error(seq, .ENOSYS) }
        switch op {
        case .seccompViolation:
            let nr = Int(Int64(bitPattern: r.args[0]))
            let name = Syscalls.name(nr) ?? "#\(nr)"
            if dom.crashReason == nil { dom.crashReason = "forbidden system call \(name)" }
            log("\(dom.label): forbidden system call \(name)")
            logger.error("forbidden system call", metadata: ["domid": "\(dom.domid)", "name": "\(dom.name)", "syscall": "\(name)"])
            return nil
        case .bootstrap:
            guard dom.phase == .booting, !dom.bootstrapped, !inMulticall else { return .error(seq, .EPERM) }
            dom.bootstrapped = true
            let c = dom.config
            let info = StartInfo(domid: dom.domid, name: dom.name, uuid: dom.uuid,
                                 memoryKB: UInt64(c.memory) * 1024, maxMemoryKB: UInt64(c.maxmem) * 1024,
                                 vcpus: UInt32(c.vcpus), maxVCPUs: UInt32(c.maxvcpus), cmdline: c.commandLine,
                                 flags: c.driverDomain ? StartInfo.driverDomainFlag : 0,
                                 engageTimeoutMs: UInt32(options.engageTimeoutMs), machineFrames: machine.totalFrames,
                                 storePort: dom.store?.port ?? 0)
            if let ev = dom.evtchn, let selfPage = try? pairPage(0, dom.domid), let mem = dom.memory, let store = dom.store {
                replyFDs = [ev.doorbell.fd, selfPage.fd, mem.ramFD, mem.p2mReadOnlyFD, machine.m2pReadOnlyFD, store.page.fd, store.kick]
            }
            return HypercallReply(seq: seq, rc: 0, payload: info.encode())
        case .engaged:
            guard dom.phase == .booting, dom.bootstrapped, !inMulticall else { return .error(seq, .EPERM) }
            return engage(dom, seq: seq)
        default:
            break
        }
        // Everything else needs a domain that has engaged its sandbox.
        guard dom.phase == .running else { return .error(seq, .EPERM) }
        switch op {
        case .xenVersion:
            switch XenVersionCmd(rawValue: r.args[0]) {
            case .version: return HypercallReply(seq: seq, rc: Int64(ProcvisorVersion.major << 16 | ProcvisorVersion.minor))
            case .extraversion: return HypercallReply(seq: seq, rc: 0, payload: Array(ProcvisorVersion.extra.utf8))
            case .capabilities: return HypercallReply(seq: seq, rc: 0, payload: Array(ProcvisorVersion.capabilities.utf8))
            case .pagesize: return HypercallReply(seq: seq, rc: 4096)
            case nil: return .error(seq, .ENOSYS)
            }
        case .consoleIO:
            guard ConsoleIOCmd(rawValue: r.args[0]) == .write else { return .error(seq, .ENOSYS) }
            guard r.args[1] == UInt64(r.payload.count) else { return .error(seq, .EINVAL) }
            consoleReadable(dom)  // what the guest printed before this call comes first
            consoleOutput(dom, r.payload[...])
            return HypercallReply(seq: seq, rc: 0)
        case .vcpuOp:
            switch VCPUOp(rawValue: r.args[0]) {
            case .isUp:
                let vcpu = r.args[1]
                if vcpu < UInt64(dom.config.vcpus) { return HypercallReply(seq: seq, rc: 1) }
                if vcpu < UInt64(dom.config.maxvcpus) { return HypercallReply(seq: seq, rc: 0) }
                return .error(seq, .ENOENT)
            default:
                return .error(seq, .ENOSYS)
            }
        case .schedOp:
            switch SchedOp(rawValue: r.args[0]) {
            case .yield:
                return HypercallReply(seq: seq, rc: 0)
            case .block:
                if inMulticall { return .error(seq, .EINVAL) }
                if dom.requestedShutdown != nil { return HypercallReply(seq: seq, rc: 1) }
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
                return nil
            case .shutdown:
                guard let reason = ShutdownReason(rawValue: UInt32(truncatingIfNeeded: r.args[1])), r.args[1] <= 5 else {
                    return .error(seq, .EINVAL)
                }
                guardedShutdown(dom, reason: reason)
                return HypercallReply(seq: seq, rc: 0)
            case nil:
                return .error(seq, .ENOSYS)
            }
        case .eventChannelOp:
            if inMulticall && r.args[0] == EvtchnOp.bindInterdomain.rawValue { return .error(seq, .EINVAL) }
            let (reply, fds) = eventChannelOp(dom, r)
            replyFDs = fds
            return reply
        case .memoryOp:
            return memoryOp(dom, r)
        case .grantTableOp:
            if inMulticall && [GnttabOp.setupTable.rawValue, GnttabOp.mapGrantRef.rawValue].contains(r.args[0]) { return .error(seq, .EINVAL) }
            return grantTableOp(dom, r)
        case .allocGrantPages:
            if inMulticall { return .error(seq, .EINVAL) }
            return allocGrantPages(dom, r)
        case .deviceFD:
            if inMulticall { return .error(seq, .EINVAL) }
            switch DeviceKind(rawValue: r.args[0]) {
            case .vbd: return vbdFD(dom, r)
            case .uplink: return uplinkFD(dom, r)
            // netback needs no descriptor per vif: its frontends' rings come through grants.
            case .vif, nil: return .error(seq, .EINVAL)
            }
        case .freeGrantPage:
            return freeGrantPage(dom, r)
        case .rebackGrantPages:
            if inMulticall { return .error(seq, .EINVAL) }
            return rebackGrantPages(dom, r)
        case .setTimerOp:
            loop.cancel(dom.virqTimer)
            dom.virqTimer = nil
            let deadline = r.args[0]
            if deadline != 0 {
                let now = MonotonicClock.nanoseconds()
                let ms = deadline > now ? (deadline - now + 999_999) / 1_000_000 : 0
                dom.virqTimer = loop.after(ms: ms) { [weak self, weak dom] in
                    guard let self, let dom, dom.hasProcess else { return }
                    dom.virqTimer = nil
                    self.raiseVirq(dom, .timer)
                }
            }
            return HypercallReply(seq: seq, rc: 0)
        case .multicall:
            if inMulticall { return .error(seq, .EINVAL) }
            let calls: [HypercallRequest]
            do {
                calls = try Multicall.decode(r.payload)
            } catch {
                malformed(dom, seq: seq, "multicall: \(error)")
                return nil
            }
            var results: [HypercallReply] = []
            for c in calls {
                results.append(dispatch(dom, c, inMulticall: true) ?? .error(c.seq, .EINVAL))
                if !dom.hasProcess || dom.phase != .running { break }
            }
            return HypercallReply(seq: seq, rc: 0, payload: Multicall.encodeResults(results))
        default:
            return .error(seq, .ENOSYS)
        }
    }

    /// The runtime says it is up. Nothing the domain may do depends on this: the supervisor
    /// installed the bounding filter before exec, so a domain that claims to be engaged without
    /// narrowing it further is exactly as confined. The check below only confirms, from /proc,
    /// that the bound is in place (a kernel bug or a launcher regression would show here).
    func engage(_ dom: DomainRecord, seq: UInt64) -> HypercallReply? {
        let status: (mode: Int, filters: Int)
        do {
            status = try ProcFS.seccomp(of: dom.pid)
        } catch {
            crash(dom, "cannot verify the domain's seccomp bound: \(error)")
            return nil
        }
        guard status.mode == 2, status.filters >= 1 else {
            dom.crashReason = "seccomp bound missing (Seccomp: \(status.mode), filters: \(status.filters))"
            kill(dom)
            return nil
        }
        loop.cancel(dom.engageTimer)
        dom.engageTimer = nil
        dom.phase = .running
        if dom.startPaused {
            // Stop it before it reads the reply, so no guest code runs until `xl unpause`.
            try? Signals.send(SIGSTOP, to: dom.pid)
            dom.paused = true
        }
        log("\(dom.label): sandbox engaged, \(dom.startPaused ? "paused" : "running")")
        if let w = dom.createWaiter {
            w.send(.created(domid: dom.domid))
            dom.createWaiter = nil
        }
        return HypercallReply(seq: seq, rc: 0)
    }
}

import LinuxHost
import ProcvisorABI
import Toolstack

extension Supervisor {
    /// The domain asked to stop (SCHEDOP_shutdown): record why, stop the process; the on_* action
    /// runs when it has been reaped.
    func guardedShutdown(_ dom: DomainRecord, reason: ShutdownReason) {
        guard dom.phase == .running || dom.phase == .booting else { return }
        dom.shutdownReason = reason
        dom.phase = .shutdown
        log("\(dom.label): shutdown, reason \(reason.name)")
        logger.info("domain shutdown", metadata: ["domid": "\(dom.domid)", "reason": "\(reason.name)"])
        kill(dom)
    }

    /// Crash a domain for something it did; on_crash applies once it is reaped.
    func crash(_ dom: DomainRecord, _ why: String) {
        guard dom.hasProcess, dom.phase == .running || dom.phase == .booting else { return }
        if dom.crashReason == nil { dom.crashReason = why }
        log("\(dom.label): crashed: \(why)")
        logger.error("domain crashed", metadata: ["domid": "\(dom.domid)", "name": "\(dom.name)", "reason": "\(why)"])
        if dom.phase == .running { dom.shutdownReason = .crash; dom.phase = .shutdown }
        kill(dom)
    }

    /// How long a guest has to acknowledge `control/shutdown` before the request is repeated on
    /// its event socket (the counterpart of xl's fallback for guests without PV control).
    static let shutdownAckTimeoutMs: UInt64 = 2000

    /// `xl shutdown` / `xl reboot`: write `control/shutdown` as libxl does (the guest clears it and
    /// acts by SCHEDOP_shutdown), repeat it on the event socket if it is not acknowledged in time,
    /// and wake blockers.
    func requestShutdown(_ dom: DomainRecord, reason: ShutdownReason) {
        dom.requestedShutdown = reason
        guard !dom.released else { return }
        let path = "/local/domain/\(dom.domid)/control/shutdown"
        store { e in try e.write(path, Array(reason.name.utf8)) }
        armShutdownAck(dom)
        let blocks = dom.pendingBlocks
        dom.pendingBlocks.removeAll()
        for b in blocks {
            loop.cancel(b.timer)
            reply_(dom, HypercallReply(seq: b.seq, rc: 1))
        }
    }

    /// Repeats `control/shutdown` on the event socket if it is still unacknowledged in time.
    func armShutdownAck(_ dom: DomainRecord) {
        let path = "/local/domain/\(dom.domid)/control/shutdown"
        loop.cancel(dom.shutdownAckTimer)
        dom.shutdownAckTimer = loop.after(ms: Self.shutdownAckTimeoutMs) { [weak self, weak dom] in
            guard let self, let dom, dom.hasProcess, !dom.released else { return }
            dom.shutdownAckTimer = nil
            let pending = (try? self.xenstore.engine.read(path)).map { !$0.isEmpty } ?? false
            guard pending else { return }
            self.log("\(dom.label): did not acknowledge control/shutdown in \(Self.shutdownAckTimeoutMs) ms; sending the request on its event channel")
            guard let reason = dom.requestedShutdown else { return }
            _ = try? UnixSocket.send(dom.eventFD, DomainEvent.shutdownRequest(reason).encode(), nonBlocking: true)
        }
    }

    /// SIGCHLD: a domain process is gone. Decide what it means and apply on_poweroff/on_reboot/on_crash.
    func processExited(pid: Int32, status: ProcessStatus) {
        if standbyExited(pid: pid, status: status) { return }
        guard let dom = domains.reaped(pid) else { return }
        let domid = dom.domid
        // What the domain wrote before dying still counts: its console and a SIGSYS report.
        consoles.readable(dom)
        drainHypercalls(dom)
        if let request = dom.process.suspend {
            dom.process.suspend = nil
            loop.cancel(request.timer)
            if let waiter = request.waiter, !dom.destroyRequested {
                waiter.send(.error("domain \(dom.domid) (\(dom.name)) \(dom.crashReason.map { "crashed during suspend: \($0)" } ?? "died during suspend")"))
            }
        }
        dom.finalCPUTimeNs = ProcFS.cpuTimeNs(of: pid)
        stopDirtyLog(dom)
        dom.pid = 0
        loop.cancel(dom.engageTimer)
        loop.cancel(dom.virqTimer)
        loop.cancel(dom.shutdownAckTimer)
        releaseResources(dom)
        eventChannels.close(dom.domid)
        if willRestartInPlace(dom, status) {
            detachStore(dom)
        } else {
            releaseStore(dom)
            dropStandby(dom.domid)
        }
        grantService.release(dom.domid)
        // (The host gets the RAM back on a thread of its own: DomainMemory's deinit.)
        dom.finalMemoryKB = machine.domains[dom.domid].map { $0.currentPages * 4 }
        machine.releaseDomain(dom.domid)
        // The pid namespace died with its first process; anything left in the cgroup (a domain
        // run without namespaces) goes now.
        if let p = dom.pidsCgroup {
            p.killAll()
            if !p.remove() { logger.warning("pids cgroup not removed", metadata: ["domid": "\(domid)", "path": "\(p.path)"]) }
            dom.pidsCgroup = nil
        }
        if let c = dom.cpuCgroup {
            if !c.remove() { logger.warning("cpu cgroup not removed", metadata: ["domid": "\(domid)", "path": "\(c.path)"]) }
            dom.cpuCgroup = nil
        }
        let how: String
        switch status {
        case let .exited(code): how = "exited with status \(code)"
        case let .signaled(sig): how = "killed by \(Signals.name(sig))"
        }
        logger.info("domain process ended", metadata: ["domid": "\(domid)", "pid": "\(pid)", "how": "\(how)"])

        if dom.destroyRequested {
            notifyShutdown(dom, dom.shutdownReason ?? .poweroff)
            finishDestroy(dom)
            return
        }
        if dom.phase == .booting {
            var why = dom.crashReason ?? (dom.bootstrapped ? "exited during bootstrap (\(how))" : "\(how) before bootstrap (is it a DomainRuntime program?)")
            if dom.crashReason == nil, case .signaled(Signals.badSystemCall) = status {
                why = "killed by SIGSYS before bootstrap: a system call through another ABI (int 0x80, x32), which its bound never allows"
            }
            log("\(dom.label): failed to start: \(why)")
            dom.createWaiter?.send(.error("domain \(dom.name) failed to start: \(why)"))
            dom.createWaiter = nil
            notifyShutdown(dom, .crash)
            remove(dom)
            return
        }
        var reason: ShutdownReason
        if let r = dom.shutdownReason, dom.phase == .shutdown {
            reason = r
        } else {
            switch status {
            case .exited(0): reason = .poweroff
            case let .signaled(sig) where sig == Signals.badSystemCall:
                reason = .crash
                // The bound names every other refused call itself (the supervisor's listener);
                // only a call through another ABI kills at once.
                if dom.crashReason == nil { dom.crashReason = "forbidden system call (killed by SIGSYS: another ABI, or a call its own filter traps)" }
            default:
                reason = .crash
                if dom.crashReason == nil { dom.crashReason = how }
            }
            if reason == .crash { log("\(dom.label): crashed: \(dom.crashReason ?? how)") } else { log("\(dom.label): \(how)") }
        }
        if reason == .crash, dom.crashReason == nil { dom.crashReason = how }
        dom.shutdownReason = reason
        dom.phase = .shutdown
        notifyShutdown(dom, reason)
        if dom.noRestart || stopping {
            remove(dom)
            return
        }
        let action: ShutdownAction
        switch reason {
        case .poweroff, .suspend, .softReset: action = dom.config.onPoweroff
        case .reboot: action = dom.config.onReboot
        case .crash, .watchdog: action = dom.config.onCrash
        }
        apply(action, to: dom, reason: reason)
    }

    func apply(_ action: ShutdownAction, to dom: DomainRecord, reason: ShutdownReason) {
        logger.info("applying on_\(reason == .crash ? "crash" : reason == .reboot ? "reboot" : "poweroff")",
                    metadata: ["domid": "\(dom.domid)", "action": "\(action.rawValue)"])
        switch action {
        case .destroy:
            log("\(dom.label): \(reason.name): destroying the domain")
            remove(dom)
        case .preserve:
            // As xl: the domain stays as it is, under its name, until `xl destroy`.
            log("\(dom.label): \(reason.name): preserving the domain")
            dom.phase = .shutdown
        case .restart where dom.process.storeKept:
            restartInPlace(dom)
        case .restart, .renameRestart:
            let lived = MonotonicClock.nanoseconds() - dom.startMonotonic
            let quick = lived < 1_000_000_000 ? dom.quickRestarts + 1 : 0
            if quick > 5 {
                log("\(dom.label): restarting too fast (\(quick) restarts under a second each); destroying instead")
                remove(dom)
                return
            }
            let uuid = dom.uuid
            let config = configForRestart(dom)
            if action == .renameRestart {
                guard preserveName(dom) else {
                    // As xl when libxl_domain_preserve fails: the old domain stays as it is, and
                    // no new one is started under the name it still holds.
                    log("\(dom.label): \(reason.name): not restarted: it keeps its name, so a new domain cannot take it")
                    return
                }
            } else {
                remove(dom)
            }
            do {
                let new = try createDomain(config, paused: false, waiter: nil, uuid: uuid, quickRestarts: quick)
                log("\(dom.label): \(reason.name): restarted as dom\(new.domid)")
            } catch {
                log("\(dom.label): \(reason.name): restart failed: \(error)")
                logger.error("restart failed", metadata: ["domid": "\(dom.domid)", "error": "\(error)"])
            }
        }
    }

    /// Whether the domain whose process just ended is a driver domain that crashed and will be
    /// restarted in place (decided before its XenStore connection goes, which keeps its nodes).
    func willRestartInPlace(_ dom: DomainRecord, _ status: ProcessStatus) -> Bool {
        guard dom.config.driverDomain, dom.config.onCrash == .restart, !dom.destroyRequested, !dom.noRestart, !stopping,
              dom.phase != .booting else { return false }
        // The reason processExited will find: what it asked for, else a clean exit is a poweroff.
        let reason: ShutdownReason
        if let r = dom.shutdownReason, dom.phase == .shutdown {
            reason = r
        } else if case .exited(0) = status {
            reason = .poweroff
        } else {
            reason = .crash
        }
        return (reason == .crash || reason == .watchdog) && resumesInPlace(dom)
    }

    /// Whether a crashed driver domain's devices can be taken over by a new incarnation: every
    /// device it serves that is connected has an in-flight log (a backend that keeps one resumes
    /// its devices; one that does not would take the frontends' rings up in an unknown state).
    /// A device still in its handshake has nothing in flight: the new incarnation connects it
    /// afresh. Otherwise it is restarted as any domain is, and its devices go with the old one.
    func resumesInPlace(_ dom: DomainRecord) -> Bool {
        devices.served(by: dom.domid).allSatisfy { dev in
            !dev.inflightLogs.isEmpty || (try? xenstore.engine.read(dev.backendPath + "/state")) != Array("4".utf8)
        }
    }

    /// A driver domain crashed: a new process takes its place under the same domid, name and
    /// uuid, and the devices it serves stay as they are (their XenStore nodes, the frontends'
    /// rings, grants and event channels, its in-flight logs), so the new backend picks them up
    /// where the old one left off and no frontend has to do anything. At most
    /// `driverRestartLimit.count` restarts in `seconds`: past that it stays down and its devices
    /// are closed (their frontends fail what they had outstanding).
    func restartInPlace(_ dom: DomainRecord) {
        let (limit, seconds) = options.driverRestartLimit
        let now = MonotonicClock.nanoseconds()
        let window = seconds * 1_000_000_000
        var history = (driverRestarts[dom.uuid] ?? []).filter { now &- $0 < window }
        let served = devices.served(by: dom.domid)
        if history.count >= limit {
            dropStandby(dom.domid)
            let why = "crashed \(history.count + 1) times in \(seconds) s (the limit is \(limit) restarts): left down"
            log("\(dom.label): \(why); its \(served.count) device\(served.count == 1 ? "" : "s") fail: \(served.map(\.what).joined(separator: ", "))")
            driverRestarts[dom.uuid] = nil
            devices.backendGone(served, why: "backend \(dom.name) (dom\(dom.domid)) \(why)")
            remove(dom)
            return
        }
        history.append(now)
        driverRestarts[dom.uuid] = history
        let domid = dom.domid, uuid = dom.uuid
        let config = configForRestart(dom)
        // Out of the table, but not out of the store: its tree holds the backend nodes.
        domains.remove(dom)
        devices.detachAll(frontend: domid)
        for problem in fenceDiskWrites(served) { log("\(dom.label): cannot wait for its writes in flight on \(problem)") }
        // The standby, when there is one, can take over only now: the fence above is what keeps
        // the dead incarnation's writes from landing after the new one's.
        let standby = takeStandby(domid, uuid: uuid, config: config)
        do {
            let new = try createDomain(config, paused: false, waiter: nil, uuid: uuid, reuse: domid, standby: standby)
            log("\(dom.label): crashed (\(dom.crashReason ?? "")): restarted in place (restart \(history.count) of \(limit) in \(seconds) s), "
                + "\(served.count) device\(served.count == 1 ? "" : "s") kept, pid \(new.pid)\(standby != nil ? ", its standby" : "")")
        } catch {
            // A standby refused before it became the domain's is of no more use.
            if let standby, domains[domid]?.pid != standby.pid { discard(standby, reaped: false) }
            log("\(dom.label): crashed; restart in place failed: \(error); its devices fail")
            logger.error("driver domain restart failed", metadata: ["domid": "\(domid)", "error": "\(error)"])
            devices.backendGone(served, why: "backend \(dom.name) (dom\(domid)) could not be restarted: \(error)")
            releaseKeptStore(dom)
            releaseTaps(of: domid)
            removeDomainTree(dom)
        }
    }

    /// Renames the dead domain as xl's rename-restart does before it starts a new one under the
    /// name: NAME-YYYYMMDDTHHMMZ, new uuid.
    /// False when another domain has that name already (the same domain preserved twice in one
    /// minute): as libxl_domain_preserve refuses then, it keeps its name and uuid, and two
    /// domains never share a name.
    @discardableResult
    func preserveName(_ dom: DomainRecord) -> Bool {
        dom.phase = .shutdown
        let stamp = WallClock.format(WallClock.now().seconds, "-%Y%m%dT%H%MZ", utc: true)
        if let other = domains.named(dom.name + stamp), other !== dom {
            log("\(dom.label): cannot rename it \(dom.name + stamp): dom\(other.domid) has that name")
            return false
        }
        let oldUUID = dom.uuid
        dom.name += stamp
        dom.uuid = Self.makeUUID()
        // As libxl_domain_preserve: the new name and a new /vm/<uuid> in the store.
        let d = dom.domid, vm = "/vm/\(dom.uuid)", ro = Self.readOnly(for: d.rawValue)
        store { e in
            var out = (try? e.rm("/vm/\(oldUUID)")) ?? []
            out += try e.mkdir(vm, perms: ro)
            out += try e.write(vm + "/uuid", Array(dom.uuid.utf8))
            out += try e.write(vm + "/name", Array(dom.name.utf8))
            out += try e.write("/local/domain/\(d)/vm", Array(vm.utf8))
            out += try e.write("/local/domain/\(d)/name", Array(dom.name.utf8))
            return out
        }
        return true
    }

    func notifyShutdown(_ dom: DomainRecord, _ reason: ShutdownReason) {
        domains.recordShutdown(dom.domid, reason)
        for w in dom.shutdownWaiters { w.send(.shutdownDone(domid: dom.domid.rawValue, reason: reason)) }
        dom.shutdownWaiters.removeAll()
    }

    func drainHypercalls(_ dom: DomainRecord) {
        guard !dom.released else { return }
        while let m = try? UnixSocket.receive(dom.hypercallFD, maxSize: HypercallRequest.maxMessageSize + 1, nonBlocking: true) {
            m.fds.forEach { $0.close() }
            guard let r = try? HypercallRequest.decode(m.bytes) else { continue }
            if r.op == HypercallOp.seccompViolation.rawValue { _ = dispatch(dom, r) }
            // It asked for its start-info before dying: it died during bootstrap, not before.
            if r.op == HypercallOp.bootstrap.rawValue { dom.bootstrapped = true }
        }
    }

    /// Closes the process-side resources of a domain (descriptors, console clients, timers).
    func releaseResources(_ dom: DomainRecord) {
        guard !dom.released else { return }
        dom.released = true
        for (fd, token) in dom.watchTokens { loop.unwatch(fd, token: token) }
        dom.watchTokens.removeAll()
        dropChannelEvents(dom)
        for fd in [dom.hypercallFD, dom.eventFD, dom.consoleOutFD, dom.consoleInFD] { fd.close() }
        dom.boundListener?.close()
        dom.boundListener = nil
        for b in dom.pendingBlocks { loop.cancel(b.timer) }
        dom.pendingBlocks.removeAll()
        consoles.close(dom)
    }

    /// Drops a domain from the table (its process is already gone).
    func remove(_ dom: DomainRecord) {
        guard domains[dom.domid] === dom else { return }
        dropStandby(dom.domid)
        releaseKeptStore(dom)
        releaseTaps(of: dom.domid)
        domains.remove(dom)
        if pendingRestores[dom.domid]?.record === dom || pendingRestores[dom.domid]?.record == nil { pendingRestores[dom.domid] = nil }
        devices.detachAll(frontend: dom.domid)
        removeDomainTree(dom)
        dom.createWaiter?.send(.error("domain \(dom.name) went away before it started"))
        dom.createWaiter = nil
        for w in dom.destroyWaiters { w.send(.ok) }
        dom.destroyWaiters.removeAll()
    }

    func finishDestroy(_ dom: DomainRecord) {
        log("\(dom.label): destroyed")
        dom.createWaiter?.send(.error("domain \(dom.name) was destroyed while starting"))
        dom.createWaiter = nil
        remove(dom)
    }

    /// `xl destroy`: immediate, no on_* action. Replies when the process has been reaped.
    func destroy(_ dom: DomainRecord, waiter: ControlConnection) {
        if !dom.hasProcess {
            notifyShutdown(dom, dom.shutdownReason ?? .poweroff)
            log("\(dom.label): destroyed")
            remove(dom)
            waiter.send(.ok)
            return
        }
        dom.destroyRequested = true
        if let request = dom.process.suspend {
            loop.cancel(request.timer)
            dom.process.suspend = nil
        }
        dom.phase = .dying
        dom.destroyWaiters.append(waiter)
        kill(dom)
    }

    func pause(_ dom: DomainRecord) throws {
        guard dom.hasProcess, dom.phase == .running else { throw CreateError("domain \(dom.domid) is not running") }
        if dom.paused { return }
        try Signals.send(Signals.stop, to: dom.pid)
        dom.paused = true
        log("\(dom.label): paused")
    }

    func unpause(_ dom: DomainRecord) throws {
        guard dom.hasProcess, dom.phase == .running else { throw CreateError("domain \(dom.domid) is not running") }
        if !dom.paused { return }
        try Signals.send(Signals.continue, to: dom.pid)
        dom.paused = false
        log("\(dom.label): unpaused")
        logger.info("domain unpaused", metadata: ["domid": "\(dom.domid)"])
    }
}

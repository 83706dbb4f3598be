import LinuxHost
import ProcvisorABI
import Toolstack

extension Supervisor {
    /// `start()` for a binary that replaces a running supervisor: everything comes from `image`
    /// (the descriptors it names are open in this process, the domains are its children), and
    /// nothing is written to XenStore or to any domain: they see only the pause.
    func resume(_ image: LiveUpdateImage) throws {
        guard image.pid == Process.pid else {
            throw LiveUpdateError.badState("the state belongs to pid \(image.pid), this is pid \(Process.pid)")
        }
        // The old binary cleared close-on-exec on these for the exec; first thing, they are the
        // supervisor's own again (no domain, no later exec may get one).
        for raw in image.descriptors { try? FileDescriptor(rawValue: raw).setCloseOnExec(true) }
        lockFD = FileDescriptor(rawValue: image.lockFD)
        raiseDescriptorLimit()
        try takeSignals()
        jail = image.jail
        cgroupsUsable = image.cgroupsUsable
        dmesg.restore(image.dmesg)
        driverRestarts = image.driverRestarts
        for t in image.keptTaps { keptTaps[t.bridge] = (DomID(t.backend), FileDescriptor(rawValue: t.fd)) }
        domains.roverValue = image.domidRover
        domains.restoreShutdowns(image.recentShutdowns.reduce(into: [:]) { r, e in
            if let reason = ShutdownReason(rawValue: e.value) { r[DomID(e.key)] = reason }
        })
        try eventChannels.adopt(image.events)
        try grantService.adopt(image.grants)
        var stores: [UInt16: DomainStore] = [:]
        for d in image.domains {
            let dom = try adoptDomain(d)
            if let s = dom.store { stores[dom.domid.rawValue] = s }
        }
        try xenstore.adopt(image.xenstore, listenFD: image.xenstoreListenFD) { [unowned self] domid in
            guard let s = stores[domid], let dom = domains[DomID(domid)] else { return nil }
            return (s.page.mapping, s.kick, { [weak self, weak dom] in
                guard let self, let dom, dom.hasProcess else { return }
                self.eventChannels.raise(dom.domid, port: s.port, peer: 0)
            })
        }
        for d in image.devices { try adoptDevice(d) }
        consoles.adopt(image.consoleLogs)
        let asked = try control.adopt(listenFD: image.controlListenFD, image.control,
                                      requester: { if case let .control(fd)? = image.requester { return fd } else { return nil } }())
        try adoptStandbys(image.standbys ?? [])
        // Children that ended while no process listened: reaped now (their SIGCHLD may have come
        // before the signalfd existed).
        for (pid, status) in ChildReaper.reap() { processExited(pid: pid, status: status) }
        scheduleReservationCheck()
        // A standby that was about to be started when the old binary handed over.
        for dom in domains.values where dom.hasProcess && dom.phase == .running { scheduleStandby(dom) }
        let pauseMs = Double(MonotonicClock.nanoseconds() &- image.handoverStart) / 1e6
        let pause = String(Int(pauseMs * 10) / 10) + "." + String(Int(pauseMs * 10) % 10)
        log("live update: \(image.binary) took over (pid \(Process.pid), \(domains.count) domains, pause \(pause) ms)")
        logger.notice("live update: took over", metadata: ["binary": "\(image.binary)", "domains": "\(domains.count)", "pause_ms": "\(pause)"])
        switch image.requester {
        case .control?: asked?.send(.liveUpdated(binary: image.binary, pauseMs: pauseMs))
        case let .xenstore(connection, requestID)?: xenstore.answer(connection: connection, requestID: requestID, "OK")
        case nil: break
        }
    }

    /// One domain of the image back in the table, with its descriptors watched and its timers
    /// running again.
    private func adoptDomain(_ d: DomainImage) throws -> DomainRecord {
        func fd(_ raw: Int32) -> FileDescriptor { FileDescriptor(rawValue: d.released ? -1 : raw) }
        let p = DomainProcess(pid: d.pid, hypercallFD: fd(d.hypercallFD), eventFD: fd(d.eventFD),
                              consoleOutFD: fd(d.consoleOutFD), consoleInFD: fd(d.consoleInFD), startMonotonic: d.startMonotonic)
        let dom = DomainRecord(state: d.state, process: p)
        p.released = d.released
        p.storeKept = d.storeKept
        p.boundListener = d.boundListener.map { FileDescriptor(rawValue: $0) }
        if let v = d.pidsCgroup {
            let pids = PidsCgroup(adopting: v.path, version: try LiveUpdateError.cgroupVersion(v.version))
            p.pidsCgroup = pids
            // The cpu cgroup is named as the pids one (`spawnKernel`).
            p.cpuCgroup = CPUCgroup(existing: pids.name)
        }
        if let page = d.storePageFD, let kick = d.storeKickFD, let port = d.storePort {
            p.store = DomainStore(page: try SharedPage(adopting: page), kick: FileDescriptor(rawValue: kick), port: EvtchnPort(port))
        }
        guard domains[dom.domid] == nil else { throw LiveUpdateError.badState("dom\(dom.domid) appears twice") }
        domains.insert(dom)
        if !d.released {
            for raw in d.watched {
                let f = FileDescriptor(rawValue: raw)
                let token: UInt64
                if raw == d.hypercallFD {
                    token = try loop.watch(f) { [unowned self, unowned dom] _ in hypercallReadable(dom) }
                } else if raw == d.consoleOutFD {
                    token = try loop.watch(f) { [unowned self, unowned dom] _ in consoles.readable(dom) }
                } else if raw == d.boundListener, let listener = p.boundListener {
                    token = try loop.watch(listener) { [unowned self, unowned dom] events in
                        if events.contains(.hangup) && !events.contains(.readable) { return unwatchListener(dom) }
                        boundRefused(dom)
                    }
                } else {
                    throw LiveUpdateError.badState("\(dom.label) watches descriptor \(raw), which is none of its own")
                }
                p.watchTokens.append((f, token))
            }
            if let deadline = d.virqDeadline {
                p.virqTimer = loop.at(deadline) { [weak self, weak dom] in
                    guard let self, let dom, dom.hasProcess else { return }
                    dom.virqTimer = nil
                    self.eventChannels.raiseVirq(dom.domid, .timer)
                }
            }
            for (seq, deadline) in zip(d.blockedSeqs, d.blockedDeadlines) {
                let timer = deadline.map { at in
                    loop.at(at) { [weak self, weak dom] in
                        guard let self, let dom else { return }
                        dom.pendingBlocks.removeAll { $0.seq == seq }
                        self.reply_(dom, HypercallReply(seq: seq, rc: 0))
                    }
                }
                p.pendingBlocks.append((seq, timer))
            }
            if d.shutdownAckPending { armShutdownAck(dom) }
            for (bytes, fds) in zip(d.channelEvents, d.channelEventFDs) {
                guard let event = try ChannelEvent.decode(bytes) else {
                    throw LiveUpdateError.badState("\(dom.label) has a queued channel event that does not decode")
                }
                p.pendingChannelEvents.append((event, fds.map { FileDescriptor(rawValue: $0) }))
            }
            if !p.pendingChannelEvents.isEmpty {
                p.channelBacklogSince = d.channelBacklogSince ?? MonotonicClock.nanoseconds()
                flushChannelEvents(dom)
            }
        }
        return dom
    }

    private func adoptDevice(_ d: DeviceImage) throws {
        let dev: SplitDevice
        if let s = d.block {
            dev = VirtualBlockDevice(frontend: DomID(d.frontend), devid: d.devid, backend: DomID(d.backend), settings: s)
        } else if let s = d.network {
            dev = VirtualNetworkDevice(frontend: DomID(d.frontend), devid: d.devid, backend: DomID(d.backend), settings: s)
        } else {
            throw LiveUpdateError.badState("device \(d.kind) \(d.frontend)/\(d.devid) has no settings")
        }
        guard dev.type.kind == d.kind else { throw LiveUpdateError.badState("device \(d.frontend)/\(d.devid) is a \(dev.type.kind), not a \(d.kind)") }
        for l in d.inflight {
            dev.inflightLogs[l.queue] = InflightLogMemory(fd: FileDescriptor(rawValue: l.fd), bytes: l.bytes, incarnations: l.incarnations)
        }
        devices.adopt(dev)
    }
}

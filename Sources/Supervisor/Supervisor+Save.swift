import FoundationEssentials
import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// A restore in progress: the domain exists and its kernel waits in its bootstrap while xl
/// writes the pages into its RAM memfd.
final class PendingRestore {
    let domid: DomID
    let plan: RestorePlan
    /// The domain being restored (gone if it was destroyed meanwhile).
    weak var record: DomainRecord?
    /// The `xl restore` / `xl migrate-receive` connection: the restore ends with it.
    weak var owner: ControlConnection?
    init(domid: DomID, plan: RestorePlan, record: DomainRecord, owner: ControlConnection) {
        self.domid = domid
        self.plan = plan
        self.record = record
        self.owner = owner
    }
}

/// What `createDomain` needs to start a domain for a restore.
struct RestoreInput {
    let domid: DomID
}

extension Supervisor {
    /// The guest-writable parts of a domain's home that a save carries (libxl rewrites the rest:
    /// name, domid, vm, control, device, console, store, cpu, memory's static values).
    static let savedSubtrees = ["data", "attr", "drivers", "feature", "error", "memory/target"]
    /// The most a guest's suspend hook may hand over (it travels in one hypercall).
    static let maxResumeRecord = 32 << 10

    // MARK: suspend

    /// `.suspend` (xl save, xl migrate): libxl's PV suspend, through the guest's suspend event
    /// channel when it published one (`device/suspend/event-channel`), else `control/shutdown`.
    func requestSuspend(_ spec: String, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else { return c.send(unknownDomain(spec)) }
        guard dom.hasProcess, !dom.released, dom.phase == .running else {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is not running"))
        }
        if dom.config.driverDomain {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is a driver domain: its backends hold host devices, it cannot be saved or migrated"))
        }
        if dom.paused {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is paused: unpause it first (a paused guest cannot answer the suspend request)"))
        }
        if let old = dom.process.suspend, old.suspended || old.waiter != nil {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is already being saved or migrated"))
        }
        // As libxl__domain_suspend_init: a node that names no port the toolstack can bind fails
        // the save (the guest keeps running); an empty or missing one means control/shutdown.
        let evtchnPath = "/local/domain/\(dom.domid)/device/suspend/event-channel"
        var evtchn: EvtchnPort?
        if let raw = try? xenstore.engine.read(evtchnPath), !raw.isEmpty {
            let text = String(decoding: raw, as: UTF8.self)
            guard let n = UInt32(text), n > 0, n < UInt32(EventPages.maxPorts) else {
                log("\(dom.label): suspend event channel initialization failed: device/suspend/event-channel is \"\(Self.printable(text))\", not a port")
                return c.send(.error("domain \(dom.domid) (\(dom.name)): suspend event channel initialization failed: "
                                     + "device/suspend/event-channel is \"\(Self.printable(text))\", not a port; it keeps running"))
            }
            if let why = eventChannels.bindDom0(dom.domid, port: EvtchnPort(n), storePort: dom.store?.port) {
                log("\(dom.label): suspend event channel initialization failed: \(why)")
                return c.send(.error("domain \(dom.domid) (\(dom.name)): suspend event channel initialization failed: \(why); it keeps running"))
            }
            evtchn = EvtchnPort(n)
        }
        // A request abandoned by a saver that went away (and not yet acted on): this one takes
        // over, only now that it is sure to be made. The old one is taken back first, so the
        // guest does not get two (the second, after a checkpoint, would be a suspend nobody
        // asked for: a shutdown).
        if let old = dom.process.suspend {
            loop.cancel(old.timer)
            if let port = old.eventChannel {
                _ = eventChannels.withdraw(dom.domid, port: port)
            } else if (try? xenstore.engine.read(controlShutdownPath(dom))) == Array("suspend".utf8) {
                store { e in try e.write(self.controlShutdownPath(dom), []) }
            }
        }
        let request = SuspendRequest(waiter: c)
        request.eventChannel = evtchn
        dom.process.suspend = request
        if let port = evtchn {
            log("\(dom.label): suspend requested through event channel \(port)")
            eventChannels.raise(dom.domid, port: port, peer: 0)
            // In order after the binding's `portBound`, and kept for the domain when its event
            // socket is full, as every channel event.
            pushChannelEvent(dom, .upcall(port: port))
        } else {
            log("\(dom.label): suspend requested through control/shutdown")
            store { e in try e.write(self.controlShutdownPath(dom), Array("suspend".utf8)) }
        }
        let ms = options.suspendTimeoutMs
        request.timer = loop.after(ms: ms) { [weak self, weak dom, weak request] in
            guard let self, let dom, let request, dom.process.suspend === request, !request.suspended else { return }
            request.timer = nil
            dom.process.suspend = nil
            let path = self.controlShutdownPath(dom)
            let why: String
            if let port = request.eventChannel {
                // The signal not taken is the request not acknowledged: withdrawn, as libxl
                // empties control/shutdown.
                why = self.eventChannels.withdraw(dom.domid, port: port)
                    ? "guest didn't acknowledge suspend, cancelling request" : "guest did not suspend, timed out"
            } else if (try? self.xenstore.engine.read(path)) == Array("suspend".utf8) {
                self.store { e in try e.write(path, []) }
                why = "guest didn't acknowledge suspend, cancelling request"
            } else {
                why = "guest did not suspend, timed out"
            }
            self.log("\(dom.label): \(why) (\(ms) ms)")
            request.waiter?.send(.error("domain \(dom.domid) (\(dom.name)): \(why) (\(ms) ms); it keeps running"))
        }
    }

    /// A guest's value in a message: at most 32 characters, anything but printable ASCII as `?`.
    static func printable(_ s: String) -> String {
        let shown = String(s.unicodeScalars.prefix(32).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7f ? Character($0) : "?" })
        return s.unicodeScalars.count > 32 ? shown + "…" : shown
    }

    func controlShutdownPath(_ dom: DomainRecord) -> String { "/local/domain/\(dom.domid)/control/shutdown" }

    /// SCHEDOP_shutdown(SHUTDOWN_suspend). Asked for by a save: the domain is stopped and the
    /// saver gets what it needs; the call is answered when the domain resumes. Not asked for:
    /// a shutdown with reason suspend, as before. Asked for by a saver that went away: the
    /// suspend is cancelled at once (rc 1).
    func guestSuspend(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let request = dom.process.suspend else {
            guardedShutdown(dom, reason: .suspend)
            return .ok()
        }
        if request.suspended { return .error(.EBUSY) }
        loop.cancel(request.timer)
        request.timer = nil
        guard let waiter = request.waiter else {
            dom.process.suspend = nil
            log("\(dom.label): suspended after its saver went away; resumed")
            return .ok(1)
        }
        guard r.payload.count <= Self.maxResumeRecord else {
            return .malformed("SCHEDOP_shutdown(suspend): a resume record of \(r.payload.count) bytes (at most \(Self.maxResumeRecord))")
        }
        guard let memory = machine.domains[dom.domid] else { return .error(.ESRCH) }
        let ramFD: FileDescriptor
        do {
            ramFD = try FileDescriptor.open("/proc/self/fd/\(memory.ramFD.rawValue)", .readOnly)
        } catch {
            dom.process.suspend = nil
            waiter.send(.error("domain \(dom.domid) (\(dom.name)): cannot reopen its RAM read-only: \(error); it keeps running"))
            return .ok(1)
        }
        defer { ramFD.close() }
        request.seq = r.seq
        request.record = r.payload
        stopAndWait(dom)
        let saved = SuspendedDomain(
            info: SavedDomainInfo(name: dom.name, uuid: dom.uuid, domid: dom.domid.rawValue),
            config: dom.config,
            memory: SavedMemory(spanPages: memory.spanPages, maxPages: memory.maxPages, populatedPages: memory.currentPages),
            populated: memory.populatedRuns(), nodes: savedNodes(dom), console: Data(dom.console.contents), resumeRecord: Data(r.payload))
        log("\(dom.label): suspended (\(memory.currentPages) pages)")
        logger.info("domain suspended", metadata: ["domid": "\(dom.domid)", "pages": "\(memory.currentPages)"])
        waiter.send(.suspended(saved), fds: [ramFD])
        return .deferred
    }

    /// SIGSTOP, then wait (briefly) until every thread has stopped, so nothing writes the RAM
    /// while it is read.
    func stopAndWait(_ dom: DomainRecord) {
        try? Signals.send(Signals.stop, to: dom.pid)
        let deadline = MonotonicClock.nanoseconds() + 200_000_000
        while MonotonicClock.nanoseconds() < deadline {
            let states = ProcFS.threadStates(of: dom.pid)
            if states.isEmpty || states.allSatisfy({ $0 == "T" || $0 == "t" || $0 == "Z" || $0 == "X" }) { return }
            PosixThread.sleep(microseconds: 50)
        }
        logger.warning("domain threads did not all stop within 200 ms", metadata: ["domid": "\(dom.domid)"])
    }

    /// `.resume`: the suspended domain carries on (SCHEDOP_shutdown returns 1).
    func resumeSuspended(_ spec: String, paused: Bool, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else { return c.send(unknownDomain(spec)) }
        guard dom.suspended else { return c.send(.error("domain \(dom.domid) (\(dom.name)) is not suspended")) }
        resume(dom, paused: paused)
        c.send(.ok)
    }

    func resume(_ dom: DomainRecord, paused: Bool) {
        stopDirtyLog(dom)
        guard let request = dom.process.suspend, let seq = request.seq else { return }
        dom.process.suspend = nil
        reply_(dom, HypercallReply(seq: seq, rc: 1))
        if paused {
            dom.paused = true
        } else {
            try? Signals.send(Signals.continue, to: dom.pid)
        }
        log("\(dom.label): resumed\(paused ? " (paused)" : "")")
    }

    /// A saver's connection closed: a domain it suspended resumes; one that has not suspended
    /// yet will be resumed the moment it does (until the request times out).
    func saverGone(_ c: ControlConnection) {
        for dom in domains.values {
            if let log = dom.process.dirtyLog, log.owner === c || log.owner == nil { stopDirtyLog(dom) }
            guard let request = dom.process.suspend, request.waiter === c || request.waiter == nil else { continue }
            request.waiter = nil
            if request.suspended {
                log("\(dom.label): its saver went away; resuming it")
                resume(dom, paused: false)
            }
        }
        for (domid, pending) in pendingRestores where pending.owner === c || pending.owner == nil {
            abandonRestore(domid, why: "its restorer went away")
        }
    }

    /// The guest-writable nodes of the domain's home, relative to it.
    func savedNodes(_ dom: DomainRecord) -> [SavedNode] {
        let home = "/local/domain/\(dom.domid)"
        var out: [SavedNode] = []
        func walk(_ rel: String) {
            let path = home + "/" + rel
            if let v = try? xenstore.engine.read(path), !v.isEmpty, !v.contains(0) { out.append(SavedNode(path: rel, value: v)) }
            for child in (try? xenstore.engine.directory(path)) ?? [] { walk(rel + "/" + child) }
        }
        for subtree in Self.savedSubtrees { walk(subtree) }
        return out
    }

    /// Writes a restored domain's saved nodes (only under the subtrees a save carries).
    func restoreNodes(_ dom: DomainRecord, _ nodes: [SavedNode]) {
        let home = "/local/domain/\(dom.domid)"
        let rw = Self.readWrite(for: dom.domid.rawValue)
        store { e in
            var out: [(XSConnectionID, XSMessage)] = []
            for n in nodes where Self.savedSubtrees.contains(where: { n.path == $0 || n.path.hasPrefix($0 + "/") }) {
                if n.path == "memory/target" {
                    out += try e.write(home + "/" + n.path, n.value)
                } else {
                    out += try e.write(home + "/" + n.path, n.value, perms: rw)
                }
            }
            return out
        }
    }

    // MARK: restore

    /// `.restoreBegin`: the checks of `xl create`, then the domain is made (its RAM unpopulated)
    /// and its kernel started, so a process exists before the pages are in (the spawn is off a
    /// migration's downtime); its bootstrap waits for `.restoreFinish`.
    func restoreBegin(_ plan: RestorePlan, from c: ControlConnection) {
        let config = plan.config
        let mem = plan.memory
        do {
            if stopping { throw CreateError("the supervisor is shutting down") }
            if let why = Self.validateName(config.name) { throw CreateError(why) }
            if let why = domains.nameTaken(config.name) { throw CreateError(why) }
            guard let kernel = config.kernel, !kernel.isEmpty else { throw CreateError("no kernel given in the saved config") }
            if !FileIO.exists(kernel) { throw CreateError("kernel \(kernel): no such file (it must exist on this host too)") }
            if config.driverDomain { throw CreateError("a driver domain cannot be restored") }
            guard mem.spanPages == UInt64(config.maxmem) * 256 else {
                throw CreateError("the image's pseudo-physical space is \(mem.spanPages / 256) MiB but the config says maxmem=\(config.maxmem)")
            }
            guard mem.populatedPages <= mem.maxPages, mem.maxPages <= mem.spanPages else {
                throw CreateError("the image holds \(mem.populatedPages) pages with a maximum of \(mem.maxPages) in a space of \(mem.spanPages)")
            }
            if mem.populatedPages > machine.freeFrames {
                throw CreateError("not enough free machine memory: the domain holds \(mem.populatedPages / 256) MiB, \(freeMemoryMB) MiB are free")
            }
            guard let domid = domains.allocateDomid() else { throw CreateError("no free domid") }
            let memory: DomainMemory
            do {
                memory = try machine.createDomain(domid, spanPages: mem.spanPages, populatedPages: 0)
            } catch {
                throw CreateError("\(error)")
            }
            memory.maxPages = mem.maxPages
            restoringUUID = plan.info.uuid
            defer { restoringUUID = nil }
            let dom: DomainRecord
            do {
                dom = try createDomain(config, paused: plan.paused, waiter: nil, uuid: plan.info.uuid, restore: RestoreInput(domid: domid))
            } catch {
                machine.releaseDomain(domid)
                throw error
            }
            pendingRestores[domid] = PendingRestore(domid: domid, plan: plan, record: dom, owner: c)
            log("dom\(domid) (\(config.name)): restoring (\(mem.populatedPages) pages)")
            c.send(.restoring(domid: domid.rawValue, memoryCgroup: memory.cgroup?.path), fds: [memory.ramFD])
        } catch {
            log("restore \(config.name): \(error)")
            c.send(.error("\(error)"))
        }
    }

    /// `.restoreFinish`: the pages are in; populate them, give the domain its nodes, console and
    /// record, and answer its bootstrap (it resumes).
    func restoreFinish(_ raw: UInt16, _ contents: RestoreContents, from c: ControlConnection) {
        let domid = DomID(raw)
        guard let pending = pendingRestores[domid], pending.owner === c else {
            return c.send(.error("dom\(raw) is not being restored by this connection"))
        }
        pendingRestores[domid] = nil
        logger.info("restore finishing", metadata: ["domid": "\(domid)"])
        let config = pending.plan.config
        guard let dom = pending.record, domains[domid] === dom, dom.hasProcess, let memory = machine.domains[domid] else {
            return c.send(.error("dom\(raw) (\(config.name)): its kernel exited before its pages were in\(domains[domid]?.crashReason.map { ": \($0)" } ?? "")"))
        }
        func refuse(_ why: String) {
            log("\(dom.label): restore refused: \(why)")
            dom.destroyRequested = true
            dom.phase = .dying
            kill(dom)
            c.send(.error("dom\(raw) (\(config.name)): \(why)"))
        }
        for run in contents.populated {
            guard run.count <= memory.spanPages, run.start <= memory.spanPages - run.count else {
                return refuse("pages \(run.start)..<\(run.start &+ run.count) are outside its \(memory.spanPages)-page space")
            }
            for pfn in run.start..<(run.start + run.count) where memory.mfn(of: PFN(pfn)) == nil {
                if !memory.populate(PFN(pfn), from: machine) {
                    return refuse("not enough machine memory to populate page \(pfn) (\(freeMemoryMB) MiB free)")
                }
            }
        }
        // Pages xl wrote that the image did not list would be held without a reservation.
        if memory.hostBytes > Int(memory.currentPages) * 4096 {
            return refuse("the stream wrote pages it did not list as populated")
        }
        // A copy restored beside its running original may not take the original's MACs: only a
        // suspended source (a migration to this same supervisor) lends them.
        for vif in devices.vifs where vif.frontend == domid {
            if let other = devices.vifs.first(where: { $0.frontend != domid && $0.mac == vif.mac && $0.bridge == vif.bridge && $0.backend == vif.backend
                                                       && (domains[$0.frontend].map { $0.hasProcess && !$0.suspended } ?? false) }) {
                return refuse("vif \(vif.devid): MAC address \(vif.mac) is already used on bridge \(vif.bridge) by dom\(other.frontend)'s vif \(other.devid)")
            }
        }
        restoreNodes(dom, contents.nodes)
        dom.console.append(Array(contents.console)[...])
        dom.process.resumeRecord = Array(contents.resumeRecord)
        dom.process.awaitingPages = false
        dom.createWaiter = c
        startEngageTimer(dom)
        if let seq = dom.process.deferredBootstrap {
            dom.process.deferredBootstrap = nil
            if case let .reply(rc, payload, fds, owned) = startInfoReply(dom) {
                reply_(dom, HypercallReply(seq: seq, rc: rc, payload: payload), fds: fds)
                owned.forEach { $0.close() }
            }
        }
    }

    /// The restore will not finish (its xl went away): the half-made domain goes.
    func abandonRestore(_ domid: DomID, why: String) {
        guard let pending = pendingRestores.removeValue(forKey: domid) else { return }
        log("dom\(domid) (\(pending.plan.config.name)): restore abandoned: \(why)")
        guard let dom = pending.record, domains[domid] === dom else { return }
        dom.destroyRequested = true
        dom.phase = .dying
        if dom.hasProcess { kill(dom) } else { remove(dom) }
    }
}

extension DomainMemory {
    /// The populated pfns, in runs.
    func populatedRuns() -> [PFNRun] {
        var out: [PFNRun] = []
        var start: UInt64?
        for pfn in 0..<spanPages {
            let present = mfn(of: PFN(pfn)) != nil
            if present, start == nil { start = pfn }
            if !present, let s = start {
                out.append(PFNRun(start: s, count: pfn - s))
                start = nil
            }
        }
        if let s = start { out.append(PFNRun(start: s, count: spanPages - s)) }
        return out
    }
}

import LinuxHost
import ProcvisorABI
import Toolstack

/// A driver domain's next incarnation, started before it is needed: its kernel runs jailed in
/// cgroups of its own and waits in its bootstrap hypercall, which nobody answers until the
/// running incarnation dies. A restart in place then gives it the domain instead of starting a
/// process, which takes the clone, the jail, the exec and the runtime's start out of the time the
/// frontends wait (docs/driver-domain-restart.md).
final class StandbyIncarnation {
    let domid: DomID
    /// The domain it was started for (a domid can be another domain's later).
    let uuid: String
    /// The kernel it runs (a real path) and that file's identity then: a kernel replaced since
    /// is not the one a restart would start.
    let kernel: String
    let stamp: KernelStamp?
    let process: SpawnedKernel

    init(domid: DomID, uuid: String, kernel: String, stamp: KernelStamp?, process: SpawnedKernel) {
        self.domid = domid
        self.uuid = uuid
        self.kernel = kernel
        self.stamp = stamp
        self.process = process
    }
}

/// Which file a path names, and which version of it.
struct KernelStamp: Codable, Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int
    var modifiedNs: Int

    init?(path: String) {
        guard let st = try? FileStatus(path: path) else { return nil }
        device = st.device
        inode = st.inode
        size = st.size
        modified = st.modificationSeconds
        modifiedNs = st.modificationNanoseconds
    }
}

/// The standby incarnations the supervisor keeps, one per driver domain at most.
final class StandbyPool {
    var ready: [DomID: StandbyIncarnation] = [:]
    /// Standbys about to be started (loop timers).
    var timers: [DomID: UInt64] = [:]
    /// Standbys killed because they are no longer wanted, until they are reaped (their cgroups
    /// go then).
    var retired: [Int32: SpawnedKernel] = [:]
}

extension Supervisor {
    /// How long after a driver domain's incarnation engages its standby is started: its own
    /// start and the recovery it may be finishing (mapping rings, reissuing) go first.
    static let standbyDelayMs: UInt64 = 100

    /// A driver domain that a crash restarts in place gets a standby (unless the operator said
    /// `PROCVISOR_DRIVER_STANDBY=0`).
    func wantsStandby(_ dom: DomainRecord) -> Bool {
        options.driverStandby && dom.config.driverDomain && dom.config.onCrash == .restart && !stopping && jail.refusal == nil
    }

    /// Starts `dom`'s standby shortly, if it should have one and has none.
    func scheduleStandby(_ dom: DomainRecord) {
        let domid = dom.domid
        guard wantsStandby(dom), standbys.ready[domid] == nil, standbys.timers[domid] == nil else { return }
        standbys.timers[domid] = loop.after(ms: Self.standbyDelayMs) { [weak self, weak dom] in
            guard let self else { return }
            standbys.timers[domid] = nil
            guard let dom, domains[domid] === dom, dom.hasProcess, dom.phase == .running, wantsStandby(dom) else { return }
            startStandby(dom)
        }
    }

    private func startStandby(_ dom: DomainRecord) {
        guard standbys.ready[dom.domid] == nil, let kernel = dom.config.kernel, let real = DynamicLoader.realPath(kernel) else { return }
        let config = configForRestart(dom)
        let maxPages = machine.domains[dom.domid]?.maxPages ?? UInt64(config.maxmem) * 256
        do {
            // Named by the monotonic clock: no two standbys of this supervisor (pid), across live
            // updates included, can share cgroups, nor one share the running incarnation's.
            let process = try spawnKernel(config, kernel: kernel, realPath: real, domid: dom.domid,
                                          cgroupName: "procvisor-\(Process.pid)-dom\(dom.domid)-standby\(MonotonicClock.nanoseconds())",
                                          memoryLimitBytes: maxPages * 4096 + Self.cgroupSlackBytes)
            standbys.ready[dom.domid] = StandbyIncarnation(domid: dom.domid, uuid: dom.uuid, kernel: real,
                                                           stamp: KernelStamp(path: real), process: process)
            log("\(dom.label): standby incarnation started, pid \(process.pid)")
            logger.info("standby incarnation started", metadata: ["domid": "\(dom.domid)", "pid": "\(process.pid)"])
        } catch {
            log("\(dom.label): cannot start a standby incarnation: \(error); a crash restarts it from scratch")
            logger.warning("standby incarnation failed", metadata: ["domid": "\(dom.domid)", "error": "\(error)"])
        }
    }

    /// The standby of `domid`, taken for a restart in place with `config`: nil when there is
    /// none or it does not fit (started for another domain or another kernel file, or ended).
    func takeStandby(_ domid: DomID, uuid: String, config: DomainConfig) -> SpawnedKernel? {
        loop.cancel(standbys.timers.removeValue(forKey: domid))
        guard let s = standbys.ready.removeValue(forKey: domid) else { return nil }
        switch ChildReaper.poll(s.process.pid) {
        case .running:
            break
        case let .exited(status):
            discard(s.process, reaped: true)
            log("dom\(domid): its standby incarnation (pid \(s.process.pid)) had ended (\(Self.describe(status))); starting a new process")
            return nil
        case .notAChild:
            // Reaped already, in the batch of SIGCHLDs being handled (it died with the domain):
            // its own turn in the batch finds it gone from the pool.
            discard(s.process, reaped: true)
            log("dom\(domid): its standby incarnation (pid \(s.process.pid)) had ended; starting a new process")
            return nil
        }
        guard s.uuid == uuid, let kernel = config.kernel, DynamicLoader.realPath(kernel) == s.kernel,
              let stamp = s.stamp, KernelStamp(path: s.kernel) == stamp else {
            log("dom\(domid): its standby incarnation runs another kernel than \(config.kernel ?? "its config's"); starting a new process")
            discard(s.process, reaped: false)
            return nil
        }
        return s.process
    }

    /// The domain goes, or will be restarted some other way: its standby (and one about to be
    /// started) is not wanted.
    func dropStandby(_ domid: DomID) {
        loop.cancel(standbys.timers.removeValue(forKey: domid))
        if let s = standbys.ready.removeValue(forKey: domid) { discard(s.process, reaped: false) }
    }

    /// SIGKILL (unless `reaped`); its descriptors close now, its cgroups go once it has been
    /// reaped.
    func discard(_ p: SpawnedKernel, reaped: Bool) {
        p.descriptors.forEach { $0.close() }
        if reaped {
            removeCgroups(of: p)
            return
        }
        try? Signals.send(Signals.kill, to: p.pid)
        standbys.retired[p.pid] = p
    }

    private func removeCgroups(of p: SpawnedKernel) {
        p.pidsCgroup?.killAll()
        p.pidsCgroup?.remove()
        p.memoryCgroup?.remove()
        p.cpuCgroup?.remove()
    }

    /// SIGCHLD: true when `pid` was a standby. One that ends before it is needed (a kernel that
    /// does not wait for its bootstrap, a kill from outside) is logged; the domain goes on, and
    /// its next crash is restarted from scratch (then it gets a new standby).
    func standbyExited(pid: Int32, status: ProcessStatus) -> Bool {
        if let p = standbys.retired.removeValue(forKey: pid) {
            removeCgroups(of: p)
            return true
        }
        guard let s = standbys.ready.values.first(where: { $0.process.pid == pid }) else { return false }
        standbys.ready[s.domid] = nil
        discard(s.process, reaped: true)
        let label = domains[s.domid]?.label ?? "dom\(s.domid)"
        log("\(label): its standby incarnation (pid \(pid)) ended (\(Self.describe(status))) before it was needed; a crash restarts the domain from scratch")
        logger.warning("standby incarnation ended", metadata: ["domid": "\(s.domid)", "pid": "\(pid)", "status": "\(Self.describe(status))"])
        return true
    }

    /// Every standby goes (the supervisor stops).
    func dropAllStandbys() {
        for domid in Array(standbys.timers.keys) + Array(standbys.ready.keys) { dropStandby(domid) }
    }

    /// At the very end: the standbys killed are reaped (they die at once) and their cgroups go.
    func reapRetiredStandbys() {
        for (pid, p) in standbys.retired {
            _ = try? ChildReaper.wait(pid)
            removeCgroups(of: p)
        }
        standbys.retired.removeAll()
    }

    static func describe(_ status: ProcessStatus) -> String {
        switch status {
        case let .exited(code): return "exited with status \(code)"
        case let .signaled(sig): return "killed by \(Signals.name(sig))"
        }
    }
}

// MARK: live update

extension Supervisor {
    /// The standbys as a live update carries them (ready ones keep their descriptors).
    func standbyImages(keep: inout [FileDescriptor]) -> [StandbyImage] {
        func cgroups(_ p: SpawnedKernel) -> (CgroupImage?, CgroupImage?) {
            (p.memoryCgroup.map { CgroupImage(path: $0.path, version: $0.version.rawValue) },
             p.pidsCgroup.map { CgroupImage(path: $0.path, version: $0.version.rawValue) })
        }
        var out: [StandbyImage] = []
        for s in standbys.ready.values.sorted(by: { $0.domid < $1.domid }) {
            let p = s.process
            keep += p.descriptors
            let (m, pids) = cgroups(p)
            out.append(StandbyImage(domid: s.domid.rawValue, uuid: s.uuid, kernel: s.kernel, stamp: s.stamp, pid: p.pid, retired: false,
                                    hypercallFD: p.hypercallFD.rawValue, eventFD: p.eventFD.rawValue,
                                    consoleOutFD: p.consoleOutFD.rawValue, consoleInFD: p.consoleInFD.rawValue,
                                    listener: p.listener?.rawValue, memoryCgroup: m, pidsCgroup: pids))
        }
        for p in standbys.retired.values.sorted(by: { $0.pid < $1.pid }) {
            let (m, pids) = cgroups(p)
            out.append(StandbyImage(domid: 0, uuid: "", kernel: "", stamp: nil, pid: p.pid, retired: true,
                                    hypercallFD: -1, eventFD: -1, consoleOutFD: -1, consoleInFD: -1, listener: nil,
                                    memoryCgroup: m, pidsCgroup: pids))
        }
        return out
    }

    /// The standbys of a live update's state, before any child is reaped.
    func adoptStandbys(_ images: [StandbyImage]) throws {
        for i in images {
            let m = try i.memoryCgroup.map { MemoryCgroup(adopting: $0.path, version: try LiveUpdateError.cgroupVersion($0.version)) }
            let pids = try i.pidsCgroup.map { PidsCgroup(adopting: $0.path, version: try LiveUpdateError.cgroupVersion($0.version)) }
            func fd(_ raw: Int32) -> FileDescriptor { FileDescriptor(rawValue: raw) }
            let p = SpawnedKernel(pid: i.pid, hypercallFD: fd(i.hypercallFD), eventFD: fd(i.eventFD), consoleOutFD: fd(i.consoleOutFD),
                                  consoleInFD: fd(i.consoleInFD), listener: i.listener.map(fd), memoryCgroup: m, pidsCgroup: pids,
                                  cpuCgroup: pids.flatMap { CPUCgroup(existing: $0.name) })
            if i.retired {
                standbys.retired[i.pid] = p
            } else {
                guard standbys.ready[DomID(i.domid)] == nil else { throw LiveUpdateError.badState("dom\(i.domid) has two standby incarnations") }
                standbys.ready[DomID(i.domid)] = StandbyIncarnation(domid: DomID(i.domid), uuid: i.uuid, kernel: i.kernel, stamp: i.stamp, process: p)
            }
        }
    }
}

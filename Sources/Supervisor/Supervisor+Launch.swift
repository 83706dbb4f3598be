import LinuxHost
import ProcvisorABI
import Toolstack

/// A domain kernel's process as `Supervisor.spawnKernel` started it: the supervisor's ends of
/// its channels and the cgroups it runs in. It is nobody's incarnation until `createDomain`
/// makes it one.
struct SpawnedKernel {
    let pid: Int32
    let hypercallFD: FileDescriptor
    let eventFD: FileDescriptor
    let consoleOutFD: FileDescriptor
    let consoleInFD: FileDescriptor
    /// The bounding filter's notification listener.
    let listener: FileDescriptor?
    let memoryCgroup: MemoryCgroup?
    let pidsCgroup: PidsCgroup?
    /// Named as the pids cgroup (so a live update finds it by that name).
    var cpuCgroup: CPUCgroup? = nil

    var descriptors: [FileDescriptor] { [hypercallFD, eventFD, consoleOutFD, consoleInFD] + (listener.map { [$0] } ?? []) }
}

/// Failures of `xl create` the user must see, each naming the problem.
struct CreateError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension Supervisor {
    /// Domain names: Toolstack's one rule (`DomainConfig.nameProblem`), for create and rename.
    static func validateName(_ name: String) -> String? { DomainConfig.nameProblem(name) }

    /// Forks the domain's kernel, confined, and waits (in the event loop) for it to engage.
    /// `uuid` is reused on restart; nil generates one.
    /// `restore` starts the kernel of a domain whose RAM a restore filled (its domid and memory
    /// are already reserved): it is told that it resumes and given its record. `standby` is a
    /// process started beforehand for this config (a driver domain's next incarnation), which
    /// becomes the domain's instead of a new one.
    @discardableResult
    func createDomain(_ config: DomainConfig, paused: Bool, waiter: ControlConnection?, uuid: String? = nil,
                      quickRestarts: Int = 0, restore: RestoreInput? = nil, reuse: DomID? = nil,
                      standby: SpawnedKernel? = nil) throws -> DomainRecord {
        if stopping { throw CreateError("the supervisor is shutting down") }
        if let why = Self.validateName(config.name) { throw CreateError(why) }
        if restore == nil, let why = domains.nameTaken(config.name) { throw CreateError(why) }
        guard let kernel = config.kernel, !kernel.isEmpty else {
            throw CreateError("no kernel given: set kernel = \"/path/to/guest\" in the config")
        }
        if !FileIO.exists(kernel) { throw CreateError("kernel \(kernel): no such file") }
        if !FileIO.isExecutable(kernel) { throw CreateError("kernel \(kernel): not an executable file (check its mode)") }
        if config.vcpus < 1 || config.maxvcpus > 512 {
            throw CreateError("vcpus must be between 1 and 512 (got vcpus=\(config.vcpus), maxvcpus=\(config.maxvcpus))")
        }
        // A config from a save file, a migration stream or a control client, not only xl.cfg:
        // the ranges libxl enforces, again.
        if let w = config.cpuWeight, !SchedParams.weightRange.contains(w) {
            throw CreateError("cpu_weight \(w) is out of range: valid values are 1 to 65535")
        }
        if let cap = config.cap, cap < 0 || cap > config.maxvcpus * 100 {
            throw CreateError("cap \(cap) is out of range: valid values are 0 to \(config.maxvcpus * 100) for \(config.maxvcpus) vCPUs")
        }
        if !jail.uses(.cgroups), config.cpuWeight != nil || config.cap != nil {
            throw CreateError("cannot enforce cpu_weight/cap for domain \(config.name): domains run without cgroups here (procvisord --insecure-no-cgroups)")
        }
        let free = freeMemoryMB
        if restore == nil, UInt64(config.memory) > free {
            throw CreateError("memory=\(config.memory) MiB is more than the free machine memory (\(free) MiB of \(options.memoryMB) MiB)")
        }
        if UInt64(config.maxmem) * 256 >= grantPageGFNBase {
            throw CreateError("maxmem=\(config.maxmem) MiB is larger than a domain's pseudo-physical space (8 TiB)")
        }
        let planned = try planDevices(config)
        if let why = jail.refusal { throw CreateError("cannot start domain \(config.name): \(why)") }
        guard let kernelPath = DynamicLoader.realPath(kernel) else { throw CreateError("kernel \(kernel): no such file") }
        guard let domid = restore?.domid ?? reuse ?? domains.allocateDomid() else { throw CreateError("no free domid") }
        let memory: DomainMemory
        if let restored = restore.flatMap({ machine.domains[$0.domid] }) {
            memory = restored
        } else {
            do {
                memory = try machine.createDomain(domid, spanPages: UInt64(config.maxmem) * 256, populatedPages: UInt64(config.memory) * 256)
            } catch {
                throw CreateError("\(error)")
            }
        }
        let spawned: SpawnedKernel
        do {
            spawned = try standby ?? spawnKernel(config, kernel: kernel, realPath: kernelPath, domid: domid,
                                                 cgroupName: "procvisor-\(Process.pid)-dom\(domid)",
                                                 memoryLimitBytes: memory.maxPages * 4096 + Self.cgroupSlackBytes)
        } catch {
            machine.releaseDomain(domid)
            throw error
        }
        if let m = spawned.memoryCgroup {
            // A standby was started for the config of the incarnation before; `xl mem-max` may
            // have moved the limit since.
            if standby != nil { try? m.setLimit(memory.maxPages * 4096 + Self.cgroupSlackBytes) }
            memory.cgroup = m
        }
        if standby != nil, let c = spawned.cpuCgroup {
            // Likewise `xl sched-credit` may have changed the weight or cap.
            try? c.setWeight(xen: config.cpuWeight ?? SchedParams.defaultWeight)
            try? c.setCap(percent: config.cap ?? 0)
        }
        let needsCPUCgroup = standby != nil && spawned.cpuCgroup == nil && (config.cpuWeight != nil || config.cap != nil)
        let pid = spawned.pid
        let (hcParent, conRead) = (spawned.hypercallFD, spawned.consoleOutFD)
        let listener = spawned.listener
        let state = DomainState(domid: domid, name: config.name, uuid: uuid ?? config.uuid ?? Self.makeUUID(), config: config,
                                startPaused: paused, startTime: UInt64(WallClock.now().seconds), quickRestarts: quickRestarts)
        let process = DomainProcess(pid: pid, hypercallFD: hcParent, eventFD: spawned.eventFD, consoleOutFD: conRead,
                                    consoleInFD: spawned.consoleInFD)
        let dom = DomainRecord(state: state, process: process)
        dom.createWaiter = waiter
        if restore != nil { process.awaitingPages = true }
        try? eventChannels.open(domid, maxVCPUs: config.maxvcpus)
        dom.pidsCgroup = spawned.pidsCgroup
        dom.cpuCgroup = spawned.cpuCgroup ?? spawned.pidsCgroup.flatMap { CPUCgroup(existing: $0.name) }
        domains.insert(dom)
        if needsCPUCgroup, dom.cpuCgroup == nil {
            // A standby started before `xl sched-credit` gave the domain its first weight or cap.
            if case let .error(why) = applySched(dom, weight: config.cpuWeight, cap: config.cap) {
                logger.warning("weight and cap not applied", metadata: ["domid": "\(domid)", "error": "\(why)"])
            }
        }
        do {
            try setUpStore(dom)
        } catch {
            kill(dom)
            throw CreateError("cannot connect dom\(domid) to XenStore: \(error)")
        }
        attachDevices(dom, planned)
        // A migration's copy is named NAME--incoming until it takes over (xl's convention): its
        // console goes on in NAME's log.
        var logName = config.name
        if restore != nil, logName.hasSuffix("--incoming") { logName.removeLast("--incoming".count) }
        consoles.open(dom, logPath: options.runDirectory.consoleLog(name: logName))
        do {
            let t1 = try loop.watch(hcParent) { [unowned self, unowned dom] _ in hypercallReadable(dom) }
            let t2 = try loop.watch(conRead) { [unowned self, unowned dom] _ in consoles.readable(dom) }
            dom.watchTokens = [(hcParent, t1), (conRead, t2)]
            if let listener {
                dom.boundListener = listener
                let t3 = try loop.watch(listener) { [unowned self, unowned dom] events in
                    // No task is left under the filter (the domain is dying): the listener hangs
                    // up for good and would wake the loop until the death is reaped.
                    if events.contains(.hangup) && !events.contains(.readable) { return unwatchListener(dom) }
                    boundRefused(dom)
                }
                dom.watchTokens.append((listener, t3))
            }
        } catch {
            kill(dom)
            throw CreateError("cannot watch dom\(domid)'s descriptors: \(error)")
        }
        // A restore's kernel waits for its pages first: its time starts when they are in.
        if restore == nil { startEngageTimer(dom) }
        logger.info("domain created", metadata: ["domid": "\(domid)", "name": "\(config.name)", "pid": "\(pid)", "kernel": "\(kernel)"])
        return dom
    }

    /// Starts `kernel` confined, as domain `domid` (its uid), in cgroups of its own named
    /// `cgroupName`, with the bootstrap descriptors; nothing of the domain is set up for it yet
    /// (it waits in its bootstrap hypercall until someone answers). On failure nothing is left.
    func spawnKernel(_ config: DomainConfig, kernel: String, realPath kernelPath: String, domid: DomID,
                     cgroupName: String, memoryLimitBytes: UInt64) throws -> SpawnedKernel {
        let jailed = jail.uses(.namespaces)
        let root = jailed ? try jailRoots.plan(for: kernelPath, othersMustRead: !jail.userNamespace) : nil
        let tasks = config.driverDomain ? 1024 : config.maxvcpus + 64
        var memoryCgroup: MemoryCgroup?
        var pids: PidsCgroup?
        var cpu: CPUCgroup?
        var cgroupProcs: [FileDescriptor] = []
        defer { cgroupProcs.forEach { $0.close() } }
        func dropCgroups() {
            pids?.remove()
            memoryCgroup?.remove()
            cpu?.remove()
        }
        if jail.uses(.cgroups) {
            do {
                let m = try MemoryCgroup(name: cgroupName, limitBytes: memoryLimitBytes)
                memoryCgroup = m
                let p = try PidsCgroup(name: cgroupName, maxTasks: tasks + 8)
                pids = p
                cgroupProcs.append(try m.joinFile())
                cgroupProcs.append(try p.joinFile())
            } catch {
                dropCgroups()
                throw CreateError("cannot create the cgroups of dom\(domid): \(error) (procvisord --insecure-no-cgroups runs domains without them)")
            }
            // The scheduler's weight and cap, in a cpu cgroup of the domain's own. On v1 only a
            // domain given a weight or a cap gets one (`xl sched-credit` makes it later for the
            // others): a CFS group competes with the host's other tasks as one task would, so a
            // busy multi-threaded driver domain at the default weight would lose the share its
            // threads have on their own. On v2 the domain's directory is its cpu group anyway.
            // A host without a writable cpu controller runs the domain at the default share,
            // unless the config asks for a weight or a cap.
            let wantCPU = config.cpuWeight != nil || config.cap != nil
            if wantCPU || CPUCgroup.current()?.version == .v2 { do {
                let c = try CPUCgroup(name: cgroupName)
                cpu = c
                try c.setWeight(xen: config.cpuWeight ?? SchedParams.defaultWeight)
                try c.setCap(percent: config.cap ?? 0)
                // (On v2 it is the directory the memory and pids cgroups' join file moves into.)
                if c.ownsDirectory { cgroupProcs.append(try c.joinFile()) }
            } catch {
                if config.cpuWeight != nil || config.cap != nil {
                    dropCgroups()
                    throw CreateError("cannot enforce cpu_weight/cap for dom\(domid): \(error)")
                }
                cpu?.remove()
                cpu = nil
                logger.warning("no cpu cgroup: the domain runs at the default share", metadata: ["domid": "\(domid)", "error": "\(error)"])
            } }
        }

        // Out of descriptors (EMFILE) part way: what was made is closed and the cgroups go.
        var made: [FileDescriptor] = []
        func channel(_ make: () throws -> (FileDescriptor, FileDescriptor)) throws -> (FileDescriptor, FileDescriptor) {
            do {
                let ends = try make()
                made += [ends.0, ends.1]
                return ends
            } catch {
                made.forEach { $0.close() }
                dropCgroups()
                throw CreateError("cannot make the channels of dom\(domid): \(error)")
            }
        }
        let (hcParent, hcChild) = try channel { try UnixSocket.pair() }
        let (evParent, evChild) = try channel { try UnixSocket.pair() }
        let (conRead, conWrite) = try channel { try FileDescriptor.pipe() }
        let (inRead, inWrite) = try channel { try FileDescriptor.pipe() }
        let childEnds = [hcChild, evChild, conWrite, inRead]
        defer { childEnds.forEach { $0.close() } }
        let parentEnds = [hcParent, evParent, conRead, inWrite]
        do {
            for fd in parentEnds { try fd.setNonBlocking() }
            let argv = [kernel] + config.commandLine.split(separator: " ").map(String.init)
            var confinement: Spawner.Jail?
            if jailed, let root {
                let id = jail.uidBase + UInt32(domid.rawValue)
                var j = Spawner.Jail(namespaces: jail.namespaces, mountPoint: options.runDirectory.jailMountPoint,
                                     directories: root.directories, files: root.files,
                                     hostname: config.name, uid: id, gid: id)
                j.outerUID = Process.effectiveUserID
                j.outerGID = Process.effectiveGroupID
                j.cgroups = cgroupProcs
                confinement = j
            } else if !cgroupProcs.isEmpty {
                var j = Spawner.Jail(namespaces: 0, mountPoint: nil, directories: [], files: [], hostname: nil, uid: 0, gid: 0)
                j.cgroups = cgroupProcs
                j.dropCapabilities = false
                confinement = j
            }
            let (pid, listener) = try Spawner.spawn(
                path: jailed ? (root?.program ?? kernelPath) : kernel, argv: argv,
                env: ["SWIFT_BACKTRACE=enable=no", "PATH=/usr/bin:/bin"],
                fds: [(inRead, BootstrapFD.consoleIn), (conWrite, BootstrapFD.consoleOut), (conWrite, 2),
                      (hcChild, BootstrapFD.hypercall), (evChild, BootstrapFD.events)],
                limits: Self.limits(for: config, tasks: jailed && !jail.userNamespace ? tasks : nil),
                filter: config.driverDomain ? driverBoundBPF : guestBoundBPF,
                jail: confinement, listener: true)
            return SpawnedKernel(pid: pid, hypercallFD: hcParent, eventFD: evParent, consoleOutFD: conRead, consoleInFD: inWrite,
                                 listener: listener, memoryCgroup: memoryCgroup, pidsCgroup: pids, cpuCgroup: cpu)
        } catch {
            parentEnds.forEach { $0.close() }
            dropCgroups()
            throw CreateError("cannot start kernel \(kernel): \(error)")
        }
    }

    /// The time a new domain has to engage its sandbox.
    func startEngageTimer(_ dom: DomainRecord) {
        let kernel = dom.config.kernel ?? "its kernel"
        loop.cancel(dom.engageTimer)
        dom.engageTimer = loop.after(ms: options.engageTimeoutMs) { [weak self, weak dom] in
            guard let self, let dom, dom.phase == .booting else { return }
            dom.crashReason = "did not engage its sandbox within \(self.options.engageTimeoutMs) ms (is \(kernel) a DomainRuntime program?)"
            self.kill(dom)
        }
    }

    /// Memory cgroup slack above the reservation: the domain process's own heap, stacks and runtime.
    static let cgroupSlackBytes: UInt64 = 64 << 20

    /// A domain's resource limits: no core dumps, no file writes but a driver domain's disk
    /// images, no locked memory but a driver domain's registered I/O buffers, a bounded descriptor
    /// table, and (when the domain has a uid of its own) a bounded number of tasks.
    static func limits(for config: DomainConfig, tasks: Int?) -> [Spawner.Limits] {
        let driver = config.driverDomain
        let unlimited = UInt64.max  // RLIM_INFINITY
        var l: [Spawner.Limits] = [
            .init(ResourceLimits.coreFileSize, 0, 0),
            .init(ResourceLimits.openFiles, driver ? 4096 : 1024, driver ? 4096 : 1024),
            .init(ResourceLimits.fileSize, driver ? unlimited : 0, driver ? unlimited : 0),
            .init(ResourceLimits.lockedMemory, driver ? 512 << 20 : 0, driver ? 512 << 20 : 0),
        ]
        if let tasks { l.append(.init(ResourceLimits.processes, UInt64(tasks), UInt64(tasks))) }
        // Raising a hard limit needs CAP_SYS_RESOURCE, which a supervisor in a container may lack:
        // never ask for more than the supervisor's own hard limit.
        return l.map { limit in
            guard let cur = try? ResourceLimits.limits(of: limit.resource) else { return limit }
            let hard = min(limit.hard, cur.hard)
            return .init(limit.resource, min(limit.soft, hard), hard)
        }
    }

    /// The bound refused a call (one its default action hands here rather than to a SIGSYS the
    /// kernel may never report): name it, as the runtime's reporter would, and crash the domain.
    func boundRefused(_ dom: DomainRecord) {
        guard let listener = dom.boundListener else { return }
        let call: SeccompNotification.Call
        do {
            call = try SeccompNotification.receive(listener)
        } catch let e as SystemError where e.errno == .noSuchFile || e.errno == .interrupted {
            return  // the caller died meanwhile
        } catch {
            // A listener that fails is of no more use; the bound still refuses (ENOSYS) without it.
            logger.warning("seccomp listener failed", metadata: ["domid": "\(dom.domid)", "error": "\(error)"])
            unwatchListener(dom)
            return
        }
        if dom.config.driverDomain, Int(call.number) == Self.ioUringSetupNumber {
            ioRingSetup(dom, call, listener: listener)
            return
        }
        let name = Syscalls.name(Int(call.number)) ?? "#\(call.number)"
        if dom.crashReason == nil { dom.crashReason = "forbidden system call \(name)" }
        log("\(dom.label): forbidden system call \(name)")
        logger.error("forbidden system call", metadata: ["domid": "\(dom.domid)", "name": "\(dom.name)", "syscall": "\(name)",
                                                         "args": "\(call.args.prefix(3).map { "0x" + String($0, radix: 16) })"])
        // As a trap: the call never returns. SIGKILL first, so the thread dies in the kernel
        // rather than running on with the error; the answer only covers a kill that failed.
        kill(dom)
        SeccompNotification.fail(listener, call, .notPermitted)
    }

    static let ioUringSetupNumber = Syscalls.number("io_uring_setup") ?? 425

    func unwatchListener(_ dom: DomainRecord) {
        guard let l = dom.boundListener else { return }
        dom.watchTokens.removeAll { fd, token in
            if fd == l { loop.unwatch(fd, token: token); return true }
            return false
        }
    }

    /// A random (version 4) UUID.
    static func makeUUID() -> String {
        var bytes = SecureRandom.bytes(16)
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let hex = bytes.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-" + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }

    /// SIGKILL the domain's process (reaping and cleanup follow from SIGCHLD).
    /// The domain's process is the first of its pid namespace: when it dies the kernel kills every
    /// other process in it. The cgroup is emptied too, for domains run without namespaces.
    func kill(_ dom: DomainRecord) {
        guard dom.hasProcess else { return }
        try? Signals.send(Signals.kill, to: dom.pid)
        dom.pidsCgroup?.killAll()
    }
}

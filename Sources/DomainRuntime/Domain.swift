import LinuxHost
import ProcvisorABI

/// A running Procvisor domain, seen from inside: its identity, its console, and the hypercalls a
/// guest needs. Obtain it once with `Domain.start()` at the top of `main`.
///
/// ```swift
/// let domain = Domain.start()
/// domain.console.write("hello from dom\(domain.domid)\n")
/// domain.shutdown(.poweroff)
/// ```
public final class Domain {
    /// This domain's id (1 and up; 0 is the supervisor).
    public let domid: UInt16
    /// The name given in xl.cfg (`name=`).
    public let name: String
    /// The domain's UUID.
    public let uuid: String
    /// The guest command line, built as libxl builds it (`cmdline`, or `root=` plus `extra`).
    public let cmdline: String
    /// Memory in KiB as configured (`memory=`).
    public let memoryKB: UInt64
    /// Maximum memory in KiB (`maxmem=`).
    public let maxMemoryKB: UInt64
    /// The start-info the supervisor handed over at boot.
    public let startInfo: StartInfo
    /// The domain's console: what it writes here ends up in `xl console` and the console log.
    public let console: Console

    let hypercalls: HypercallChannel
    let events: DomainEvents
    /// This domain's event channels (bind, send, wait).
    public let eventChannels: EventChannels
    /// Pseudo-physical memory, P2M/M2P translation and reservations (the balloon's tools).
    public let memory: PhysicalMemory
    /// XenStore over this domain's ring (`xs_*` for guests).
    public let store: XenStoreClient
    /// The balloon driver following `memory/target` (`xl mem-set`).
    public let balloon: Balloon
    /// This domain's grant table (grant, end access, map, unmap, copy).
    public let grantTable: GrantTable

    private static var current: Domain?
    private let hooksLock = Lock()
    private var suspendHooks: [() -> Void] = []
    private var resumeHooks: [() -> Void] = []
    private var resumeRecordProvider: (() -> [UInt8])?
    /// The suspend event channel this domain published (0: none).
    @exclusivity(unchecked) private var suspendPort: EventChannels.Port = 0

    init(startInfo: StartInfo, hypercalls: HypercallChannel, eventChannels: EventChannels, memory: PhysicalMemory, store: XenStoreClient) {
        self.memory = memory
        self.store = store
        balloon = Balloon(memory: memory, store: store, bootPages: startInfo.memoryKB / 4)
        self.eventChannels = eventChannels
        grantTable = GrantTable(hypercalls: hypercalls)
        self.startInfo = startInfo
        domid = startInfo.domid.rawValue
        name = startInfo.name
        uuid = startInfo.uuid
        cmdline = startInfo.cmdline
        memoryKB = startInfo.memoryKB
        maxMemoryKB = startInfo.maxMemoryKB
        self.hypercalls = hypercalls
        console = Console(hypercalls: hypercalls)
        events = DomainEvents(fd: FileDescriptor(rawValue: BootstrapFD.events))
    }

    /// Boots the domain: fetches the start-info over the inherited hypercall socket, engages the
    /// guest seccomp allow-list, waits for the supervisor to verify it, and starts the event thread.
    /// Call it first thing in `main`; after it returns the process can no longer open files,
    /// create sockets, fork or exec. Exits the process with a message if it was not started by a
    /// Procvisor supervisor or the sandbox cannot be engaged.
    ///
    /// Whether the domain is a guest or a driver domain (I/O on the disk images and taps the
    /// supervisor hands it) comes from its config (`driver_domain = 1`), through the start-info;
    /// the supervisor bounded the process accordingly before it ran, and this only narrows it.
    public static func start() -> Domain {
        if let current { return current }
        let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
        if (try? UnixSocket.type(of: fd)) != UnixSocket.seqPacket {
            bootFailure("this program is a Procvisor domain kernel: start it with `xl create CONFIG` (no hypercall channel on fd 3)", code: 64)
        }
        // One malloc arena for all threads: glibc shrinks a thread arena's heap only after reading
        // /proc/sys/vm/overcommit_memory, an open the sandbox forbids (it killed guests that freed
        // large buffers on a watch or vCPU thread). The main arena grows and trims with brk.
        Malloc.useSingleArena()
        // Report forbidden system calls before anything else can trigger one.
        do {
            try SeccompViolationReporter.install(hypercallFD: fd, op: HypercallOp.seccompViolation.rawValue)
        } catch {
            bootFailure("cannot install the SIGSYS reporter: \(error)")
        }
        let channel = HypercallChannel(fd: fd)
        let (boot, bootFDs) = channel.callWithFDs(.bootstrap)
        guard boot.rc == 0, let info = try? StartInfo.decode(boot.payload), bootFDs.count == BootstrapReplyFD.allCases.count else {
            bootFailure("bootstrap hypercall failed (rc \(boot.rc))")
        }
        let evtchn: EventChannels
        do {
            evtchn = try EventChannels(domid: info.domid, hypercalls: channel, doorbellFD: bootFDs[BootstrapReplyFD.doorbell.rawValue],
                                       selfPageFD: bootFDs[BootstrapReplyFD.selfPairPage.rawValue])
        } catch {
            bootFailure("cannot map the event pages: \(error)")
        }
        let memory: PhysicalMemory
        do {
            memory = try PhysicalMemory(ramFD: bootFDs[BootstrapReplyFD.ram.rawValue], p2mFD: bootFDs[BootstrapReplyFD.p2m.rawValue],
                                        m2pFD: bootFDs[BootstrapReplyFD.m2p.rawValue], spanPages: info.maxMemoryKB / 4,
                                        bootPages: info.memoryKB / 4, machineFrames: info.machineFrames, hypercalls: channel)
        } catch {
            bootFailure("cannot map the domain's memory: \(error)")
        }
        // Live migration logs the pages this domain writes: its RAM mapping is registered for
        // asynchronous write-protection (docs/migration-dirty-tracking.md). A kernel that refuses
        // only means a migration copies with the domain stopped.
        try? WriteTracking.register(base: memory.base, length: Int(memory.spanPages) * 4096)
        let storePage: SharedMapping
        do {
            let fd = bootFDs[BootstrapReplyFD.storePage.rawValue]
            storePage = try SharedMapping(fd, length: 4096)
            fd.close()
        } catch {
            bootFailure("cannot map the xenstore page: \(error)")
        }
        evtchn.adoptDom0Port(info.storePort, kick: bootFDs[BootstrapReplyFD.dom0Kick.rawValue])
        do {
            try SeccompPolicies.allowList(driverDomain: info.isDriverDomain).compile(threadSync: true, ownPid: UInt32(Process.pid)).load()
        } catch {
            bootFailure("cannot engage the guest seccomp filter: \(error)")
        }
        let engaged = channel.call(.engaged)
        if engaged.rc != 0 {
            bootFailure("the supervisor refused the sandbox engagement (rc \(engaged.rc))")
        }
        let domain = Domain(startInfo: info, hypercalls: channel, eventChannels: evtchn, memory: memory,
                            store: XenStoreClient(page: storePage, kick: { [unowned evtchn] in evtchn.kickDom0() }))
        domain.events.start(domain: domain)
        // Its last hypercall of its own: after this one the runtime makes none the guest did not
        // ask for (a guest that drives the hypercall socket itself owns every reply on it).
        domain.allocateSuspendPort()
        // The runtime's own watches are registered from the watch thread: guest code starts now.
        domain.store.onWatchThread { [unowned domain] in
            domain.publishSuspendEventChannel()
            domain.watchControlShutdown()
            domain.balloon.start()
        }
        current = domain
        return domain
    }

    private static func bootFailure(_ why: String, code: Int32 = 70) -> Never {
        let msg = "procvisor: \(why)\n"
        FileDescriptor.standardError.writeUnchecked(msg)
        Process.exit(code)
    }

    // MARK: hypercalls

    /// `XENVER_version`: the Xen interface version this supervisor implements.
    public func xenVersion() -> (major: Int, minor: Int) {
        let r = hypercalls.call(.xenVersion, [XenVersionCmd.version.rawValue])
        return (Int(r.rc >> 16), Int(r.rc & 0xffff))
    }

    /// `XENVER_extraversion`.
    public func xenExtraVersion() -> String {
        String(decoding: hypercalls.call(.xenVersion, [XenVersionCmd.extraversion.rawValue]).payload, as: UTF8.self)
    }

    /// Number of online vCPUs (asks `VCPUOP_is_up` for each until the supervisor says ENOENT).
    public func vcpuCount() -> Int {
        var online = 0
        for vcpu in 0..<4096 {
            let r = hypercalls.call(.vcpuOp, [VCPUOp.isUp.rawValue, UInt64(vcpu)])
            if r.rc < 0 { break }
            if r.rc == 1 { online += 1 }
        }
        return online
    }

    /// `SCHEDOP_yield`: give up the CPU.
    public func yield() {
        _ = hypercalls.call(.schedOp, [SchedOp.yield.rawValue])
    }

    /// `SCHEDOP_block`: sleep until an event arrives for this domain or `timeoutNs` passes
    /// (nil: no timeout). Returns true when woken by an event.
    @discardableResult
    public func block(timeoutNs: UInt64? = nil) -> Bool {
        let r = hypercalls.call(.schedOp, [SchedOp.block.rawValue, timeoutNs ?? UInt64.max])
        return r.rc == 1
    }

    /// `set_timer_op`: raise VIRQ_TIMER once, `nanoseconds` from now (nil cancels).
    public func setTimer(nanoseconds: UInt64?) {
        let deadline = nanoseconds.map { MonotonicClock.nanoseconds() + max($0, 1) } ?? 0
        _ = hypercalls.call(.setTimerOp, [deadline])
    }

    /// `set_timer_op` as Xen takes it: raise VIRQ_TIMER once at the system time `deadline`
    /// (`MonotonicClock.nanoseconds()`; one passed already fires at once).
    public func setTimer(deadline: UInt64) {
        _ = hypercalls.call(.setTimerOp, [max(deadline, 1)])
    }

    /// `SCHEDOP_shutdown`: stop this domain with `reason`; the supervisor applies the matching
    /// `on_poweroff` / `on_reboot` / `on_crash` action. Never returns.
    public func shutdown(_ reason: ShutdownReason) -> Never {
        Process.flushStandardOutput()
        _ = hypercalls.call(.schedOp, [SchedOp.shutdown.rawValue, UInt64(reason.rawValue)])
        // The supervisor kills the process once it has recorded the shutdown; wait for it.
        Process.waitForever()
    }

    /// A backend's device, opened by the supervisor: the disk image of `frontend`'s vbd `devid`.
    /// Only the backend the toolstack named for that device gets it (EACCES otherwise).
    public func deviceFD(_ kind: DeviceKind, frontend: UInt16, devid: UInt32) throws -> FileDescriptor {
        let (r, fds) = hypercalls.callWithFDs(.deviceFD, [kind.rawValue, UInt64(frontend), UInt64(devid)])
        if r.rc < 0 || fds.count != 1 {
            fds.forEach { $0.close() }
            throw HypercallError(operation: "device_fd \(kind.xenName) \(frontend)/\(devid)", errno: r.rc < 0 ? -r.rc : XenErrno.EIO.rawValue)
        }
        return fds[0]
    }

    /// The in-flight log of queue `queue` of a device this driver domain serves: `bytes` of
    /// memory the supervisor keeps across restarts of this domain (all zeroes the first time),
    /// and how many incarnations of the backend had it before this one (0: new).
    public func inflightLog(_ kind: DeviceKind, frontend: UInt16, devid: UInt32, queue: Int, bytes: Int) throws -> (memory: SharedMapping, incarnations: Int) {
        let (r, fds) = hypercalls.callWithFDs(.inflightLog, [kind.rawValue, UInt64(frontend), UInt64(devid), UInt64(queue), UInt64(bytes)])
        defer { fds.forEach { $0.close() } }
        if r.rc < 0 || fds.count != 1 {
            throw HypercallError(operation: "inflight_log \(kind.xenName) \(frontend)/\(devid) queue \(queue)", errno: r.rc < 0 ? -r.rc : XenErrno.EIO.rawValue)
        }
        let memory = try SharedMapping(fds[0], length: bytes)
        return (memory, Int(r.rc))
    }

    /// Batches several hypercalls into one `__HYPERVISOR_multicall`; returns each call's rc.
    public func multicall(_ calls: [(op: HypercallOp, args: [UInt64])]) -> [Int64] {
        let requests = calls.enumerated().map { HypercallRequest($1.op, seq: UInt64($0), args: $1.args) }
        let r = hypercalls.call(.multicall, [], payload: Multicall.encode(requests))
        guard r.rc >= 0, let results = try? Multicall.decodeResults(r.payload) else { return [r.rc] }
        return results.map(\.rc)
    }

    // MARK: control

    /// Registers what to do when the toolstack asks this domain to shut down (`xl shutdown`,
    /// `xl reboot`, supervisor exit, and `xl save`'s suspend). The handler runs on the runtime's
    /// watch thread (requests through `control/shutdown` or the suspend event channel), or on its
    /// event thread (the supervisor's fallback for a request not acknowledged in time). Without
    /// one, the domain shuts down, or suspends, at once, as a PV kernel does.
    public func onShutdownRequest(_ handler: @escaping (ShutdownReason) -> Void) {
        events.setShutdownHandler(handler)
    }

    /// Follows `control/shutdown` as a PV kernel does: a value the toolstack writes ("poweroff",
    /// "reboot", "suspend", "crash", "halt") is acknowledged by clearing the node, then acted on.
    func watchControlShutdown() {
        do {
            try store.watch("control/shutdown", token: "procvisor:control/shutdown") { [unowned self] _ in
                guard let v = try? store.read("control/shutdown"), !v.isEmpty else { return }
                try? store.write("control/shutdown", "")
                let reason: ShutdownReason
                switch v {
                case "reboot": reason = .reboot
                case "suspend": reason = .suspend
                case "crash": reason = .crash
                default: reason = .poweroff
                }
                events.deliverShutdownRequest(reason, domain: self)
            }
        } catch {
            let msg = "procvisor: cannot watch control/shutdown: \(error)\n"
            FileDescriptor.standardError.writeUnchecked(msg)
        }
    }

    /// libxl's suspend event channel: a port domain 0 may bind, published in
    /// `device/suspend/event-channel` (the toolstack made the node writable for this domain). A
    /// save then signals it instead of writing `control/shutdown`, and the request arrives as an
    /// upcall on the event thread, to the same handler. Without the port (a supervisor that
    /// refuses it, a node that cannot be written) requests come through `control/shutdown`.
    func allocateSuspendPort() {
        guard let port = try? eventChannels.allocUnbound(remote: 0) else { return }
        eventChannels.reserveForUpcalls(port)
        suspendPort = port
    }

    /// Publishes the port (from the watch thread: a XenStore write, no hypercall). A node the
    /// domain cannot write leaves the port unused: requests come through `control/shutdown`.
    func publishSuspendEventChannel() {
        guard suspendPort != 0 else { return }
        try? store.write("device/suspend/event-channel", "\(suspendPort)")
    }

    /// Domain 0 signalled a port the runtime serves: the suspend event channel asks for a
    /// suspend. It is handled on the watch thread, where a `control/shutdown` request is: the
    /// guest's handler and hooks see no difference, and the event thread goes on taking
    /// bindings meanwhile. Taking the pending bit there is the acknowledgement (as clearing
    /// `control/shutdown` is): a request the toolstack gave up on meanwhile cleared the bit,
    /// and nothing happens.
    func upcall(_ port: EventChannels.Port) {
        guard port != 0, port == suspendPort else { return }
        store.onWatchThread { [unowned self] in
            guard eventChannels.takeUpcall(port) else { return }
            events.deliverShutdownRequest(.suspend, domain: self)
        }
    }

    // MARK: suspend and resume

    /// The domain was restored (`xl restore`, `xl migrate`): its pseudo-physical RAM is exactly
    /// what it was when it suspended, at the same pfns, and this process started again from
    /// `main`. Nothing else survives: the Swift heap, threads, devices, grants and event
    /// channels are new (docs/save-restore.md).
    public var isResumed: Bool { startInfo.isResumed }

    /// What `setResumeRecord`'s provider returned when the domain suspended (nil on a fresh
    /// boot; empty when there was no provider).
    public var resumeRecord: [UInt8]? { startInfo.resumeRecord }

    /// Registers work to do before the domain suspends (quiesce a device, flush a buffer into
    /// RAM). Hooks run in the order they were added, on the thread that suspends.
    public func addSuspendHook(_ hook: @escaping () -> Void) {
        hooksLock.lock()
        suspendHooks.append(hook)
        hooksLock.unlock()
    }

    /// Registers work to do when a suspend was cancelled and the domain carries on in this same
    /// process (`xl save -c`, a migration that failed). Hooks run in the order they were added.
    public func addResumeHook(_ hook: @escaping () -> Void) {
        hooksLock.lock()
        resumeHooks.append(hook)
        hooksLock.unlock()
    }

    /// The bytes to hand back to the restored domain as `resumeRecord` (at most 32 KiB),
    /// asked for after the suspend hooks ran.
    public func setResumeRecord(_ provider: @escaping () -> [UInt8]) {
        hooksLock.lock()
        resumeRecordProvider = provider
        hooksLock.unlock()
    }

    /// Suspends the domain as a PV kernel does when the toolstack writes "suspend" to
    /// `control/shutdown` (the runtime calls it itself unless the guest set its own shutdown
    /// handler): runs the suspend hooks, then `SCHEDOP_shutdown(SHUTDOWN_suspend)` with the
    /// resume record. When the save completes the toolstack destroys this process (a restored
    /// domain starts again from `main`, `isResumed` set). Returns true when the suspend was
    /// cancelled and the domain carries on here, after its resume hooks ran; false when the
    /// supervisor refused it (the resume hooks ran too).
    @discardableResult
    public func suspend() -> Bool {
        hooksLock.lock()
        let before = suspendHooks, after = resumeHooks, provider = resumeRecordProvider
        hooksLock.unlock()
        for hook in before { hook() }
        let record = provider?() ?? []
        Process.flushStandardOutput()
        let r = hypercalls.call(.schedOp, [SchedOp.shutdown.rawValue, UInt64(ShutdownReason.suspend.rawValue)], payload: record)
        if r.rc == 0 {
            // Nobody asked for it: a shutdown with reason suspend, which ends this process.
            Process.waitForever()
        }
        for hook in after { hook() }
        return r.rc == 1
    }

    /// The shutdown the toolstack has asked for, if any (for guests that poll).
    public var shutdownRequested: ShutdownReason? { events.requested }

    /// Runs `body` on a new vCPU thread (vCPUs are threads of the domain process).
    public func startVCPU(_ index: Int, _ body: @escaping (Int) -> Void) {
        VCPUThread.start(index: index, body: body)
    }
}

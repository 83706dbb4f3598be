import LinuxHost
import Logging
import ProcvisorABI
import Toolstack

/// The daemon: Xen's hypervisor and dom0 toolstack in one event-driven process.
public final class Supervisor {
    let options: SupervisorOptions
    var logger: Logger
    let loop: EventLoop
    /// Every domain, by domid and by process.
    let domains = DomainTable()
    /// The control socket xl talks to.
    let control: ControlServer
    /// Domains' consoles.
    let consoles: ConsoleService
    var dmesg = HypervisorLog()
    /// XenStore: the dom0 socket and every domain's ring.
    var xenstore: XenStoreServer!
    /// Split devices (vbds, vifs) of every domain.
    let devices: DeviceManager
    var signalFD: FileDescriptor?
    var lockFD: FileDescriptor?
    var stopping = false
    var stopDeadline: UInt64?
    /// The compiled bounding filters, built once: every guest gets the same program, every driver
    /// domain the other.
    let guestBoundBPF: [UInt8]
    let driverBoundBPF: [UInt8]
    /// Which jail layers are in force (probed at start).
    var jail: JailSettings
    /// Read-only roots per kernel binary.
    let jailRoots = JailRoots()
    /// Machine frames and the global M2P.
    let machine: MachineMemory
    /// Grant tables, grantable pages and maptracks of every domain.
    let grantService: GrantService
    /// Event-channel ports, doorbells and pair pages of every domain.
    let eventChannels = EventChannelService()
    /// Whether domain memory cgroups could be created (else reservations are enforced by measurement only).
    var cgroupsUsable = true
    let startTime: UInt64
    /// Restores whose pages are being written (domid and name held, no process yet).
    var pendingRestores: [DomID: PendingRestore] = [:]
    /// While a restore plans its devices: the uuid of the domain it is a copy of, whose MACs
    /// the copy may reuse.
    var restoringUUID: String?
    /// When each driver domain (by uuid) was last restarted in place, within the restart window.
    var driverRestarts: [String: [UInt64]] = [:]
    /// Taps handed to a netback as bridge uplinks, by bridge name: the driver domain that asked
    /// and a descriptor kept here, so the interface (and what the host configured on it) outlives
    /// an incarnation of that driver domain; closed when the domain goes for good.
    var keptTaps: [String: (backend: DomID, fd: FileDescriptor)] = [:]
    /// Driver domains' next incarnations, started before they are needed.
    let standbys = StandbyPool()
    /// A live update whose new binary is being checked (it runs with a copy of the state).
    var liveUpdateAttempt: LiveUpdateAttempt?
    /// The environment the supervisor was started with (a live update's new binary gets it too).
    public var environment: [String: String] = Process.environment()
    /// The binary this supervisor runs (the default new binary of a live update).
    public var binaryPath: String? = Process.executablePath()

    public convenience init(options: SupervisorOptions, logger: Logger) throws {
        try self.init(options: options, logger: logger, image: nil)
    }

    /// With `image`, the machine memory is the one a live update handed over (`resume` takes
    /// over the rest).
    init(options: SupervisorOptions, logger: Logger, image: LiveUpdateImage?) throws {
        self.options = options
        self.logger = logger
        loop = try EventLoop()
        // Refused calls go to the supervisor, which names them in `xl dmesg` and crashes the domain:
        // a kernel without DomainRuntime has no SIGSYS reporter of its own.
        guestBoundBPF = try SeccompPolicies.guestBound.withDefault(.notify).compile().bpf()
        driverBoundBPF = try SeccompPolicies.driverDomainBound.withDefault(.notify).compile().bpf()
        jail = JailSettings(waived: options.insecure, userNamespace: Process.effectiveUserID != 0, uidBase: options.jailUIDBase)
        machine = try image.map { try MachineMemory(adopting: $0.machine) } ?? MachineMemory(totalFrames: options.memoryMB * 256)
        grantService = GrantService(maxFrames: options.maxGrantFrames, logger: logger)
        startTime = image?.startTime ?? UInt64(WallClock.now().seconds)
        xenstore = XenStoreServer(loop: loop, logger: logger)
        devices = DeviceManager(xenstore: xenstore, loop: loop, removeTimeoutMs: options.deviceRemoveTimeoutMs, logger: logger)
        control = ControlServer(loop: loop, logger: logger)
        consoles = ConsoleService(loop: loop, logger: logger)
        consoles.maxLogBytes = options.consoleLogMaxBytes
        // The services know nothing of each other: what one needs of the rest comes through here.
        xenstore.log = { [unowned self] line in log(line) }
        // `-F` and `-t` have nothing to act on: open transactions are carried, and the check of
        // the new binary has its own time limit.
        xenstore.domainExists = { [unowned self] domid in domid == 0 || domains[DomID(domid)] != nil }
        xenstore.onLiveUpdate = { [unowned self] conn, requestID, binary, _, _ in
            beginLiveUpdate(binary: binary, requester: .xenstore(connection: conn, requestID: requestID), connection: nil)
        }
        devices.log = { [unowned self] line in log(line) }
        control.onRequest = { [unowned self] request, c in handle(request, from: c) }
        control.onConsoleInput = { [unowned self] domid, bytes, c in
            if let dom = domains[domid] { consoles.input(dom, bytes) } else { c.close() }
        }
        control.onClose = { [unowned self] c in connectionClosed(c) }
        consoles.raiseVirq = { [unowned self] domid in eventChannels.raiseVirq(domid, .console) }
        devices.domainLabel = { [unowned self] domid in domains[domid]?.label ?? "dom\(domid)" }
        grantService.log = { [unowned self] line in log(line) }
        grantService.isLive = { [unowned self] domid in domains[domid]?.hasProcess == true }
        grantService.pageRoom = { [unowned self] domid, g in grantPageRoom(domid, g) }
        eventChannels.isLive = { [unowned self] domid in domains[domid]?.hasProcess == true }
        eventChannels.notify = { [unowned self] domid, event, fds in
            if let dom = domains[domid] { pushChannelEvent(dom, event, fds: fds) }
        }
        eventChannels.kickDom0 = { [unowned self] domid in
            if let dom = domains[domid] { kickDom0Services(dom) }
        }
    }

    public enum StartError: Error, CustomStringConvertible {
        case alreadyRunning(String)
        public var description: String {
            switch self {
            case let .alreadyRunning(dir): return "a supervisor is already running for \(dir)"
            }
        }
    }

    /// Takes the run directory lock, writes the pid file and listens on the control socket.
    public func start() throws {
        let dir = options.runDirectory
        try FileIO.makeDirectories(dir.path, mode: 0o700)
        try FileIO.makeDirectories(dir.consoleLogDirectory, mode: 0o700)
        let (held, lock) = try Process.lockExclusive(dir.lockFile)
        guard held else { throw StartError.alreadyRunning(dir.path) }
        lockFD = lock
        raiseDescriptorLimit()
        try takeSignals()
        // The XenStore socket first: the control socket is what says the supervisor is up (xl
        // and the tests wait for it), and a client must then find the store there too.
        try FileIO.makeDirectories(dir.xenstoreDirectory, mode: 0o700)
        FileIO.unlink(dir.xenstoreSocket)
        try xenstore.listen(path: dir.xenstoreSocket)
        try control.listen(path: dir.controlSocket)
        try FileIO.makeDirectories(dir.jailMountPoint, mode: 0o755)
        // A supervisor killed outright (SIGKILL, a crash) could not remove its domains' cgroups;
        // their processes died with it (parent-death signal). Remove what such ones left.
        for dir in StaleCgroups.remove(prefix: "procvisor-", isAlive: { ProcFS.isAlive($0) }) {
            logger.info("removed the cgroup of a supervisor that is gone", metadata: ["cgroup": "\(dir)"])
        }
        jail = JailSettings.probe(waived: options.insecure, uidBase: options.jailUIDBase, cgroupName: "procvisor-\(Process.pid)-probe")
        writeDom0Tree()
        try FileIO.write(dir.pidFile, "\(Process.pid)\n")
        logger.info("supervisor started", metadata: ["rundir": "\(dir.path)", "pid": "\(Process.pid)",
                                                     "memory_mb": "\(options.memoryMB)"])
        log("Procvisor supervisor started (Xen \(ProcvisorVersion.major).\(ProcvisorVersion.minor) interface), pid \(Process.pid)")
        log("machine memory: \(options.memoryMB) MiB (\(machine.totalFrames) frames)")
        log("domain jail: \(jail.summary)")
        for layer in jail.waived.sorted(by: { $0.rawValue < $1.rawValue }) {
            log("WARNING: \(layer.option): domains run without their \(layer.rawValue) layer")
            logger.warning("jail layer waived", metadata: ["layer": "\(layer.rawValue)"])
        }
        if let why = jail.refusal {
            log("domains cannot be started: \(why)")
            logger.error("domains cannot be jailed", metadata: ["why": "\(why)"])
        }
        scheduleReservationCheck()
    }

    /// Serves until SIGTERM/SIGINT, then powers domains off (destroying stragglers) and returns.
    public func run() throws {
        while true {
            try loop.runOnce()
            if stopping {
                if domains.values.allSatisfy({ !$0.hasProcess }) { break }
                if let d = stopDeadline, MonotonicClock.nanoseconds() >= d {
                    for dom in domains.values where dom.hasProcess {
                        logger.warning("domain did not power off in time; destroying", metadata: ["domid": "\(dom.domid)"])
                        try? Signals.send(Signals.kill, to: dom.pid)
                    }
                    stopDeadline = nil
                }
            }
        }
        cleanup()
    }

    func cleanup() {
        control.close()
        for dom in domains.values { releaseResources(dom) }
        domains.removeAll()
        dropAllStandbys()
        reapRetiredStandbys()
        xenstore.stop()
        FileIO.unlink(options.runDirectory.xenstoreSocket)
        FileIO.unlink(options.runDirectory.controlSocket)
        FileIO.unlink(options.runDirectory.pidFile)
        logger.info("supervisor stopped")
    }

    /// SIGCHLD and the stop signals come through a signalfd watched by the loop; SIGPIPE is ignored.
    func takeSignals() throws {
        let blocked: [Int32] = [Signals.child, Signals.terminate, Signals.interrupt, Signals.hangup]
        try Signals.block(blocked)
        Signals.ignore(Signals.brokenPipe)
        let sfd = try Signals.descriptor(for: blocked)
        signalFD = sfd
        try loop.watch(sfd) { [unowned self] _ in handleSignals() }
    }

    func handleSignals() {
        guard let sfd = signalFD else { return }
        for sig in Signals.drain(sfd) {
            switch sig {
            case Signals.child:
                for (pid, status) in ChildReaper.reap() where !liveUpdateCheckExited(pid: pid, status: status) {
                    processExited(pid: pid, status: status)
                }
            case Signals.terminate, Signals.interrupt, Signals.hangup:
                beginStop(reason: Signals.name(sig))
            default:
                break
            }
        }
    }

    /// Asks every domain to power off; the run loop destroys those still there at the deadline.
    func beginStop(reason: String) {
        guard !stopping else { return }
        stopping = true
        dropAllStandbys()
        logger.info("stopping", metadata: ["signal": "\(reason)", "domains": "\(domains.count)"])
        control.stopAccepting()
        stopDeadline = MonotonicClock.nanoseconds() + options.shutdownTimeoutMs * 1_000_000
        for dom in domains.values {
            dom.noRestart = true
            if dom.hasProcess {
                if dom.paused { try? Signals.send(Signals.continue, to: dom.pid); dom.paused = false }
                if dom.phase == .running { requestShutdown(dom, reason: .poweroff) } else { kill(dom) }
            }
        }
    }

    /// A line in the hypervisor log (`xl dmesg`) and the supervisor log.
    func log(_ line: String) {
        dmesg.append(line)
    }

    /// Resolves a DOMAIN argument as xl does: a domid if it is all digits, else a name.
    func find(_ spec: String) -> DomainRecord? { domains.find(spec) }

    var freeMemoryMB: UInt64 { machine.freeFrames / 256 }
}

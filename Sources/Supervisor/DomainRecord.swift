import LinuxHost
import ProcvisorABI
import Toolstack

/// Everything the supervisor knows about one domain: the Xen domain structure plus the Linux
/// process that implements it.
final class DomainRecord {
    enum Phase: Equatable {
        /// Spawned; waiting for the bootstrap and engaged hypercalls.
        case booting
        /// Engaged and verified: guest code runs.
        case running
        /// Shut down (by hypercall, exit or crash); the process is gone or going.
        case shutdown
        /// Being destroyed.
        case dying
    }

    let domid: UInt16
    var name: String
    var uuid: String
    let config: DomainConfig
    var phase: Phase = .booting
    var paused = false
    /// Created with `xl create -p`: stays paused after engaging.
    let startPaused: Bool
    var pid: Int32
    var shutdownReason: ShutdownReason?
    var crashReason: String?
    /// What `xl shutdown`/`xl reboot` asked for, while the domain has not yet acted on it.
    var requestedShutdown: ShutdownReason?
    var bootstrapped = false
    /// `xl destroy` asked for it: no on_* action when the process goes.
    var destroyRequested = false
    /// Supervisor shutdown: the domain goes away without on_* restarts.
    var noRestart = false

    // Descriptors held by the supervisor (all close-on-exec, non-blocking).
    let hypercallFD: FileDescriptor
    let eventFD: FileDescriptor
    let consoleOutFD: FileDescriptor
    let consoleInFD: FileDescriptor
    var watchTokens: [(FileDescriptor, UInt64)] = []
    /// The bounding filter's notification listener: calls the bound refuses arrive here.
    var boundListener: FileDescriptor?
    /// Event channels; nil once the domain is gone.
    var evtchn: DomainEventChannels?
    /// XenStore ring page, kick eventfd and store port (nil once the domain is gone).
    var store: DomainStore?
    /// Fallback timer of an unacknowledged `control/shutdown` request.
    var shutdownAckTimer: UInt64?
    /// RAM, P2M and reservation; nil once the domain's frames went back to the machine.
    var memory: DomainMemory?
    /// The domain's pids cgroup (every task of the domain, for limits and destroy).
    var pidsCgroup: PidsCgroup?
    /// The one-shot timer of `set_timer_op` (raises VIRQ_TIMER).
    var virqTimer: UInt64?
    /// The descriptors above have been closed (process gone or supervisor stopping).
    var released = false
    var consoleLog: FileDescriptor?
    var console = ConsoleRing()
    var consoleClients: Set<ObjectIdentifier> = []

    var engageTimer: UInt64?
    var createWaiter: ControlConnection?
    var destroyWaiters: [ControlConnection] = []
    /// `xl shutdown -w` / `xl reboot -w` callers.
    var shutdownWaiters: [ControlConnection] = []
    /// SCHEDOP_block calls waiting for an event or their timeout.
    var pendingBlocks: [(seq: UInt64, timer: UInt64?)] = []
    var malformedHypercalls = 0
    /// Start time (seconds since the epoch) and monotonic start for restart-loop detection.
    let startTime: UInt64
    let startMonotonic: UInt64
    /// CPU time when the process ended, kept for preserved domains.
    var finalCPUTimeNs: UInt64 = 0
    /// Consecutive restarts that each lived less than a second.
    var quickRestarts: Int

    init(domid: UInt16, name: String, uuid: String, config: DomainConfig, startPaused: Bool, pid: Int32,
         hypercallFD: FileDescriptor, eventFD: FileDescriptor, consoleOutFD: FileDescriptor, consoleInFD: FileDescriptor,
         quickRestarts: Int) {
        self.domid = domid
        self.name = name
        self.uuid = uuid
        self.config = config
        self.startPaused = startPaused
        self.pid = pid
        self.hypercallFD = hypercallFD
        self.eventFD = eventFD
        self.consoleOutFD = consoleOutFD
        self.consoleInFD = consoleInFD
        self.quickRestarts = quickRestarts
        startTime = UInt64(WallClock.now().seconds)
        startMonotonic = MonotonicClock.nanoseconds()
    }

    var hasProcess: Bool { pid > 0 }

    var label: String { "dom\(domid) (\(name))" }

    func info(includeConfig: Bool) -> DomainInfo {
        var running = false, blocked = false
        var cpu = finalCPUTimeNs
        if hasProcess {
            cpu = ProcFS.cpuTimeNs(of: pid)
            if !paused && phase != .shutdown && phase != .dying {
                let states = ProcFS.threadStates(of: pid)
                running = states.contains("R")
                blocked = !running
            }
        }
        return DomainInfo(
            domid: domid, name: name, uuid: uuid,
            currentMemoryKB: memory.map { $0.currentPages * 4 } ?? 0, maxMemoryKB: memory.map { $0.maxPages * 4 } ?? UInt64(config.maxmem) * 1024,
            vcpusOnline: config.vcpus, maxVCPUs: config.maxvcpus,
            running: running, blocked: blocked, paused: paused,
            shutdown: phase == .shutdown, shutdownReason: phase == .shutdown ? (shutdownReason ?? .crash) : nil,
            dying: phase == .dying, cpuTimeNs: cpu, startTime: startTime, pid: hasProcess ? pid : 0,
            crashReason: crashReason, config: includeConfig ? config : nil)
    }
}

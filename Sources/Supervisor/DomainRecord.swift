import LinuxHost
import ProcvisorABI
import Toolstack

/// What a domain is, as plain values: its identity, its config, where it is in its life and
/// what it printed. This is what outlives the process and what a save file carries; the
/// services hold the rest of its state (RAM in `MachineMemory`, grants in `GrantService`,
/// ports in `EventChannelService`, devices in `DeviceManager`, its tree in XenStore).
struct DomainState: Codable, Equatable {
    enum Phase: String, Codable, Equatable {
        /// Spawned; waiting for the bootstrap and engaged hypercalls.
        case booting
        /// Engaged and verified: guest code runs.
        case running
        /// Shut down (by hypercall, exit or crash); the process is gone or going.
        case shutdown
        /// Being destroyed.
        case dying
    }

    let domid: DomID
    var name: String
    var uuid: String
    /// As created; `xl sched-credit` changes the weight and cap in it, so that a restart, a
    /// save and a migration keep them.
    var config: DomainConfig
    var phase: Phase = .booting
    var paused = false
    /// Created with `xl create -p`: stays paused after engaging.
    let startPaused: Bool
    var shutdownReason: ShutdownReason?
    var crashReason: String?
    /// What `xl shutdown`/`xl reboot` asked for, while the domain has not yet acted on it.
    var requestedShutdown: ShutdownReason?
    var bootstrapped = false
    /// `xl destroy` asked for it: no on_* action when the process goes.
    var destroyRequested = false
    /// Supervisor shutdown: the domain goes away without on_* restarts.
    var noRestart = false
    var malformedHypercalls = 0
    /// It reported a forbidden system call (its SIGSYS reporter sends one, then it dies).
    var seccompReported = false
    /// Start time, seconds since the epoch.
    let startTime: UInt64
    /// CPU time when the process ended, kept for preserved domains.
    var finalCPUTimeNs: UInt64 = 0
    /// The RAM it held when its process ended (KiB): what `xl list` shows of a preserved domain,
    /// whose frames went back to the host then.
    var finalMemoryKB: UInt64?
    /// Consecutive restarts that each lived less than a second.
    var quickRestarts: Int
    /// The last bytes the domain wrote to its console.
    var console = ConsoleRing()
}

/// The Linux process that implements a domain, and the supervisor's handles on it: gone (and
/// rebuilt by a restore) where the state above stays.
final class DomainProcess {
    var pid: Int32
    /// Monotonic start, for restart-loop detection.
    let startMonotonic: UInt64
    // Descriptors held by the supervisor (all close-on-exec, non-blocking).
    let hypercallFD: FileDescriptor
    let eventFD: FileDescriptor
    let consoleOutFD: FileDescriptor
    let consoleInFD: FileDescriptor
    var watchTokens: [(FileDescriptor, UInt64)] = []
    /// The bounding filter's notification listener: calls the bound refuses arrive here.
    var boundListener: FileDescriptor?
    /// The process's CPU time when `xl list` last saw it change, and when (`DomainRecord.info`).
    var lastLook: (cpuTimeNs: UInt64, at: UInt64)?
    /// XenStore ring page, kick eventfd and store port (nil once the domain is gone).
    var store: DomainStore?
    /// The domain's pids cgroup (every task of the domain, for limits and destroy).
    var pidsCgroup: PidsCgroup?
    /// The domain's cpu cgroup (its `cpu_weight` and `cap`); nil where the host has no writable
    /// cpu controller.
    var cpuCgroup: CPUCgroup?
    /// The descriptors above have been closed (process gone or supervisor stopping).
    var released = false
    var engageTimer: UInt64?
    /// Fallback timer of an unacknowledged `control/shutdown` request.
    var shutdownAckTimer: UInt64?
    /// The one-shot timer of `set_timer_op` (raises VIRQ_TIMER).
    var virqTimer: UInt64?
    /// SCHEDOP_block calls waiting for an event or their timeout.
    var pendingBlocks: [(seq: UInt64, timer: UInt64?)] = []
    /// Restored: what the guest's suspend hook handed over, for its bootstrap (nil: a fresh boot).
    var resumeRecord: [UInt8]?
    /// Started for a restore whose pages are still coming: its bootstrap waits for them.
    var awaitingPages = false
    /// The bootstrap hypercall it made meanwhile, answered when the pages are in.
    var deferredBootstrap: UInt64?
    /// A live migration logs the pages this domain writes (nil: nobody does).
    var dirtyLog: DirtyLog?
    /// Channel events its event socket had no room for, in order, each with its own copies of
    /// the descriptors it carries; a port's state change replaces an older one for the same port
    /// (only the latest state matters), so a peer binding and closing a port in a loop cannot
    /// make the queue, or the domain's trouble, grow.
    var pendingChannelEvents: [(event: ChannelEvent, fds: [FileDescriptor])] = []
    var channelRetryTimer: UInt64?
    /// When the queue last went from empty to not empty.
    var channelBacklogSince: UInt64?
    /// A save or migration asked this domain to suspend (nil: nobody did).
    var suspend: SuspendRequest?
    /// A driver domain that died and is restarted in place: its XenStore connection was detached
    /// but the domain not released (its nodes, the backend directories, stay for the next one).
    var storeKept = false

    init(pid: Int32, hypercallFD: FileDescriptor, eventFD: FileDescriptor, consoleOutFD: FileDescriptor, consoleInFD: FileDescriptor,
         startMonotonic: UInt64 = MonotonicClock.nanoseconds()) {
        self.pid = pid
        self.hypercallFD = hypercallFD
        self.eventFD = eventFD
        self.consoleOutFD = consoleOutFD
        self.consoleInFD = consoleInFD
        self.startMonotonic = startMonotonic
    }
}

/// libxl's suspend of one domain: who asked, until when, and once the guest has suspended, its
/// unanswered SCHEDOP_shutdown and the record its suspend hook handed over.
final class SuspendRequest {
    /// The `xl save`/`xl migrate` connection (nil once it went away).
    weak var waiter: ControlConnection?
    var timer: UInt64?
    /// The guest's SCHEDOP_shutdown(SHUTDOWN_suspend): answered by `.resume` (rc 1).
    var seq: UInt64?
    var record: [UInt8] = []
    /// The guest's suspend event channel the request went through (nil: `control/shutdown`).
    var eventChannel: EvtchnPort?
    var suspended: Bool { seq != nil }
    init(waiter: ControlConnection) { self.waiter = waiter }
}

/// One domain in the supervisor's table: its state, its process, and the `xl` connections
/// waiting on it. The state's and the process's fields read as the record's own
/// (`dom.name` is `dom.state.name`, `dom.pid` is `dom.process.pid`).
@dynamicMemberLookup
final class DomainRecord {
    typealias Phase = DomainState.Phase

    var state: DomainState
    let process: DomainProcess
    var createWaiter: ControlConnection?
    var destroyWaiters: [ControlConnection] = []
    /// `xl shutdown -w` / `xl reboot -w` callers.
    var shutdownWaiters: [ControlConnection] = []

    init(state: DomainState, process: DomainProcess) {
        self.state = state
        self.process = process
    }

    subscript<T>(dynamicMember path: WritableKeyPath<DomainState, T>) -> T {
        get { state[keyPath: path] }
        set { state[keyPath: path] = newValue }
    }

    subscript<T>(dynamicMember path: KeyPath<DomainState, T>) -> T { state[keyPath: path] }

    subscript<T>(dynamicMember path: ReferenceWritableKeyPath<DomainProcess, T>) -> T {
        get { process[keyPath: path] }
        set { process[keyPath: path] = newValue }
    }

    subscript<T>(dynamicMember path: KeyPath<DomainProcess, T>) -> T { process[keyPath: path] }

    var hasProcess: Bool { process.pid > 0 }

    /// The guest has suspended for a save and waits for `.resume` or its end.
    var suspended: Bool { process.suspend?.suspended ?? false }

    var label: String { "dom\(state.domid) (\(state.name))" }

    /// What `xl list` shows of the domain; `memory` is its RAM while it holds frames.
    func info(includeConfig: Bool, memory: DomainMemory?) -> DomainInfo {
        let s = state
        let suspended = self.suspended
        var running = false, blocked = false
        var cpu = s.finalCPUTimeNs
        if hasProcess {
            cpu = ProcFS.stat(of: process.pid)?.cpuTimeNs ?? 0
            if !s.paused && !suspended && s.phase != .shutdown && s.phase != .dying {
                // A domain that used no CPU since the last look, at least 50 ms ago (CPU time
                // moves in 10 ms ticks), is blocked: its threads are read only otherwise (so a
                // thousand idle domains list quickly).
                let now = MonotonicClock.nanoseconds()
                if let last = process.lastLook, last.cpuTimeNs == cpu, now &- last.at >= 50_000_000 {
                    running = false
                } else {
                    running = ProcFS.threadStates(of: process.pid).contains("R")
                }
                if process.lastLook?.cpuTimeNs != cpu { process.lastLook = (cpu, now) }
                blocked = !running
            }
        }
        return DomainInfo(
            domid: s.domid.rawValue, name: s.name, uuid: s.uuid,
            currentMemoryKB: memory.map { $0.currentPages * 4 } ?? s.finalMemoryKB ?? 0, maxMemoryKB: memory.map { $0.maxPages * 4 } ?? UInt64(s.config.maxmem) * 1024,
            vcpusOnline: s.config.vcpus, maxVCPUs: s.config.maxvcpus,
            running: running, blocked: blocked, paused: s.paused,
            // A suspended domain shows as Xen shows one being saved: shut down, reason suspend.
            shutdown: s.phase == .shutdown || suspended,
            shutdownReason: suspended ? .suspend : s.phase == .shutdown ? (s.shutdownReason ?? .crash) : nil,
            dying: s.phase == .dying, cpuTimeNs: cpu, startTime: s.startTime, pid: hasProcess ? process.pid : 0,
            crashReason: s.crashReason, config: includeConfig ? s.config : nil)
    }
}

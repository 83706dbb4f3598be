import DomainRuntime
import LinuxHost
import ProcvisorABI

/// blkback: serves the vbds the toolstack assigns to this driver domain
/// (`/local/domain/SELF/backend/vbd/F/DEVID`). One thread per device does the xenbus handshake
/// (Linux's connect_ring: multi-queue, multi-page rings, persistent grants, indirect segments)
/// and watches the frontend. Each queue has its own I/O engine working straight in the
/// frontend's granted pages (kept mapped when both ends support `feature-persistent`). The
/// caller's thread becomes the event dispatcher: it takes every event of the domain and takes the
/// requests off that queue's ring into its engine itself (no hand-off on the way in); each queue
/// has a thread that answers completions and runs barriers. A frontend that puts garbage on a
/// ring is disconnected; the others keep being served.
///
/// Settings: `BlkbackSettings`, read from the driver domain's command line (KEY=VALUE) by
/// `DriverSettings.blkback`.
public final class Blkback {
    let domain: Domain
    let log: (String) -> Void
    let settings: BlkbackSettings
    private let lock = Lock()
    private lazy var devices = BackendDevices<BlkbackDevice>(
        domain: domain, type: "vbd", make: { [unowned self] f, d in BlkbackDevice(domain: domain, frontend: f, devid: d, owner: self) },
        start: { [domain] device in domain.startVCPU(-10) { _ in device.run() } }, stop: { $0.requestStop() })
    private var byPort: [EventChannels.Port: BlkbackQueue] = [:]
    private let dispatcherKick = Kick()

    public init(domain: Domain, settings: BlkbackSettings = BlkbackSettings(), log: @escaping (String) -> Void) {
        self.domain = domain
        self.settings = settings
        self.log = log
    }

    /// The queue thread takes the requests (`submit=queue`; the dispatcher only kicks it).
    var queueThreadSubmits: Bool { settings.queueMode == .queueThreadSubmits }
    /// Whether a queue may run on one thread that sleeps in its io_uring, waiting for its
    /// completions and the domain's doorbell at once (the default; `dispatch=1` or `submit=queue`
    /// keep the event dispatcher).
    var ownedQueues: Bool { settings.queueMode == .owned }

    /// Staging memory for large requests (`BounceBuffers`), all queues together: it is this
    /// process's own memory, out of the headroom the supervisor's memory limit leaves above the
    /// domain's RAM (64 MiB), so it is capped (`staging-mib=N`).
    private var stagingBudget: Int { settings.stagingBytes }
    private var stagingUsed = 0

    /// Takes `bytes` of the staging budget; false when that would exceed it.
    func reserveStaging(_ bytes: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard stagingUsed + bytes <= stagingBudget else { return false }
        stagingUsed += bytes
        return true
    }

    func releaseStaging(_ bytes: Int) {
        lock.lock()
        stagingUsed -= bytes
        lock.unlock()
    }

    /// Something went wrong inside this backend that no frontend caused and that a new
    /// incarnation does not inherit (the kernel refused the I/O engine's submission): the driver
    /// domain crashes on purpose, the supervisor restarts it in place, and the new incarnation
    /// takes every device over from its in-flight log, so the guests see a pause, not an error.
    func crashForRestart(_ why: String) -> Never {
        log("blkback: \(why); crashing so that a new incarnation takes the devices over from their in-flight logs")
        domain.shutdown(.crash)
    }

    /// `multi-queue-max-queues`: one per vCPU of this driver domain (Linux's xenblk_max_queues
    /// is dom0's online CPUs), at most 16.
    var maxQueues: Int { settings.maxQueues(vcpus: Int(domain.startInfo.vcpus)) }

    /// Watches for devices and dispatches events forever.
    public func run() -> Never {
        do {
            try domain.store.watch("backend/vbd", token: "blkback:devices") { [unowned self] _ in devices.scan() }
        } catch {
            log("blkback: cannot watch backend/vbd: \(error)")
            domain.shutdown(.crash)
        }
        log("blkback: dom\(domain.domid) serving vbds")
        while true {
            lock.lock()
            let dispatching = !byPort.isEmpty
            lock.unlock()
            // Queues that wait on their own io_uring take their events themselves: without
            // others, this thread stays off the doorbell (it would wake with every event).
            guard dispatching else {
                dispatcherKick.wait(timeoutMs: 1000)
                continue
            }
            for port in domain.eventChannels.wait(timeoutNs: 1_000_000_000, spin: settings.spin) {
                lock.lock()
                let q = byPort[port]
                lock.unlock()
                if queueThreadSubmits { q?.kick() } else { q?.serviceRing() }
            }
        }
    }

    /// A queue whose requests this thread takes (one without its own io_uring wait).
    func registered(_ q: BlkbackQueue, port: EventChannels.Port) {
        lock.lock(); byPort[port] = q; lock.unlock()
        dispatcherKick.raise()
    }

    /// Queues about to close their ports: their events stop coming here. Called before the
    /// ports are closed, and an entry goes only while it is still this queue's: once closed, a
    /// port number can be bound again at once by a device connecting meanwhile, and that
    /// device's queue must keep its entry.
    func unregister(_ queues: [BlkbackQueue]) {
        lock.lock()
        for q in queues {
            if let p = q.port, byPort[p] === q { byPort[p] = nil }
        }
        lock.unlock()
    }

    /// The device thread ended.
    func finished(_ d: BlkbackDevice) {
        devices.finished(frontend: d.frontend, devid: d.devid)
    }
}

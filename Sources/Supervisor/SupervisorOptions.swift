import LinuxHost
import Toolstack

/// Tunables, from the environment so `xl` and tests can set them for an auto-started supervisor.
public struct SupervisorOptions: Sendable {
    public var runDirectory: RunDirectory
    /// How long a new domain has to engage its sandbox (`PROCVISOR_ENGAGE_TIMEOUT_MS`, default 5000).
    public var engageTimeoutMs: UInt64
    /// How long domains get to power off when the supervisor stops (`PROCVISOR_SHUTDOWN_TIMEOUT_MS`, default 5000).
    public var shutdownTimeoutMs: UInt64
    /// Machine memory given to domains in MiB (`PROCVISOR_MEMORY_MB`, default 75% of host RAM).
    public var memoryMB: UInt64
    /// Grant table frames a domain may set up (`PROCVISOR_MAX_GRANT_FRAMES`, default 32: 16384 grefs).
    public var maxGrantFrames: Int
    /// How long a domain may leave XenStore replies and watch events on its ring untaken before
    /// the ring is disconnected (`PROCVISOR_XS_EVENT_TIMEOUT_MS`, default 20000: xenstored's
    /// watch-event timeout).
    public var xenstoreEventTimeoutMs: UInt64
    /// How long `xl block-detach` waits for the backend to reach Closed
    /// (`PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS`, default 10000: libxl's LIBXL_DESTROY_TIMEOUT).
    public var deviceRemoveTimeoutMs: UInt64
    /// Hypercalls a domain may get wrong before it is crashed.
    public var malformedHypercallLimit: Int = 16

    public init(environment: [String: String], uid: UInt32) {
        runDirectory = RunDirectory.resolve(environment: environment, uid: uid)
        engageTimeoutMs = environment["PROCVISOR_ENGAGE_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 5000
        shutdownTimeoutMs = environment["PROCVISOR_SHUTDOWN_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 5000
        xenstoreEventTimeoutMs = environment["PROCVISOR_XS_EVENT_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 20000
        deviceRemoveTimeoutMs = environment["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 10000
        maxGrantFrames = environment["PROCVISOR_MAX_GRANT_FRAMES"].flatMap { Int($0) }.map { max(1, min($0, 1024)) } ?? 32
        let hostMB = (ProcFS.meminfoKB("MemTotal") ?? 1 << 20) / 1024
        memoryMB = environment["PROCVISOR_MEMORY_MB"].flatMap { UInt64($0) } ?? hostMB * 3 / 4
    }
}

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
    /// How long a guest has to acknowledge `control/shutdown` = "suspend", and then to suspend,
    /// before a save gives up and the domain carries on (`PROCVISOR_SUSPEND_TIMEOUT_MS`,
    /// default 60000: libxl's wait for each).
    public var suspendTimeoutMs: UInt64
    /// A driver domain that crashes is restarted in place (same domid, its devices kept) at most
    /// `count` times in `seconds`; past that it is left down and its devices fail
    /// (`PROCVISOR_DRIVER_RESTARTS=COUNT/SECONDS`, default 5/60).
    public var driverRestartLimit: (count: Int, seconds: UInt64) = (5, 60)
    /// Each driver domain that a crash restarts in place has a standby incarnation: its next
    /// process, started and jailed beforehand, waiting to take over (`PROCVISOR_DRIVER_STANDBY`,
    /// 1 by default; 0 starts the new process only after the crash).
    public var driverStandby = true
    /// A domain's console log is rotated (to `guest-NAME.log.1`, replacing the previous one) when
    /// it would grow past this many bytes (`PROCVISOR_CONSOLE_LOG_MAX_MB`, default 32): a guest
    /// that writes without end cannot fill the disk.
    public var consoleLogMaxBytes: Int = 32 << 20
    /// Hypercalls a domain may get wrong before it is crashed
    /// (`PROCVISOR_MALFORMED_HYPERCALL_LIMIT`, default 16).
    public var malformedHypercallLimit: Int
    /// Jail layers the operator runs without (`PROCVISOR_INSECURE=no-cgroups,no-namespaces`,
    /// or `procvisord --insecure-no-…`). `xl info` and `xl dmesg` say so.
    var insecure: Set<JailSettings.Layer> = []
    /// What in `PROCVISOR_INSECURE` or `PROCVISOR_JAIL_UID_BASE` could not be understood.
    public var problems: [String] = []
    /// Domains run as uid and gid `jailUIDBase + domid` (`PROCVISOR_JAIL_UID_BASE`, default 100000).
    public var jailUIDBase: UInt32 = 100_000
    /// The scheduler `xl info` names and whose `xl sched-*` command sets weights and caps
    /// (`PROCVISOR_SCHED`, Xen's `sched=` boot parameter: credit2 by default, as Xen 4.17).
    /// Both become the same cgroup settings (docs/scheduling.md).
    public var scheduler = "credit2"
    static let schedulers = ["credit", "credit2"]

    public init(environment: [String: String], uid: UInt32) {
        runDirectory = RunDirectory.resolve(environment: environment, uid: uid)
        engageTimeoutMs = environment["PROCVISOR_ENGAGE_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 5000
        shutdownTimeoutMs = environment["PROCVISOR_SHUTDOWN_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 5000
        xenstoreEventTimeoutMs = environment["PROCVISOR_XS_EVENT_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 20000
        deviceRemoveTimeoutMs = environment["PROCVISOR_DEVICE_REMOVE_TIMEOUT_MS"].flatMap { UInt64($0) } ?? 10000
        if let spec = environment["PROCVISOR_DRIVER_RESTARTS"] {
            let parts = spec.split(separator: "/")
            if parts.count == 2, let n = Int(parts[0]), let t = UInt64(parts[1]), n >= 0, n <= 1000, t >= 1, t <= 86400 {
                driverRestartLimit = (n, t)
            } else {
                problems.append("PROCVISOR_DRIVER_RESTARTS: \"\(spec)\" is not RESTARTS/SECONDS (0…1000 restarts in 1…86400 seconds)")
            }
        }
        switch environment["PROCVISOR_DRIVER_STANDBY"] {
        case nil, "1": driverStandby = true
        case "0": driverStandby = false
        case let other?: problems.append("PROCVISOR_DRIVER_STANDBY: \"\(other)\" is neither 0 nor 1")
        }
        suspendTimeoutMs = environment["PROCVISOR_SUSPEND_TIMEOUT_MS"].flatMap { UInt64($0) }.map { max(1, $0) } ?? 60000
        if let mb = environment["PROCVISOR_CONSOLE_LOG_MAX_MB"] {
            if let v = Int(mb), v >= 1, v <= 4096 { consoleLogMaxBytes = v << 20 } else {
                problems.append("PROCVISOR_CONSOLE_LOG_MAX_MB: \"\(mb)\" is not a number of MiB from 1 to 4096")
            }
        }
        malformedHypercallLimit = environment["PROCVISOR_MALFORMED_HYPERCALL_LIMIT"].flatMap { Int($0) }.map { max(1, min($0, 1 << 20)) } ?? 16
        maxGrantFrames = environment["PROCVISOR_MAX_GRANT_FRAMES"].flatMap { Int($0) }.map { max(1, min($0, 1024)) } ?? 32
        let hostMB = (ProcFS.meminfoKB("MemTotal") ?? 1 << 20) / 1024
        memoryMB = environment["PROCVISOR_MEMORY_MB"].flatMap { UInt64($0) } ?? hostMB * 3 / 4
        for word in (environment["PROCVISOR_INSECURE"] ?? "").split(separator: ",").map({ $0.trimmingSpaces }) where !word.isEmpty {
            if word.hasPrefix("no-"), let layer = JailSettings.Layer(rawValue: String(word.dropFirst(3))) {
                insecure.insert(layer)
            } else {
                problems.append("PROCVISOR_INSECURE: unknown layer \"\(word)\" (known: "
                    + JailSettings.Layer.allCases.map { "no-" + $0.rawValue }.joined(separator: ", ") + ")")
            }
        }
        if let base = environment["PROCVISOR_JAIL_UID_BASE"] {
            // Every domid (below 0x7FF0) must map to a uid that is neither 0 nor (uid_t)-1.
            if let v = UInt32(base), v >= 1, UInt64(v) + 0x7FF0 < UInt64(UInt32.max) {
                jailUIDBase = v
            } else {
                problems.append("PROCVISOR_JAIL_UID_BASE=\(base): not a uid between 1 and \(UInt32.max - 0x7FF0 - 1)")
            }
        }
        if let sched = environment["PROCVISOR_SCHED"] {
            if Self.schedulers.contains(sched) { scheduler = sched } else {
                problems.append("PROCVISOR_SCHED=\(sched): not a scheduler (\(Self.schedulers.joined(separator: ", ")))")
            }
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

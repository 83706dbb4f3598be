import Glibc

/// Process resource limits (getrlimit/setrlimit).
public enum ResourceLimits {
    /// Resources (`RLIMIT_*`) for `limits(of:)` and `Spawner.Limits`.
    public static let coreFileSize = Int32(RLIMIT_CORE.rawValue)
    public static let fileSize = Int32(RLIMIT_FSIZE.rawValue)
    public static let openFiles = Int32(RLIMIT_NOFILE.rawValue)
    public static let lockedMemory = Int32(__RLIMIT_MEMLOCK.rawValue)
    /// Tasks (processes and threads) of the real user id, counted across the whole system.
    public static let processes = Int32(__RLIMIT_NPROC.rawValue)
    /// No limit (RLIM_INFINITY).
    public static let unlimited = UInt64.max

    /// The soft and hard limit of `resource` for this process (getrlimit(2)).
    public static func limits(of resource: Int32) throws -> (soft: UInt64, hard: UInt64) {
        var rl = rlimit()
        try retrying("getrlimit", "resource \(resource)") { getrlimit(__rlimit_resource_t(UInt32(resource)), &rl) }
        return (UInt64(rl.rlim_cur), UInt64(rl.rlim_max))
    }

    /// The soft and hard RLIMIT_NOFILE of this process.
    public static func descriptors() throws -> (soft: UInt64, hard: UInt64) {
        var rl = rlimit()
        try retrying("getrlimit", "RLIMIT_NOFILE") { getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) }
        return (UInt64(rl.rlim_cur), UInt64(rl.rlim_max))
    }

    /// Sets RLIMIT_NOFILE. Raising the hard limit needs CAP_SYS_RESOURCE (EPERM otherwise); the
    /// kernel caps both at /proc/sys/fs/nr_open (EPERM above it).
    public static func setDescriptors(soft: UInt64, hard: UInt64) throws {
        var rl = rlimit(rlim_cur: rlim_t(soft), rlim_max: rlim_t(hard))
        try retrying("setrlimit", "RLIMIT_NOFILE soft \(soft) hard \(hard)") { setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) }
    }

    /// Raises this process's descriptor limit as far as it may: the hard limit to
    /// /proc/sys/fs/nr_open when `raiseHard` (root), then the soft limit to the hard one.
    /// Returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseDescriptorLimit(raiseHard: Bool) -> UInt64 {
        guard var (soft, hard) = try? descriptors() else { return 1024 }
        if raiseHard, let text = try? FileIO.readString("/proc/sys/fs/nr_open"),
           let nrOpen = UInt64(String(text.filter(\.isNumber))), nrOpen > hard,
           (try? setDescriptors(soft: soft, hard: nrOpen)) != nil {
            hard = nrOpen
        }
        if soft < hard, (try? setDescriptors(soft: hard, hard: hard)) != nil { soft = hard }
        return soft
    }
}

import Glibc

/// A `cpu` cgroup for one domain (v1 `cpu` hierarchy, or v2 where the unified hierarchy has the
/// cpu controller): what the credit schedulers' weight and cap become on Linux. The weight is a
/// proportional share (v1 `cpu.shares`, v2 `cpu.weight`); the cap a CFS bandwidth quota per
/// period (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
public final class CPUCgroup {
    public let path: String
    public let version: MemoryCgroup.Version
    /// Whether the directory is this cgroup's alone. On v2 the domain's memory, pids and cpu
    /// cgroups are one directory, which the others make, join and remove: the cpu side only
    /// writes its files there.
    public let ownsDirectory: Bool

    /// The CFS period a cap is a share of, in microseconds (the kernel's default).
    public static let periodMicroseconds = 100_000

    /// The directory of this process's cpu cgroup, and its version.
    public static func current() -> (path: String, version: MemoryCgroup.Version)? {
        guard let text = try? FileIO.readString("/proc/self/cgroup") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            let controllers = f[1].split(separator: ",")
            if controllers.contains("cpu") {
                // Mounted as `cpu` alone or together with cpuacct (`cpu,cpuacct`).
                for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/" + controllers.joined(separator: ",")]
                where FileIO.exists(mount + "/cpu.shares") {
                    return (mount + f[2], .v1)
                }
            }
        }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let dir = root + line.dropFirst(3)
                if let c = try? FileIO.readString(dir + "/cgroup.controllers"), c.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("cpu") {
                    return (dir, .v2)
                }
            }
        }
        return nil
    }

    /// Creates `name` under the current cpu cgroup with the default weight and no cap; throws
    /// when there is no cpu controller or it is not writable.
    public init(name: String) throws {
        guard let (parent, version) = Self.current() else {
            throw SystemError("cgroup", "no cpu controller found in /proc/self/cgroup", errno: .noSuchFile)
        }
        self.version = version
        let dir = parent + "/" + name
        ownsDirectory = version == .v1
        if mkdir(dir, 0o755) != 0 && Errno.current != .exists { throw SystemError("mkdir", dir, errno: .current) }
        path = dir
        // On v2 the controller must also be enabled for the children (the parent's
        // cgroup.subtree_control): without it the directory has no cpu.weight.
        if version == .v2 && !FileIO.exists(dir + "/cpu.weight") {
            throw SystemError("cgroup", "the cpu controller is not enabled in \(parent)/cgroup.subtree_control", errno: .noSuchFile)
        }
    }

    /// The cgroup `name` this process made earlier (before a live update), if it is there.
    public init?(existing name: String) {
        guard let (parent, version) = Self.current(), FileIO.exists(parent + "/" + name + (version == .v1 ? "/cpu.shares" : "/cpu.weight")) else {
            return nil
        }
        self.path = parent + "/" + name
        self.version = version
        ownsDirectory = version == .v1
    }

    /// The kernel's value for a Xen weight (1–65535, 256 the default). v1 shares are 1024 for the
    /// default, so the weight is multiplied by 4 (2–262144 is the kernel's range, which every
    /// Xen weight fits). v2 weights are 100 for the default in 1–10000: the Xen weight scaled by
    /// 100/256, clamped to that range (weights above 25600 all become 10000).
    public static func kernelWeight(xenWeight: Int, version: MemoryCgroup.Version) -> Int {
        let w = max(1, min(65535, xenWeight))
        switch version {
        case .v1: return w * 4
        case .v2: return max(1, min(10_000, (w * 100 + 128) / 256))
        }
    }

    /// The quota per period for a Xen cap (percent of one CPU, 0 = no cap); nil is unlimited.
    public static func quotaMicroseconds(cap: Int) -> Int? {
        // Saturating: a cap beyond any machine is as good as none bigger.
        cap <= 0 ? nil : Int(min(Int64(cap), 1 << 40)) * periodMicroseconds / 100
    }

    public func setWeight(xen weight: Int) throws {
        let value = Self.kernelWeight(xenWeight: weight, version: version)
        try FileIO.write(path + (version == .v1 ? "/cpu.shares" : "/cpu.weight"), "\(value)\n")
    }

    public func setCap(percent cap: Int) throws {
        let quota = Self.quotaMicroseconds(cap: cap)
        switch version {
        case .v1:
            try FileIO.write(path + "/cpu.cfs_period_us", "\(Self.periodMicroseconds)\n")
            try FileIO.write(path + "/cpu.cfs_quota_us", "\(quota ?? -1)\n")
        case .v2:
            try FileIO.write(path + "/cpu.max", "\(quota.map(String.init) ?? "max") \(Self.periodMicroseconds)\n")
        }
    }

    /// The weight and quota as the kernel holds them (v1 shares or v2 weight; quota in µs per
    /// period, nil when unlimited): what tests and `xl` diagnostics compare with.
    public var enforced: (weight: Int, quotaMicroseconds: Int?) {
        func read(_ f: String) -> String {
            String(((try? FileIO.readString(path + "/" + f)) ?? "").split(separator: "\n").first ?? "")
        }
        switch version {
        case .v1:
            let q = Int(read("cpu.cfs_quota_us")) ?? -1
            return (Int(read("cpu.shares")) ?? 0, q < 0 ? nil : q)
        case .v2:
            let max = read("cpu.max").split(separator: " ")
            return (Int(read("cpu.weight")) ?? 0, max.first.flatMap { Int($0) })
        }
    }

    /// Times the cap held the cgroup back (v1 `nr_throttled`, v2 `nr_throttled` in cpu.stat).
    public var throttledPeriods: Int {
        let stat = (try? FileIO.readString(path + "/cpu.stat")) ?? ""
        for line in stat.split(separator: "\n") where line.hasPrefix("nr_throttled ") { return Int(line.dropFirst(13)) ?? 0 }
        return 0
    }

    /// The processes in the cgroup (host pids).
    public var processes: [pid_t] { CgroupFiles.pids(path + "/cgroup.procs") }

    /// The file a new, single-threaded process writes "0" to in order to join the cgroup
    /// (`CgroupFiles.joinFile`).
    public func joinFile() throws -> FileDescriptor { try CgroupFiles.joinFile(path, version: version) }

    /// Removes the (empty) cgroup; a process still listed (gone from its others already) is
    /// moved to the parent first. A v2 directory is not this cgroup's to remove (`ownsDirectory`).
    @discardableResult
    public func remove() -> Bool {
        guard ownsDirectory else { return true }
        if rmdir(path) == 0 { return true }
        guard errno == EBUSY, let slash = path.lastIndex(of: "/") else { return false }
        let parent = String(path[..<slash])
        for pid in CgroupFiles.pids(path + "/cgroup.procs") {
            try? FileIO.write(parent + "/cgroup.procs", "\(pid)\n")
        }
        return rmdir(path) == 0
    }
}

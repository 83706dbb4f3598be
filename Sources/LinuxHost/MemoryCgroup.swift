import Glibc

/// A memory cgroup for one domain, created under the supervisor's own cgroup (v1 `memory`
/// hierarchy or the v2 unified one). Creation fails cleanly where cgroups are not writable; the
/// caller then enforces reservations by measurement instead.
public final class MemoryCgroup {
    public enum Version: String, Sendable { case v1, v2 }
    public let path: String
    public let version: Version

    /// The directory of this process's memory cgroup, and its version.
    public static func current() -> (path: String, version: Version)? {
        guard let text = try? FileIO.readString("/proc/self/cgroup") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            if f[1].split(separator: ",").contains("memory") {
                return ("/sys/fs/cgroup/memory" + f[2], .v1)
            }
        }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let dir = "/sys/fs/cgroup" + line.dropFirst(3)
            if FileIO.exists(dir + "/cgroup.controllers") { return (dir, .v2) }
        }
        return nil
    }

    /// Creates `name` under the current cgroup with `limitBytes`; throws when not permitted.
    public init(name: String, limitBytes: UInt64) throws {
        guard let (parent, version) = Self.current() else {
            throw SystemError("cgroup", "no memory cgroup found in /proc/self/cgroup", errno: .noSuchFile)
        }
        self.version = version
        path = try CgroupFiles.make(parent + "/" + name, limit: version == .v1 ? "memory.limit_in_bytes" : "memory.max", limitBytes)
    }

    /// A cgroup this process made before an exec (a live update), by its directory.
    public init(adopting path: String, version: Version) {
        self.path = path
        self.version = version
    }

    public func setLimit(_ bytes: UInt64) throws {
        try FileIO.write(path + (version == .v1 ? "/memory.limit_in_bytes" : "/memory.max"), "\(bytes)\n")
    }

    /// Moves `pid` (all its threads) into the cgroup.
    public func add(_ pid: pid_t) throws {
        try FileIO.write(path + "/cgroup.procs", "\(pid)\n")
    }

    /// How often the limit was hit (v1 memory.failcnt, v2 the `max` count of memory.events).
    public var limitHits: Int {
        if version == .v1 { return Int(((try? FileIO.readString(path + "/memory.failcnt")) ?? "0").split(separator: "\n").first ?? "0") ?? 0 }
        let events = (try? FileIO.readString(path + "/memory.events")) ?? ""
        for line in events.split(separator: "\n") where line.hasPrefix("max ") { return Int(line.dropFirst(4)) ?? 0 }
        return 0
    }

    /// Removes the cgroup. A process still in it (an `xl restore` that joined it to write the
    /// domain's pages, and had not left yet when the domain went) is moved to the parent first:
    /// the domain's own process is gone by then, nothing else belongs here.
    @discardableResult
    public func remove() -> Bool {
        if rmdir(path) == 0 { return true }
        guard errno == EBUSY, let slash = path.lastIndex(of: "/") else { return false }
        let parent = String(path[..<slash])
        for pid in ((try? FileIO.readString(path + "/cgroup.procs")) ?? "").split(separator: "\n") {
            try? FileIO.write(parent + "/cgroup.procs", "\(pid)\n")
        }
        return rmdir(path) == 0
    }
}

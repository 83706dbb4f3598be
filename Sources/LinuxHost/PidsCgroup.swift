import Glibc

/// A `pids` cgroup for one domain (v1 `pids` hierarchy, or v2 where the unified hierarchy has the
/// pids controller): bounds the tasks (processes and threads) of the domain, whatever uid they
/// run as, and lists them for destroy.
public final class PidsCgroup {
    public let path: String
    public let version: MemoryCgroup.Version

    /// The directory of this process's pids cgroup, and its version.
    public static func current() -> (path: String, version: MemoryCgroup.Version)? {
        guard let text = try? FileIO.readString("/proc/self/cgroup") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            if f[1].split(separator: ",").contains("pids") { return ("/sys/fs/cgroup/pids" + f[2], .v1) }
        }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let dir = root + line.dropFirst(3)
                if let c = try? FileIO.readString(dir + "/cgroup.controllers"), c.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("pids") {
                    return (dir, .v2)
                }
            }
        }
        return nil
    }

    /// Creates `name` under the current pids cgroup allowing `maxTasks`; throws when not permitted.
    public init(name: String, maxTasks: Int) throws {
        guard let (parent, version) = Self.current() else {
            throw SystemError("cgroup", "no pids cgroup found in /proc/self/cgroup", errno: .noSuchFile)
        }
        self.version = version
        path = try CgroupFiles.make(parent + "/" + name, limit: "pids.max", UInt64(maxTasks))
    }

    /// A cgroup this process made before an exec (a live update), by its directory.
    public init(adopting path: String, version: MemoryCgroup.Version) {
        self.path = path
        self.version = version
    }

    /// The file a new, single-threaded process writes "0" to in order to join the cgroup
    /// (`CgroupFiles.joinFile`).
    public func joinFile() throws -> FileDescriptor { try CgroupFiles.joinFile(path, version: version) }

    /// The processes in the cgroup (host pids).
    public var processes: [pid_t] { CgroupFiles.pids(path + "/cgroup.procs") }

    /// The cgroup's own name (its directory's last component): the domain's other cgroups
    /// carry the same one.
    public var name: String { DynamicLoader.baseName(path) }

    /// How many tasks are in it now.
    public var current: Int {
        Int(((try? FileIO.readString(path + "/pids.current")) ?? "0").split(separator: "\n").first ?? "0") ?? 0
    }

    /// SIGKILL to every process in it: `cgroup.kill` on v2, each listed pid on v1.
    public func killAll() { CgroupFiles.killAll(path, version: version) }

    /// Removes the (empty) cgroup.
    @discardableResult
    public func remove() -> Bool { rmdir(path) == 0 }
}

/// The cgroups a supervisor killed outright leaves behind.
public enum StaleCgroups {
    /// Removes the memory, pids and cpu cgroups named `PREFIX<pid>-…` (v1 and v2) whose supervisor
    /// `pid` is not alive. Only empty ones go (rmdir refuses the others); returns what went.
    public static func remove(prefix: String, isAlive: (pid_t) -> Bool) -> [String] {
        var parents: [String] = []
        if let m = MemoryCgroup.current() { parents.append(m.path) }
        if let p = PidsCgroup.current(), !parents.contains(p.path) { parents.append(p.path) }
        if let c = CPUCgroup.current(), !parents.contains(c.path) { parents.append(c.path) }
        var removed: [String] = []
        for parent in parents {
            for name in FileIO.names(in: parent) where name.hasPrefix(prefix) {
                guard let pid = pid_t(name.dropFirst(prefix.count).prefix { $0 != "-" }), pid > 0, !isAlive(pid) else { continue }
                let dir = parent + "/" + name
                if rmdir(dir) == 0 { removed.append(dir) }
            }
        }
        return removed
    }
}

/// What every controller's directory has in common.
enum CgroupFiles {
    /// Creates the cgroup directory `path` (or takes it over) and writes its limit; removed again
    /// if the limit cannot be set.
    static func make(_ path: String, limit file: String, _ value: UInt64) throws -> String {
        if mkdir(path, 0o755) != 0 && Errno.current != .exists { throw SystemError("mkdir", path, errno: .current) }
        do {
            try FileIO.write(path + "/" + file, "\(value)\n")
        } catch {
            _ = rmdir(path)
            throw error
        }
        return path
    }

    /// Opened for writing: a process that writes "0" to it moves into the cgroup. On v1 that is
    /// `tasks`, which moves only the calling thread: for a process that has one thread (a domain
    /// between clone and exec) it is the same move, and the kernel makes it without taking the
    /// global threadgroup lock, whose write side waits for an RCU grace period (10-25 ms per
    /// domain here, through `cgroup.procs`). v2 refuses moving a lone thread across domains:
    /// `cgroup.procs` there.
    static func joinFile(_ dir: String, version: MemoryCgroup.Version) throws -> FileDescriptor {
        try FileDescriptor.open(dir + (version == .v1 ? "/tasks" : "/cgroup.procs"), O_WRONLY | O_CLOEXEC)
    }

    static func pids(_ file: String) -> [pid_t] {
        ((try? FileIO.readString(file)) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    static func killAll(_ dir: String, version: MemoryCgroup.Version) {
        if version == .v2, (try? FileIO.write(dir + "/cgroup.kill", "1\n")) != nil { return }
        for pid in pids(dir + "/cgroup.procs") where pid > 1 { _ = Glibc.kill(pid, SIGKILL) }
    }
}

extension MemoryCgroup {
    /// The file a new, single-threaded process writes "0" to in order to join the cgroup
    /// (`CgroupFiles.joinFile`).
    public func joinFile() throws -> FileDescriptor { try CgroupFiles.joinFile(path, version: version) }

    /// The processes in the cgroup (host pids).
    public var processes: [pid_t] { CgroupFiles.pids(path + "/cgroup.procs") }

    /// SIGKILL to every process in it.
    public func killAll() { CgroupFiles.killAll(path, version: version) }
}

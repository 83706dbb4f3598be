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
        path = parent + "/" + name
        if mkdir(path, 0o755) != 0 && Errno.current != .exists { throw SystemError("mkdir", path, errno: .current) }
        do {
            try FileIO.write(path + "/pids.max", "\(maxTasks)\n")
        } catch {
            _ = rmdir(path)
            throw error
        }
    }

    /// `cgroup.procs` opened for writing: a process that writes "0" to it joins the cgroup.
    public func procsFile() throws -> FileDescriptor {
        try FileDescriptor.open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
    }

    /// The processes in the cgroup (host pids).
    public var processes: [pid_t] { CgroupFiles.pids(path + "/cgroup.procs") }

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

/// What every controller's directory has in common.
enum CgroupFiles {
    static func pids(_ file: String) -> [pid_t] {
        ((try? FileIO.readString(file)) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    static func killAll(_ dir: String, version: MemoryCgroup.Version) {
        if version == .v2, (try? FileIO.write(dir + "/cgroup.kill", "1\n")) != nil { return }
        for pid in pids(dir + "/cgroup.procs") where pid > 1 { _ = Glibc.kill(pid, SIGKILL) }
    }
}

extension MemoryCgroup {
    /// `cgroup.procs` opened for writing: a process that writes "0" to it joins the cgroup.
    public func procsFile() throws -> FileDescriptor {
        try FileDescriptor.open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
    }

    /// The processes in the cgroup (host pids).
    public var processes: [pid_t] { CgroupFiles.pids(path + "/cgroup.procs") }

    /// SIGKILL to every process in it.
    public func killAll() { CgroupFiles.killAll(path, version: version) }
}

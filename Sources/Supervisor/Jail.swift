import LinuxHost

/// How domains are confined, decided once when the supervisor starts: which layers the kernel
/// grants, which the operator waived with an `--insecure-…` option, and the ids domains run as.
struct JailSettings: Codable {
    enum Layer: String, CaseIterable, Sendable, Codable {
        /// mount, pid, net, ipc, uts, cgroup (and user, when not root) namespaces, the read-only
        /// root and the domain's own uid.
        case namespaces
        /// The domain's memory and pids cgroups.
        case cgroups

        var option: String { "--insecure-no-\(rawValue)" }
    }

    /// Layers the operator chose to run without (`PROCVISOR_INSECURE=no-cgroups,…` or
    /// `procvisord --insecure-no-cgroups`).
    var waived: Set<Layer>
    /// Layers the kernel refused at start, with what to do about it.
    var unavailable: [Layer: String] = [:]
    /// A user namespace maps the domain's uid onto the supervisor's (the supervisor is not root).
    var userNamespace: Bool
    /// Domains run as uid/gid `uidBase + domid`.
    var uidBase: UInt32

    static let otherNamespaces = Namespace.mount | Namespace.pid | Namespace.net | Namespace.ipc | Namespace.uts | Namespace.cgroup

    var namespaces: UInt { Self.otherNamespaces | (userNamespace ? Namespace.user : 0) }

    func uses(_ layer: Layer) -> Bool { !waived.contains(layer) && unavailable[layer] == nil }

    /// Why a domain cannot be started, if a layer is missing and was not waived.
    var refusal: String? {
        for layer in Layer.allCases where !waived.contains(layer) {
            if let why = unavailable[layer] {
                return "the domain jail's \(layer.rawValue) layer is unavailable: \(why); "
                    + "or start procvisord with \(layer.option) (PROCVISOR_INSECURE=no-\(layer.rawValue)) to run domains without it"
            }
        }
        return nil
    }

    /// Probes what the kernel allows this supervisor.
    static func probe(waived: Set<Layer>, uidBase: UInt32, cgroupName: String) -> JailSettings {
        let root = Process.effectiveUserID == 0
        var s = JailSettings(waived: waived, userNamespace: !root, uidBase: uidBase)
        if let e = Spawner.probeNamespaces(s.namespaces) {
            s.unavailable[.namespaces] = root
                ? "creating namespaces failed (\(e)): the supervisor lacks CAP_SYS_ADMIN (a container without it, or a seccomp profile)"
                : "creating a user namespace failed (\(e)): enable unprivileged user namespaces "
                + "(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, or on Ubuntu "
                + "kernel.apparmor_restrict_unprivileged_userns=0), or run procvisord as root"
        }
        do {
            let m = try MemoryCgroup(name: cgroupName, limitBytes: 1 << 30)
            m.remove()
            let p = try PidsCgroup(name: cgroupName, maxTasks: 16)
            p.remove()
        } catch {
            s.unavailable[.cgroups] = "cannot create the domains' memory and pids cgroups (\(error)): "
                + (root ? "mount the cgroup hierarchies writable (v1 memory and pids, or v2 with both controllers in cgroup.subtree_control)"
                     : "delegate a cgroup v2 subtree to this user with the memory and pids controllers enabled (systemd-run --user --scope -p Delegate=yes …)")
        }
        return s
    }

    /// For `xl info`'s xen_commandline and the hypervisor log.
    var summary: String {
        var parts = ["jail=" + (uses(.namespaces) ? (userNamespace ? "userns" : "on") : "off"),
                     "cgroups=" + (uses(.cgroups) ? "on" : "off")]
        parts += waived.sorted { $0.rawValue < $1.rawValue }.map { String($0.option.dropFirst(2)) }
        return parts.joined(separator: " ")
    }
}

/// The read-only root of a jailed kernel: the program, its loader and every library it loads, at
/// the paths the loader opens, and /dev/null. Computed once per kernel file (by device, inode,
/// size and mtime) and reused by every domain that runs it.
final class JailRoots {
    struct Plan {
        var files: [DynamicLoader.File]
        var directories: [String]
        /// Where the kernel is in the jail, the path to exec there: `/kernel/NAME`, whatever
        /// directory it came from on the host (a jail under /tmp or /home would otherwise show
        /// the guest those directories and their names).
        var program: String
    }

    /// The kernel's directory in every jail.
    static let kernelDirectory = "/kernel"

    private struct Stamp: Equatable { var dev: UInt64, ino: UInt64, size: Int64, mtime: Int, mtimeNs: Int }
    private var cache: [String: (stamp: Stamp, plan: Plan)] = [:]
    private let loader = DynamicLoader()

    private static func stamp(_ path: String) -> Stamp? {
        guard let st = try? FileStatus(path: path) else { return nil }
        return Stamp(dev: st.device, ino: st.inode, size: st.size, mtime: st.modificationSeconds, mtimeNs: st.modificationNanoseconds)
    }

    /// The root for `kernel` (a real path). `othersMustRead`: the domain runs as a uid of its own,
    /// so the files must be readable (and the kernel executable) by others.
    func plan(for kernel: String, othersMustRead: Bool) throws -> Plan {
        guard let stamp = Self.stamp(kernel) else { throw CreateError("kernel \(kernel): no such file") }
        if let hit = cache[kernel], hit.stamp == stamp { return hit.plan }
        let files: [DynamicLoader.File]
        do {
            files = try loader.resolve(program: kernel)
        } catch {
            throw CreateError("kernel \(kernel): cannot work out what it loads: \(error)")
        }
        if othersMustRead {
            for f in files {
                guard let st = try? FileStatus(path: f.source) else { throw CreateError("kernel \(kernel): \(f.source) vanished") }
                let need: FilePermissions = f.source == kernel ? .othersExecute : .othersRead
                if !st.permissions.contains(need) {
                    throw CreateError("kernel \(kernel): \(f.source) is not \(f.source == kernel ? "executable" : "readable") by other users "
                        + "(mode \(String(st.permissions.rawValue, radix: 8))); domains run as an unprivileged uid of their own")
                }
            }
        }
        // The loader expands no $ORIGIN of the executable in the jail (there is no /proc/self/exe),
        // so libraries found through it are already placed in a system directory: the program can
        // live anywhere.
        var placed = files
        let program = Self.kernelDirectory + "/" + String(kernel.split(separator: "/").last ?? "kernel")
        if let i = placed.firstIndex(where: { $0.source == kernel }) { placed[i].jailPath = program }
        let all = placed + [DynamicLoader.File(source: "/dev/null", jailPath: "/dev/null")]
        var dirs: Set<String> = []
        for f in all {
            var p = f.jailPath
            while let slash = p.lastIndex(of: "/"), slash != p.startIndex {
                p = String(p[..<slash])
                dirs.insert(p)
            }
        }
        let ordered = dirs.sorted { a, b in
            let da = a.split(separator: "/").count, db = b.split(separator: "/").count
            return da != db ? da < db : a < b
        }
        let plan = Plan(files: all, directories: ordered, program: program)
        cache[kernel] = (stamp, plan)
        return plan
    }
}

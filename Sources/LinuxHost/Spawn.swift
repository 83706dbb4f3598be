import CProcvisor
import Glibc

/// Starts a domain kernel as a confined child: see `pv_spawn` in CProcvisor for the exact steps.
public enum Spawner {
    public struct Limits: Sendable {
        public var resource: Int32
        public var soft: UInt64
        public var hard: UInt64
        public init(_ resource: Int32, _ soft: UInt64, _ hard: UInt64) {
            self.resource = resource
            self.soft = soft
            self.hard = hard
        }
    }

    /// The confinement a domain starts in, built by the child between clone and exec (see
    /// `pv_spawn` in CProcvisor for the exact order).
    public struct Jail: Sendable {
        /// CLONE_NEW* flags (CLONE_NEWUSER in user-namespace mode).
        public var namespaces: UInt
        /// A host directory the jail's tmpfs root is mounted on in the child's mount namespace.
        public var mountPoint: String?
        /// Directories of the root, parents first.
        public var directories: [String]
        /// Host files bind-mounted read-only into the root.
        public var files: [DynamicLoader.File]
        public var hostname: String?
        public var uid: UInt32
        public var gid: UInt32
        /// User-namespace mode: the ids `uid`/`gid` map to outside.
        public var outerUID: UInt32 = 0
        public var outerGID: UInt32 = 0
        /// Open `cgroup.procs` files the child joins before anything else.
        public var cgroups: [FileDescriptor] = []
        public var dropCapabilities = true

        public init(namespaces: UInt, mountPoint: String?, directories: [String], files: [DynamicLoader.File],
                    hostname: String?, uid: UInt32, gid: UInt32) {
            self.namespaces = namespaces
            self.mountPoint = mountPoint
            self.directories = directories
            self.files = files
            self.hostname = hostname
            self.uid = uid
            self.gid = gid
        }
    }

    public struct SpawnError: Error, CustomStringConvertible {
        public var path: String
        public var step: String
        public var errno: Errno
        public var description: String { "\(path): \(step) failed: \(errno)" }
    }

    /// Clones and execs `path` with exactly `fds` (source -> target), `limits`, NO_NEW_PRIVS and the
    /// `filter` BPF (nil: no filter), inside `jail` when given. Returns the child's pid.
    public static func spawn(path: String, argv: [String], env: [String], fds: [(FileDescriptor, Int32)],
                             limits: [Limits], filter: [UInt8]?, jail: Jail? = nil) throws -> pid_t {
        try spawn(path: path, argv: argv, env: env, fds: fds, limits: limits, filter: filter, jail: jail, listener: false).pid
    }

    /// As `spawn`; with `listener` the filter (whose default action is `.notify`) is installed with
    /// a notification listener, returned to the caller, who must answer what arrives on it.
    public static func spawn(path: String, argv: [String], env: [String], fds: [(FileDescriptor, Int32)],
                             limits: [Limits], filter: [UInt8]?, jail: Jail?, listener: Bool) throws -> (pid: pid_t, listener: FileDescriptor?) {
        var strings: [UnsafeMutablePointer<CChar>?] = []
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)
            strings.append(p)
            return p
        }
        defer { strings.forEach { free($0) } }
        let cArgv = argv.map(c) + [nil]
        let cEnv = env.map(c) + [nil]
        let fdMap = fds.map { pv_spawn_fd(source: $0.0.rawValue, target: $0.1) }
        let rl = limits.map { pv_spawn_rlimit(resource: $0.resource, soft: $0.soft, hard: $0.hard) }
        let dirs: [UnsafePointer<CChar>?] = (jail?.directories ?? []).map { UnsafePointer(c($0)) }
        let files = (jail?.files ?? []).map { pv_jail_file(source: c($0.source), target: c($0.jailPath)) }
        let cgroupFDs = (jail?.cgroups ?? []).map(\.rawValue)
        let mountPoint = jail?.mountPoint.map(c) ?? nil
        let hostname = jail?.hostname.map(c) ?? nil
        var step: Int32 = 0, detail: Int32 = -1, listenerFD: Int32 = -1
        let bpf = filter ?? []
        let pid = bpf.withUnsafeBytes { b in
            fdMap.withUnsafeBufferPointer { f in
                rl.withUnsafeBufferPointer { r in
                    dirs.withUnsafeBufferPointer { d in
                        files.withUnsafeBufferPointer { fl in
                            cgroupFDs.withUnsafeBufferPointer { cg in
                                var spec = pv_jail()
                                let use = jail.map { j -> pv_jail in
                                    spec.clone_flags = UInt(j.namespaces)
                                    spec.mount_point = UnsafePointer(mountPoint)
                                    spec.dirs = d.baseAddress
                                    spec.ndirs = Int32(d.count)
                                    spec.files = fl.baseAddress
                                    spec.nfiles = Int32(fl.count)
                                    spec.hostname = UnsafePointer(hostname)
                                    spec.uid = j.uid
                                    spec.gid = j.gid
                                    spec.outer_uid = j.outerUID
                                    spec.outer_gid = j.outerGID
                                    spec.cgroup_fds = cg.baseAddress
                                    spec.ncgroup_fds = Int32(cg.count)
                                    spec.drop_caps = j.dropCapabilities ? 1 : 0
                                    return spec
                                }
                                return withUnsafePointer(to: use ?? spec) { jp in
                                    pv_spawn(path, cArgv, cEnv, f.baseAddress, Int32(f.count), r.baseAddress, Int32(r.count),
                                             bpf.isEmpty ? nil : b.baseAddress, b.count, SeccompPolicy.ownPidPlaceholder,
                                             use == nil ? nil : jp, listener ? 1 : 0, &listenerFD, &step, &detail)
                                }
                            }
                        }
                    }
                }
            }
        }
        if pid < 0 {
            throw SpawnError(path: path, step: describe(step: step, detail: Int(detail), jail: jail), errno: Errno(rawValue: -pid))
        }
        return (pid, listenerFD >= 0 ? FileDescriptor(rawValue: listenerFD) : nil)
    }

    /// The failed step in words, naming the file, directory, cgroup or limit involved.
    static func describe(step: Int32, detail: Int, jail: Jail?) -> String {
        switch Int(step) {
        case Int(PV_STEP_FORK): return "clone"
        case Int(PV_STEP_FDS): return "descriptor setup"
        case Int(PV_STEP_RLIMIT): return "setrlimit(\(detail))"
        case Int(PV_STEP_NNP): return "PR_SET_NO_NEW_PRIVS"
        case Int(PV_STEP_SECCOMP): return "installing the bounding seccomp filter"
        case Int(PV_STEP_EXEC): return "execve"
        case Int(PV_STEP_USERNS): return "writing the user namespace's uid/gid maps"
        case Int(PV_STEP_CGROUP): return "joining the domain's cgroup" + (detail >= 0 ? " #\(detail)" : "")
        case Int(PV_STEP_MOUNT):
            if let j = jail, detail >= 1_000_000, detail - 1_000_000 < j.directories.count {
                return "creating the jail directory \(j.directories[detail - 1_000_000])"
            }
            if let j = jail, detail >= 0, detail < j.files.count {
                return "bind-mounting \(j.files[detail].source) at \(j.files[detail].jailPath) in the jail"
            }
            return "mounting the jail's root"
        case Int(PV_STEP_PIVOT): return "pivot_root into the jail (and making it read-only)"
        case Int(PV_STEP_HOSTNAME): return "setting the jail's host name"
        case Int(PV_STEP_CREDS): return "changing to the domain's uid/gid"
        case Int(PV_STEP_CAPS): return "dropping capabilities" + (detail >= 0 ? " (capability \(detail))" : "")
        case Int(PV_STEP_STALLED): return "setting up the jail (the child stalled before exec and was killed)"
        default: return "spawn"
        }
    }

    /// Plain fork+exec with inherited stdio and no confinement: the peer in benchmarks.
    public static func spawnPlain(path: String, argv: [String], env: [String]) throws -> pid_t {
        try spawn(path: path, argv: argv, env: env,
                  fds: [(.standardInput, 0), (.standardOutput, 1), (.standardError, 2)], limits: [], filter: nil)
    }
}

extension Spawner {
    /// Whether a child can be created in the namespaces `flags`; the errno when the kernel refuses.
    public static func probeNamespaces(_ flags: UInt) -> Errno? {
        let rc = pv_probe_clone(flags)
        return rc < 0 ? Errno(rawValue: -rc) : nil
    }
}

/// clone(2) namespace flags, for `Spawner.Jail.namespaces`.
public enum Namespace {
    public static let mount = UInt(CLONE_NEWNS)
    public static let pid = UInt(CLONE_NEWPID)
    public static let net = UInt(CLONE_NEWNET)
    public static let ipc = UInt(CLONE_NEWIPC)
    public static let uts = UInt(CLONE_NEWUTS)
    public static let cgroup = UInt(CLONE_NEWCGROUP)
    public static let user = UInt(CLONE_NEWUSER)
}

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

    public struct SpawnError: Error, CustomStringConvertible {
        public var path: String
        public var step: String
        public var errno: Errno
        public var description: String { "\(path): \(step) failed: \(errno)" }
    }

    /// Forks and execs `path` with exactly `fds` (source -> target), `limits`, NO_NEW_PRIVS and the
    /// `filter` BPF (nil: no filter). Returns the child's pid.
    public static func spawn(path: String, argv: [String], env: [String], fds: [(FileDescriptor, Int32)],
                             limits: [Limits], filter: [UInt8]?) throws -> pid_t {
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        let fdMap = fds.map { pv_spawn_fd(source: $0.0.rawValue, target: $0.1) }
        let rl = limits.map { pv_spawn_rlimit(resource: $0.resource, soft: $0.soft, hard: $0.hard) }
        var step: Int32 = 0
        let bpf = filter ?? []
        let pid = bpf.withUnsafeBytes { b in
            fdMap.withUnsafeBufferPointer { f in
                rl.withUnsafeBufferPointer { r in
                    pv_spawn(path, cArgv, cEnv, f.baseAddress, Int32(f.count), r.baseAddress, Int32(r.count),
                             bpf.isEmpty ? nil : b.baseAddress, b.count, SeccompPolicy.ownPidPlaceholder, &step)
                }
            }
        }
        if pid < 0 {
            let names = [Int32(PV_STEP_FORK): "fork", Int32(PV_STEP_FDS): "descriptor setup",
                         Int32(PV_STEP_RLIMIT): "setrlimit", Int32(PV_STEP_NNP): "PR_SET_NO_NEW_PRIVS",
                         Int32(PV_STEP_SECCOMP): "installing the baseline seccomp filter", Int32(PV_STEP_EXEC): "execve"]
            throw SpawnError(path: path, step: names[step] ?? "spawn", errno: Errno(rawValue: -pid))
        }
        return pid
    }

    /// Plain fork+exec with inherited stdio and no confinement: the peer in benchmarks.
    public static func spawnPlain(path: String, argv: [String], env: [String]) throws -> pid_t {
        try spawn(path: path, argv: argv, env: env,
                  fds: [(.standardInput, 0), (.standardOutput, 1), (.standardError, 2)], limits: [], filter: nil)
    }
}

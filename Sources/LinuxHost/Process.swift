import CProcvisor
import Glibc

/// Process-level operations for daemons.
public enum Process {
    /// fork(2). Only for a process that has not started threads yet (daemonising at start-up).
    public static func fork() throws -> pid_t {
        pid_t(try negErrno("fork") { pv_fork() })
    }

    /// Takes an exclusive advisory lock on `path` for the life of the process; false if another
    /// process holds it. The descriptor is deliberately kept open.
    public static func lockExclusive(_ path: String) throws -> (held: Bool, fd: FileDescriptor) {
        let fd = try FileDescriptor.open(path, O_RDWR | O_CREAT, mode: 0o600)
        let rc = pv_try_lock(fd.rawValue)
        if rc == 0 { return (true, fd) }
        fd.close()
        if rc == -EWOULDBLOCK { return (false, fd) }
        throw SystemError("flock", path, errno: Errno(rawValue: -rc))
    }

    public static var pid: pid_t { getpid() }

    /// The real user id (getuid(2)).
    public static var userID: uid_t { getuid() }
    /// The effective user id (geteuid(2)): 0 when running as root.
    public static var effectiveUserID: uid_t { geteuid() }
    /// The effective group id (getegid(2)).
    public static var effectiveGroupID: gid_t { getegid() }

    /// Ends the process with `code` (exit(3): stdio buffers are flushed and atexit handlers run,
    /// unlike _exit(2)).
    public static func exit(_ code: Int32) -> Never { Glibc.exit(code) }

    /// Flushes C stdio's standard output (fflush(stdout)): what Swift's `print` wrote but still
    /// holds in its buffer, before writing the same stream some other way (write(2), a hypercall).
    public static func flushStandardOutput() { _ = fflush(stdout) }

    /// Sleeps until killed (pause(2) in a loop: a handled signal only wakes it to sleep again).
    public static func waitForever() -> Never {
        while true { _ = pause() }
    }

    /// The value of the environment variable `name` (getenv(3)); nil when it is not set.
    public static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// The current working directory (getcwd(3)); nil when it cannot be had (removed, or a path
    /// longer than 4095 bytes).
    public static var currentDirectory: String? {
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return nil }
        return String(cString: buf)
    }

    /// Detaches from the terminal: new session, stdio on /dev/null.
    public static func detachStdio() {
        _ = setsid()
        let null = Glibc.open("/dev/null", O_RDWR)
        if null >= 0 {
            dup2(null, 0)
            dup2(null, 1)
            dup2(null, 2)
            if null > 2 { Glibc.close(null) }
        }
    }

    public static func setName(_ name: String) { _ = pv_set_name(name) }

    /// execve(2) of `path` in place of this process, keeping its pid, its children and every
    /// descriptor not marked close-on-exec. Returns only by throwing (the exec failed, this
    /// process goes on unchanged).
    public static func replace(with path: String, argv: [String], env: [String: String]) throws -> Never {
        let args = argv.map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            args.forEach { free($0) }
            envp.forEach { free($0) }
        }
        execve(path, args, envp)
        throw SystemError("execve", path, errno: Errno.current)
    }

    /// Path of the running executable.
    public static func executablePath() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        buf[n] = 0
        return String(cString: buf)
    }

    public static func environment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return env
    }
}

/// glibc allocator settings a sandboxed process needs.
public enum Malloc {
    /// Makes every thread allocate from the main arena. A thread arena's heap is shrunk only
    /// after glibc opens /proc/sys/vm/overcommit_memory, which a sandbox without `openat` forbids.
    public static func useSingleArena() {
        _ = pv_malloc_single_arena()
    }
}

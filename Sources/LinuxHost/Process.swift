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

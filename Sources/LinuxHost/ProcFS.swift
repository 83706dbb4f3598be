import CProcvisor
import Glibc

/// Facts about processes and the host read from /proc.
public enum ProcFS {
    /// Seccomp mode (2 = filter) and number of filters of `pid`, from /proc/PID/status.
    public static func seccomp(of pid: pid_t) throws -> (mode: Int, filters: Int) {
        var mode: Int32 = -1, filters: Int32 = -1
        try negErrno("read /proc/\(pid)/status") { pv_proc_seccomp_status(pid, &mode, &filters) }
        return (Int(mode), Int(filters))
    }

    /// CPU time consumed by all threads of `pid`, in nanoseconds (utime + stime from /proc/PID/stat).
    public static func cpuTimeNs(of pid: pid_t) -> UInt64 { stat(of: pid)?.cpuTimeNs ?? 0 }

    /// The state letter and utime + stime (clock ticks) of a /proc `stat` file. Read into a
    /// buffer on the stack and parsed as bytes: `xl list` reads one per thread of every domain.
    /// The comm, in parentheses, may hold anything: the fields start after its last ')'; index
    /// 0 is the state (field 3 of proc(5)), 11 utime (field 14), 12 stime (field 15).
    static func readStat(_ path: String) -> (state: UInt8, ticks: UInt64)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1024) { buf -> (state: UInt8, ticks: UInt64)? in
            let n = read(fd, buf.baseAddress, buf.count)
            guard n > 0 else { return nil }
            var i = n - 1
            while i >= 0 && buf[i] != UInt8(ascii: ")") { i -= 1 }
            i += 2
            guard i > 1, i < n else { return nil }
            let state = buf[i]
            var field = 0, value: UInt64 = 0, utime: UInt64 = 0
            for j in i..<n {
                let c = buf[j]
                if c == UInt8(ascii: " ") || c == UInt8(ascii: "\n") {
                    if field == 11 { utime = value }
                    if field == 12 { return (state, utime &+ value) }
                    field += 1
                    value = 0
                } else if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
                    value = value &* 10 &+ UInt64(c - UInt8(ascii: "0"))
                }
            }
            return (state, 0)
        }
    }

    /// The state letter of `pid`'s main thread and the CPU time of all its threads (ns), from
    /// one read of /proc/PID/stat.
    public static func stat(of pid: pid_t) -> (state: Character, cpuTimeNs: UInt64)? {
        guard let s = readStat("/proc/\(pid)/stat") else { return nil }
        let hz = UInt64(sysconf(Int32(_SC_CLK_TCK)))
        return (Character(Unicode.Scalar(s.state)), s.ticks * 1_000_000_000 / max(hz, 1))
    }

    /// The scheduler state letter of `pid` (R, S, D, T, Z …).
    public static func state(of pid: pid_t) -> Character? {
        readStat("/proc/\(pid)/stat").map { Character(Unicode.Scalar($0.state)) }
    }

    /// The threads of `pid` that are currently runnable.
    public static func threadStates(of pid: pid_t) -> [Character] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var out: [Character] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let tid = Int32(name), let stat = readStat("/proc/\(pid)/task/\(tid)/stat") else { continue }
            out.append(Character(Unicode.Scalar(stat.state)))
        }
        return out
    }

    /// Resident set size of `pid` in KiB.
    public static func residentKB(of pid: pid_t) -> UInt64 {
        guard let text = try? FileIO.readString("/proc/\(pid)/statm") else { return 0 }
        let parts = text.split(separator: " ")
        guard parts.count > 1, let pages = UInt64(parts[1]) else { return 0 }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE))) / 1024
    }

    /// Open descriptors of `pid` (count of /proc/PID/fd entries).
    public static func openFDCount(of pid: pid_t) -> Int {
        guard let dir = opendir("/proc/\(pid)/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while let ent = readdir(dir) {
            if ent.pointee.d_name.0 != UInt8(ascii: ".") { n += 1 }
        }
        return n
    }

    /// Children of `pid` (from /proc/PID/task/*/children).
    public static func children(of pid: pid_t) -> [pid_t] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var out: [pid_t] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int32(name) != nil, let text = try? FileIO.readString("/proc/\(pid)/task/\(name)/children") else { continue }
            out += text.split(separator: " ").compactMap { pid_t($0) }
        }
        return out
    }

    /// Every process whose command name (/proc/PID/comm) is `command` and whose real user is
    /// `uid` (so its /proc entries can be read by that user).
    public static func processes(named command: String, uid: UInt32) -> [pid_t] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var out: [pid_t] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = pid_t(name),
                  (try? FileIO.readString("/proc/\(pid)/comm"))?.split(separator: "\n").first.map(String.init) == command,
                  let status = try? FileIO.readString("/proc/\(pid)/status"),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }),
                  line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().first == Substring(String(uid)) else { continue }
            out.append(pid)
        }
        return out.sorted()
    }

    /// The paths process `pid`'s descriptors name (/proc/PID/fd links: files by path, others as
    /// `socket:[N]`, `anon_inode:…`); [] when they cannot be read.
    public static func openFilePaths(of pid: pid_t) -> [String] {
        guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        var buf = [CChar](repeating: 0, count: 4097)
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int32(name) != nil else { continue }
            let n = readlink("/proc/\(pid)/fd/\(name)", &buf, buf.count - 1)
            if n > 0 { out.append(String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
        }
        return out
    }

    /// The first child of `pid` whose argv[0] is `program` (a domain process is named by its
    /// kernel's path), if any. With `engaged`, only one whose runtime has narrowed the
    /// supervisor's seccomp bound with its own filter (two filters or more): a domain's running
    /// incarnation, not a driver domain's standby, which waits in its bootstrap under the bound
    /// alone.
    public static func child(of pid: pid_t, running program: String, engaged: Bool = false) -> pid_t? {
        children(of: pid).first { child in
            guard let argv = try? FileIO.read("/proc/\(child)/cmdline"),
                  argv.split(separator: 0).first.map({ String(decoding: $0, as: UTF8.self) }) == program else { return false }
            return !engaged || ((try? seccomp(of: child))?.filters ?? 0) >= 2
        }
    }

    /// Mappings plus descriptors of process `pid` per memfd name, from one pass over
    /// /proc/PID/maps and /proc/PID/fd. Works on the raw bytes: it runs on every grant unmap.
    public static func memfdReferences(of pid: pid_t) -> [String: Int] {
        var counts: [String: Int] = [:]
        let prefix = Array("/memfd:".utf8), suffix = Array(" (deleted)".utf8)
        /// Counts `bytes[start..<end]` when it is "/memfd:NAME (deleted)".
        func note(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) {
            let n = end - start
            guard n > prefix.count + suffix.count else { return }
            for i in 0..<prefix.count where bytes[start + i] != prefix[i] { return }
            for i in 0..<suffix.count where bytes[end - suffix.count + i] != suffix[i] { return }
            let name = String(decoding: UnsafeBufferPointer(rebasing: bytes[(start + prefix.count)..<(end - suffix.count)]), as: UTF8.self)
            counts[name, default: 0] += 1
        }
        if let maps = try? FileIO.read("/proc/\(pid)/maps") {
            maps.withUnsafeBufferPointer { b in
                var lineStart = 0
                while lineStart < b.count {
                    var lineEnd = lineStart
                    var slash = -1
                    while lineEnd < b.count && b[lineEnd] != 0x0A {
                        if slash < 0 && b[lineEnd] == 0x2F { slash = lineEnd }
                        lineEnd += 1
                    }
                    if slash >= 0 { note(b, slash, lineEnd) }
                    lineStart = lineEnd + 1
                }
            }
        }
        if let dir = opendir("/proc/\(pid)/fd") {
            defer { closedir(dir) }
            var buf = [UInt8](repeating: 0, count: 256)
            while let ent = readdir(dir) {
                let isNumber = withUnsafeBytes(of: ent.pointee.d_name) { name -> Bool in
                    guard let first = name.first, first >= 0x30 && first <= 0x39 else { return false }
                    return true
                }
                guard isNumber else { continue }
                let len = withUnsafeBytes(of: ent.pointee.d_name) { name -> Int in
                    let fdName = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
                    return buf.withUnsafeMutableBufferPointer { out in
                        out.baseAddress!.withMemoryRebound(to: CChar.self, capacity: out.count) {
                            readlink("/proc/\(pid)/fd/\(fdName)", $0, out.count)
                        }
                    }
                }
                if len > 0 { buf.withUnsafeBufferPointer { note($0, 0, len) } }
            }
        }
        return counts
    }

    /// A field of /proc/meminfo in KiB ("MemTotal", "MemAvailable").
    public static func meminfoKB(_ key: String) -> UInt64? {
        guard let text = try? FileIO.readString("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
        }
        return nil
    }

    /// The host's CPU model and MHz from /proc/cpuinfo (first processor).
    public static func cpuMHz() -> Double {
        guard let text = try? FileIO.readString("/proc/cpuinfo") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("cpu MHz") {
            if let v = line.split(separator: ":").last { return Double(v.trimmingCharacters(in: " \t")) ?? 0 }
        }
        return 0
    }

    /// Whether `pid` exists (and is not a zombie we already reaped).
    public static func isAlive(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}

/// A monotonic clock for deadlines and benchmarks.
public enum MonotonicClock {
    @inline(__always) public static func nanoseconds() -> UInt64 { pv_monotonic_ns() }
    public static func milliseconds() -> UInt64 { pv_monotonic_ns() / 1_000_000 }
}

/// Facts about the host machine.
public enum Host {
    /// CPUs online now (sysconf(_SC_NPROCESSORS_ONLN)).
    public static var onlineCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// The kernel's names for itself (uname(2)): host name, release ("6.1.0"), version (build
    /// string) and machine ("x86_64").
    public static func kernelIdentity() -> (nodeName: String, release: String, version: String, machine: String) {
        var u = utsname()
        uname(&u)
        func field<T>(_ v: T) -> String {
            withUnsafeBytes(of: v) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return (field(u.nodename), field(u.release), field(u.version), field(u.machine))
    }
}

/// Kernel randomness (getrandom(2)).
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = out.withUnsafeMutableBytes { getrandom($0.baseAddress! + filled, count - filled, 0) }
            if n > 0 { filled += n }
        }
        return out
    }
}

import CProcvisor
import Glibc

/// A raw file descriptor. A plain value: whoever opened it closes it (see `close()`).
public struct FileDescriptor: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let standardInput = FileDescriptor(rawValue: 0)
    public static let standardOutput = FileDescriptor(rawValue: 1)
    public static let standardError = FileDescriptor(rawValue: 2)

    public var description: String { "fd \(rawValue)" }

    /// The corresponding C function is `close`. EINTR is not retried (the descriptor is gone on Linux).
    public func close() {
        _ = Glibc.close(rawValue)
    }

    /// Reads up to `count` bytes. Returns [] at end of file. Throws `.wouldBlock` on a non-blocking
    /// descriptor with nothing to read. The corresponding C function is `read`.
    public func read(upTo count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        let n = try buf.withUnsafeMutableBytes { p in
            try retrying("read", "\(self)") { Glibc.read(rawValue, p.baseAddress, count) }
        }
        buf.removeSubrange(n...)
        return buf
    }

    /// Reads into a caller buffer; returns the byte count (0 at end of file).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try retrying("read", "\(self)") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes some of `bytes`; returns how many were written. The corresponding C function is `write`.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        try retrying("write", "\(self)") { Glibc.write(rawValue, bytes.baseAddress, bytes.count) }
    }

    /// Writes all of `bytes`, looping over short writes (blocking descriptors only).
    public func writeAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = try bytes.withUnsafeBytes { p in
                try write(UnsafeRawBufferPointer(rebasing: p[offset...]))
            }
            offset += n
        }
    }

    public func writeAll(_ string: String) throws { try writeAll(Array(string.utf8)) }

    public func setNonBlocking(_ on: Bool = true) throws {
        let flags = try retrying("fcntl(F_GETFL)", "\(self)") { fcntl(rawValue, F_GETFL) }
        let new = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        try retrying("fcntl(F_SETFL)", "\(self)") { fcntl(rawValue, F_SETFL, new) }
    }

    /// `O_DIRECT` (its value differs between architectures; Glibc does not export it to Swift).
    public static let directIOFlag: Int32 = PV_O_DIRECT

    /// Turns direct I/O (`O_DIRECT`) on or off; throws when the file system refuses it.
    public func setDirectIO(_ on: Bool = true) throws {
        let flags = try retrying("fcntl(F_GETFL)", "\(self)") { fcntl(rawValue, F_GETFL) }
        let new = on ? flags | Self.directIOFlag : flags & ~Self.directIOFlag
        try retrying("fcntl(F_SETFL)", "\(self)") { fcntl(rawValue, F_SETFL, new) }
    }

    public func setCloseOnExec(_ on: Bool = true) throws {
        try retrying("fcntl(F_SETFD)", "\(self)") { fcntl(rawValue, F_SETFD, on ? FD_CLOEXEC : 0) }
    }

    /// Opens a path. The corresponding C function is `open`.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> FileDescriptor {
        let fd = try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(rawValue: fd)
    }

    /// An eventfd (close-on-exec). The corresponding C function is `eventfd`.
    public static func eventfd(initialValue: UInt32 = 0) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try negErrno("eventfd") { pv_eventfd(initialValue) }))
    }

    /// A pipe; both ends close-on-exec.
    public static func pipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [0, 0]
        try negErrno("pipe2") { pv_pipe_cloexec(&fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }
}

/// Whole-file helpers for small files (config, /proc).
public enum FileIO {
    /// Reads a whole file (up to `limit` bytes).
    public static func read(_ path: String, limit: Int = 16 << 20) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, O_RDONLY)
        defer { fd.close() }
        var out: [UInt8] = []
        while out.count < limit {
            let chunk = try fd.read(upTo: min(65536, limit - out.count))
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }

    public static func readString(_ path: String) throws -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Writes a file atomically enough for pid files: truncate and write.
    public static func write(_ path: String, _ contents: String, mode: mode_t = 0o644) throws {
        let fd = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        defer { fd.close() }
        try fd.writeAll(contents)
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The names in a directory (without "." and ".."); empty when it cannot be read.
    public static func names(in dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let ent = readdir(d) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    public static func isExecutable(_ path: String) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        return (st.st_mode & S_IFMT) == S_IFREG && access(path, X_OK) == 0
    }

    /// mkdir -p with the given mode for created directories.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 {
                let e = Errno.current
                if e != .exists { throw SystemError("mkdir", current, errno: e) }
            }
        }
    }

    public static func unlink(_ path: String) { _ = Glibc.unlink(path) }
}

import CProcvisor
import Glibc

/// One buffer of a vectored transfer (`struct iovec`: `iov_base`, `iov_len`), for
/// `FileDescriptor.read(vector:count:at:)` and `write(vector:count:at:)`.
public typealias IOVector = iovec

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

    /// Writes `message` in one write(2), ignoring errors and short writes: for diagnostics on
    /// standard error from places that cannot throw (and must not allocate an array to do it).
    public func writeUnchecked(_ message: String) {
        var message = message
        message.withUTF8 { p in _ = Glibc.write(rawValue, p.baseAddress, p.count) }
    }

    /// Waits until no direct I/O is in flight on the file, whoever submitted it (a killed
    /// process's io_uring included): fallocate(FALLOC_FL_KEEP_SIZE) of its first `length` bytes,
    /// which ext4 and XFS begin by waiting for every direct I/O in flight on the inode
    /// (inode_dio_wait), and which changes nothing on a file whose first bytes are allocated.
    /// Throws where the file system has no fallocate (EOPNOTSUPP: tmpfs before 3.5, some FUSE).
    public func waitForDirectIO(length: Int64 = 4096) throws {
        _ = try retrying("fallocate(KEEP_SIZE)", "\(self)") { pv_fallocate_keep_size(rawValue, 0, max(1, length)) }
    }

    // MARK: positional I/O (the file offset is neither used nor moved)

    /// Reads up to `buffer.count` bytes at byte `offset` of the file (pread(2)); returns the byte
    /// count, 0 at or past the end of the file. EINTR is retried. Under O_DIRECT the buffer, the
    /// count and the offset must be aligned (to the logical block size) or it fails with EINVAL.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        try retrying("pread", "\(self) at \(offset)") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// A second descriptor of the same open file (fcntl F_DUPFD_CLOEXEC).
    public func duplicate() throws -> FileDescriptor {
        let fd = fcntl(rawValue, F_DUPFD_CLOEXEC, 0)
        if fd < 0 { throw SystemError("fcntl(F_DUPFD_CLOEXEC)", "\(self)", errno: Errno.current) }
        return FileDescriptor(rawValue: fd)
    }

    /// Writes up to `bytes.count` bytes at byte `offset` of the file (pwrite(2)); returns how many
    /// were written. EINTR is retried. (On a descriptor opened O_APPEND Linux writes at the end
    /// whatever the offset.)
    @discardableResult
    public func write(from bytes: UnsafeRawBufferPointer, at offset: Int64) throws -> Int {
        try retrying("pwrite", "\(self) at \(offset)") { Glibc.pwrite(rawValue, bytes.baseAddress, bytes.count, off_t(offset)) }
    }

    /// Reads into the `count` buffers at `vector` in order, from byte `offset` (preadv(2)): the
    /// byte count (0 at the end of the file; a short count is not an error), or the errno. Nothing
    /// is retried, EINTR included, so a caller looping over short transfers keeps its own budget.
    /// At most `IOV_MAX` (1024) buffers per call.
    @inlinable @inline(__always)
    public func read(vector: UnsafePointer<IOVector>, count: Int, at offset: Int64) -> Result<Int, Errno> {
        let n = Glibc.preadv(rawValue, vector, Int32(truncatingIfNeeded: count), off_t(offset))
        return n >= 0 ? .success(n) : .failure(.current)
    }

    /// Writes the `count` buffers at `vector` in order, from byte `offset` (pwritev(2)): the byte
    /// count (short counts happen), or the errno. Nothing is retried, as `read(vector:count:at:)`.
    @inlinable @inline(__always)
    public func write(vector: UnsafePointer<IOVector>, count: Int, at offset: Int64) -> Result<Int, Errno> {
        let n = Glibc.pwritev(rawValue, vector, Int32(truncatingIfNeeded: count), off_t(offset))
        return n >= 0 ? .success(n) : .failure(.current)
    }

    /// Writes the `count` buffers at `vector` in order at the file offset (writev(2)), for pipes
    /// and sockets: the byte count (short counts happen), or the errno; nothing is retried.
    @inlinable @inline(__always)
    public func write(vector: UnsafePointer<IOVector>, count: Int) -> Result<Int, Errno> {
        let n = Glibc.writev(rawValue, vector, Int32(truncatingIfNeeded: count))
        return n >= 0 ? .success(n) : .failure(.current)
    }

    /// The byte ranges of the file that hold data (lseek(2) SEEK_DATA / SEEK_HOLE), within
    /// `0 ..< size`: what is outside them is a hole that reads as zero. A file system that does
    /// not track holes reports the whole file as data.
    public func dataExtents(size: Int64) throws -> [Range<Int64>] {
        var out: [Range<Int64>] = []
        var at: Int64 = 0
        while at < size {
            let start = lseek(rawValue, off_t(at), 3 /* SEEK_DATA */)
            if start < 0 {
                if Errno.current == .noSuchDeviceOrAddress { break }  // ENXIO: no data past `at`
                throw SystemError("lseek(SEEK_DATA)", "\(self) at \(at)", errno: .current)
            }
            let end = lseek(rawValue, start, 4 /* SEEK_HOLE */)
            if end < 0 { throw SystemError("lseek(SEEK_HOLE)", "\(self) at \(start)", errno: .current) }
            out.append(Int64(start)..<min(Int64(end), size))
            at = Int64(end)
        }
        return out
    }

    /// Grows a pipe's buffer to `bytes` (fcntl F_SETPIPE_SZ; the kernel rounds up to a power of two
    /// pages and caps unprivileged callers at /proc/sys/fs/pipe-max-size). Returns the size it has,
    /// nil when the descriptor is not a pipe or the kernel refused.
    @discardableResult
    public func setPipeSize(_ bytes: Int) -> Int? {
        let r = fcntl(rawValue, 1031 /* F_SETPIPE_SZ */, Int32(bytes))
        return r >= 0 ? Int(r) : nil
    }

    /// Reads into the `count` buffers at `vector` in order, at the file offset (readv(2)): the
    /// byte count (0 at the end), or the errno; nothing is retried.
    @inlinable @inline(__always)
    public func read(vector: UnsafePointer<IOVector>, count: Int) -> Result<Int, Errno> {
        let n = Glibc.readv(rawValue, vector, Int32(truncatingIfNeeded: count))
        return n >= 0 ? .success(n) : .failure(.current)
    }

    /// Writes the file's data (and the metadata needed to read it back, such as its size) to
    /// the device (fdatasync(2)). EINTR is retried; the errno otherwise (EIO: a write-back failed).
    public func syncData() -> Result<Void, Errno> {
        while fdatasync(rawValue) != 0 {
            let e = Errno.current
            if e != .interrupted { return .failure(e) }
        }
        return .success(())
    }

    /// Moves the file offset to the end and returns it (lseek(fd, 0, SEEK_END)): a block
    /// device's size in bytes, which fstat reports as 0.
    public func seekToEnd() throws -> Int64 {
        Int64(try retrying("lseek(SEEK_END)", "\(self)") { lseek(rawValue, 0, SEEK_END) })
    }

    // MARK: sockets

    /// Receives up to `buffer.count` bytes from a socket (recv(2)): the byte count, 0 at the end of
    /// a stream (the peer shut down or closed), or the errno. With `dontWait` (MSG_DONTWAIT) an
    /// empty socket gives `.wouldBlock` (EAGAIN) whether or not the descriptor is non-blocking.
    /// EINTR is retried.
    @inlinable
    public func receive(into buffer: UnsafeMutableRawBufferPointer, dontWait: Bool = false) -> Result<Int, Errno> {
        while true {
            let n = Glibc.recv(rawValue, buffer.baseAddress, buffer.count, dontWait ? Int32(MSG_DONTWAIT) : 0)
            if n >= 0 { return .success(n) }
            let e = Errno.current
            if e != .interrupted { return .failure(e) }
        }
    }

    /// Sends up to `bytes.count` bytes on a connected socket (send(2) with MSG_NOSIGNAL: a peer
    /// that has gone gives `.brokenPipe` (EPIPE), never SIGPIPE): the byte count (possibly short),
    /// or the errno; `.wouldBlock` when `dontWait` (MSG_DONTWAIT) and the socket is full. EINTR is
    /// retried.
    @inlinable
    public func send(_ bytes: UnsafeRawBufferPointer, dontWait: Bool = false) -> Result<Int, Errno> {
        let flags = Int32(MSG_NOSIGNAL) | (dontWait ? Int32(MSG_DONTWAIT) : 0)
        while true {
            let n = Glibc.send(rawValue, bytes.baseAddress, bytes.count, flags)
            if n >= 0 { return .success(n) }
            let e = Errno.current
            if e != .interrupted { return .failure(e) }
        }
    }

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

    /// How `open` opens a file (`O_*`). Exactly one of `readOnly` (whose value is 0: it is what
    /// no access flag means), `writeOnly` and `readWrite`; `open` always adds close-on-exec.
    public struct OpenFlags: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let readOnly = OpenFlags(rawValue: O_RDONLY)
        public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
        public static let readWrite = OpenFlags(rawValue: O_RDWR)
        public static let create = OpenFlags(rawValue: O_CREAT)
        /// With `create`: fail with EEXIST when the file is already there.
        public static let exclusive = OpenFlags(rawValue: O_EXCL)
        public static let truncate = OpenFlags(rawValue: O_TRUNC)
        /// Every write goes to the end of the file, whatever the offset.
        public static let append = OpenFlags(rawValue: O_APPEND)
        public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
        public static let closeOnExec = OpenFlags(rawValue: O_CLOEXEC)
        /// Fail (ELOOP) rather than follow a symbolic link in the last component.
        public static let noFollow = OpenFlags(rawValue: O_NOFOLLOW)
    }

    /// Opens a path (open(2), always close-on-exec); the error names the path.
    public static func open(_ path: String, _ flags: OpenFlags, mode: mode_t = 0o644) throws -> FileDescriptor {
        try open(path, flags.rawValue, mode: mode)
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
        guard let st = try? FileStatus(path: path) else { return false }
        return st.isRegular && access(path, X_OK) == 0
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

    /// rename(2): `to` is replaced if it exists.
    public static func rename(_ from: String, to: String) throws {
        if Glibc.rename(from, to) != 0 { throw SystemError("rename", "\(from) to \(to)", errno: Errno.current) }
    }
}

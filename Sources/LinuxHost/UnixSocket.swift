import CProcvisor
import Glibc

/// AF_UNIX sockets: the hypercall channel (SOCK_SEQPACKET pairs), the control socket (SOCK_STREAM),
/// and descriptor passing with SCM_RIGHTS.
public enum UnixSocket {
    public static let maxFDsPerMessage = 16

    /// Socket types (`SOCK_*`) for `pair(type:)` and `type(of:)`.
    public static let seqPacket = Int32(SOCK_SEQPACKET.rawValue)
    public static let stream = Int32(SOCK_STREAM.rawValue)
    public static let datagram = Int32(SOCK_DGRAM.rawValue)

    /// The type of the socket `fd` (getsockopt SO_TYPE: `seqPacket`, `stream`, `datagram`);
    /// ENOTSOCK when it is no socket, EBADF when it is not open.
    public static func type(of fd: FileDescriptor) throws -> Int32 {
        var type: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        try retrying("getsockopt(SO_TYPE)", "\(fd)") { getsockopt(fd.rawValue, SOL_SOCKET, SO_TYPE, &type, &len) }
        return type
    }

    /// A connected pair; both ends close-on-exec.
    public static func pair(type: Int32 = Int32(SOCK_SEQPACKET.rawValue)) throws -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [0, 0]
        try retrying("socketpair") { socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    private static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) throws -> T {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            throw SystemError("socket address", "\(path) is longer than \(capacity - 1) bytes", errno: Errno(rawValue: ENAMETOOLONG))
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        return try withUnsafePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try body(sa, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }

    /// Binds and listens on `path` (replacing a stale socket file) and sets its mode.
    public static func listen(path: String, mode: mode_t = 0o600, backlog: Int32 = 128) throws -> FileDescriptor {
        let raw = try retrying("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0) }
        let fd = FileDescriptor(rawValue: raw)
        do {
            FileIO.unlink(path)
            // Create the socket with no access for anyone else from the first instant.
            let old = umask(0o177)
            defer { umask(old) }
            _ = try withAddress(path) { sa, len in try retrying("bind", path) { bind(raw, sa, len) } }
            try retrying("chmod", path) { chmod(path, mode) }
            try retrying("listen", path) { Glibc.listen(raw, backlog) }
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// Connects a blocking SOCK_STREAM socket to `path`.
    public static func connect(path: String) throws -> FileDescriptor {
        let raw = try retrying("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            _ = try withAddress(path) { sa, len in try retrying("connect", path) { Glibc.connect(raw, sa, len) } }
        } catch {
            Glibc.close(raw)
            throw error
        }
        return FileDescriptor(rawValue: raw)
    }

    /// Accepts one connection (non-blocking, close-on-exec); nil when none is pending.
    public static func accept(_ listener: FileDescriptor) throws -> FileDescriptor? {
        while true {
            let raw = pv_accept_nonblocking(listener.rawValue)
            if raw >= 0 { return FileDescriptor(rawValue: raw) }
            let e = Errno(rawValue: -raw)
            if e == .interrupted { continue }
            if e == .wouldBlock { return nil }
            throw SystemError("accept4", "\(listener)", errno: e)
        }
    }

    /// Sends one message with descriptors attached. The corresponding C function is `sendmsg`.
    @discardableResult
    public static func send(_ sock: FileDescriptor, _ bytes: [UInt8], fds: [FileDescriptor] = [], nonBlocking: Bool = false) throws -> Int {
        let raw = fds.map(\.rawValue)
        return try bytes.withUnsafeBytes { p in
            try raw.withUnsafeBufferPointer { f in
                try negErrno("sendmsg", "\(sock)") {
                    pv_send_with_fds(sock.rawValue, p.baseAddress, p.count, f.baseAddress, Int32(raw.count), nonBlocking ? Int32(MSG_DONTWAIT) : 0)
                }
            }
        }
    }

    /// One received message: its bytes, the descriptors that came with it, and whether the kernel
    /// had to cut it (the sender sent more than `maxSize`).
    public struct Message {
        public var bytes: [UInt8]
        public var fds: [FileDescriptor]
        public var truncated: Bool
    }

    /// Receives one message; nil at end of stream (peer closed). Throws `.wouldBlock` when non-blocking and empty.
    public static func receive(_ sock: FileDescriptor, maxSize: Int, nonBlocking: Bool = false) throws -> Message? {
        var buf = [UInt8](repeating: 0, count: maxSize)
        var fds = [Int32](repeating: -1, count: maxFDsPerMessage)
        var nfds: Int32 = 0
        var truncated: Int32 = 0
        let n = try buf.withUnsafeMutableBytes { p in
            try negErrno("recvmsg", "\(sock)") {
                pv_recv_with_fds(sock.rawValue, p.baseAddress, p.count, &fds, Int32(maxFDsPerMessage), &nfds, &truncated,
                                 nonBlocking ? Int32(MSG_DONTWAIT) : 0)
            }
        }
        let received = fds.prefix(Int(nfds)).map { FileDescriptor(rawValue: $0) }
        if n == 0 && received.isEmpty && truncated == 0 { return nil }
        buf.removeSubrange(Int(n)...)
        return Message(bytes: buf, fds: received, truncated: truncated != 0)
    }

    /// The pid and uid of the process at the other end (SO_PEERCRED).
    public static func peer(_ sock: FileDescriptor) throws -> (pid: pid_t, uid: uid_t) {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        try negErrno("getsockopt(SO_PEERCRED)", "\(sock)") { pv_peer_cred(sock.rawValue, &pid, &uid, &gid) }
        return (pid, uid)
    }
}

import Glibc

/// Permission bits of a file mode (the low 12 bits of `st_mode`).
public struct FilePermissions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ownerRead = FilePermissions(rawValue: 0o400)
    public static let ownerWrite = FilePermissions(rawValue: 0o200)
    public static let ownerExecute = FilePermissions(rawValue: 0o100)
    public static let groupRead = FilePermissions(rawValue: 0o040)
    public static let groupWrite = FilePermissions(rawValue: 0o020)
    public static let groupExecute = FilePermissions(rawValue: 0o010)
    public static let othersRead = FilePermissions(rawValue: 0o004)
    public static let othersWrite = FilePermissions(rawValue: 0o002)
    public static let othersExecute = FilePermissions(rawValue: 0o001)
    public static let setUID = FilePermissions(rawValue: 0o4000)
    public static let setGID = FilePermissions(rawValue: 0o2000)
    public static let sticky = FilePermissions(rawValue: 0o1000)
}

/// What stat(2) tells about a file: by path (`init(path:)`, following symbolic links unless told
/// not to: lstat) or by descriptor (`init(_:)`, fstat). A value: it does not change with the file.
public struct FileStatus: Sendable, Hashable {
    /// Size in bytes (`st_size`). 0 for a block device: its size is found by seeking to its end.
    public var size: Int64
    /// Type and permission bits (`st_mode`).
    public var mode: UInt32
    /// The device holding the file and its inode number there: together they name the file.
    public var device: UInt64
    public var inode: UInt64
    /// Bytes actually allocated to it (`st_blocks` × 512, whatever the file system's block size).
    public var allocatedBytes: Int64
    /// Last modification (`st_mtim`), seconds and nanoseconds since the epoch.
    public var modificationSeconds: Int
    public var modificationNanoseconds: Int

    /// The status of `path`: stat(2), or lstat(2) (the link itself) when `followSymlinks` is false.
    /// The error names the path and carries the errno (ENOENT for a missing file).
    public init(path: String, followSymlinks: Bool = true) throws {
        var st = stat()
        let call = followSymlinks ? "stat" : "lstat"
        try retrying(call, path) { () -> Int32 in
            if followSymlinks { return stat(path, &st) }
            return lstat(path, &st)
        }
        self.init(st)
    }

    /// The status of the file `fd` refers to (fstat(2)).
    public init(_ fd: FileDescriptor) throws {
        var st = stat()
        try retrying("fstat", "\(fd)") { fstat(fd.rawValue, &st) }
        self.init(st)
    }

    init(_ st: stat) {
        size = Int64(st.st_size)
        mode = UInt32(st.st_mode)
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        allocatedBytes = Int64(st.st_blocks) * 512
        modificationSeconds = Int(st.st_mtim.tv_sec)
        modificationNanoseconds = Int(st.st_mtim.tv_nsec)
    }

    /// The permission bits (setuid, setgid, sticky and the nine rwx bits).
    public var permissions: FilePermissions { FilePermissions(rawValue: mode & 0o7777) }

    private var type: UInt32 { mode & UInt32(S_IFMT) }
    public var isRegular: Bool { type == UInt32(S_IFREG) }
    public var isDirectory: Bool { type == UInt32(S_IFDIR) }
    public var isBlockDevice: Bool { type == UInt32(S_IFBLK) }
    public var isCharacterDevice: Bool { type == UInt32(S_IFCHR) }
    /// Only ever true for `followSymlinks: false`.
    public var isSymbolicLink: Bool { type == UInt32(S_IFLNK) }
    public var isSocket: Bool { type == UInt32(S_IFSOCK) }
    public var isFIFO: Bool { type == UInt32(S_IFIFO) }
}

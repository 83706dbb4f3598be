import CProcvisor
import Glibc

/// The seals of a memfd (`F_SEAL_*`).
public struct MemFDSeals: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// No more seals can be added, by anyone holding any descriptor.
    public static let seal = MemFDSeals(rawValue: PV_F_SEAL_SEAL)
    public static let shrink = MemFDSeals(rawValue: PV_F_SEAL_SHRINK)
    public static let grow = MemFDSeals(rawValue: PV_F_SEAL_GROW)
    public static let write = MemFDSeals(rawValue: PV_F_SEAL_WRITE)
    /// No new writable mapping and no write(2), through any descriptor; mappings made before stay writable.
    public static let futureWrite = MemFDSeals(rawValue: PV_F_SEAL_FUTURE_WRITE)

    /// What every memfd handed to a domain carries. The size is fixed, so no holder can truncate
    /// it under a mapping (the only way a domain could make another process's access to shared
    /// memory raise SIGBUS: shmem faults beyond EOF are SIGBUS, holes within it read as zeros),
    /// nor grow it into memory nobody accounted for. `seal` keeps a domain from adding seals of
    /// its own (say `futureWrite` on a doorbell, which would stop every later peer mapping it).
    /// Hole punching (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE) stays possible: shmem refuses it only
    /// under `write` / `futureWrite`, and decrease_reservation needs it on RAM.
    public static let handedOut: MemFDSeals = [.shrink, .grow, .seal]
    /// For memory domains may only read (P2M, M2P, grant exposure map): `handedOut`, without
    /// `futureWrite`. That seal would stop the supervisor itself from mapping the memory writable
    /// again after a live update (its mappings do not survive the exec), so these stay writable
    /// through a writable descriptor; a domain only ever holds a read-only one, which cannot be
    /// mapped or written, and could reopen it writable only through /proc (absent from the jail)
    /// with a writable open (refused by the seccomp bound).
    public static let handedOutReadOnly: MemFDSeals = handedOut

    public var description: String {
        var names: [String] = []
        if contains(.seal) { names.append("seal") }
        if contains(.shrink) { names.append("shrink") }
        if contains(.grow) { names.append("grow") }
        if contains(.write) { names.append("write") }
        if contains(.futureWrite) { names.append("future_write") }
        return "[" + names.joined(separator: ",") + "]"
    }
}

/// memfd-backed memory: the medium of domain RAM and grant frames.
public enum MemFD {
    /// An anonymous memory file of `size` bytes (close-on-exec), sealed `handedOut` before it is
    /// returned: nobody, including whoever receives a descriptor for it later, can change its
    /// size. The corresponding C functions are `memfd_create` (MFD_ALLOW_SEALING), `ftruncate`
    /// and `fcntl(F_ADD_SEALS)`.
    public static func create(name: String, size: Int) throws -> FileDescriptor {
        let fd = try createUnsealed(name: name, size: size)
        do {
            try addSeals(fd, MemFDSeals.handedOut, context: name)
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// Memory the creator writes and others only read: a memfd of `size` bytes, the creator's
    /// writable mapping of it (made first: `futureWrite` refuses writable mappings made after it,
    /// keeps the ones made before), then sealed `handedOutReadOnly`, and a read-only descriptor
    /// for it to hand out. Through no descriptor can it be resized, written or mapped writable again.
    public static func createReadOnlyShared(name: String, size: Int) throws -> (fd: FileDescriptor, readOnlyFD: FileDescriptor, mapping: SharedMapping) {
        let fd = try createUnsealed(name: name, size: size)
        do {
            let mapping = try SharedMapping(fd, length: size)
            try addSeals(fd, MemFDSeals.handedOutReadOnly, context: name)
            let ro = try FileDescriptor.open("/proc/self/fd/\(fd.rawValue)", O_RDONLY | O_CLOEXEC)
            return (fd, ro, mapping)
        } catch {
            fd.close()
            throw error
        }
    }

    /// A sized memfd that accepts seals but has none yet (callers seal it before handing it out).
    public static func createUnsealed(name: String, size: Int) throws -> FileDescriptor {
        let raw = try negErrno("memfd_create", name) { pv_memfd_create(name, PV_MFD_CLOEXEC | PV_MFD_ALLOW_SEALING) }
        let fd = FileDescriptor(rawValue: raw)
        do {
            try retrying("ftruncate", name) { ftruncate(raw, off_t(size)) }
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// Adds `seals`, then reads them back: a kernel that silently kept one off would void the
    /// guarantees callers build on. The corresponding C call is `fcntl(F_ADD_SEALS)`.
    public static func addSeals(_ fd: FileDescriptor, _ seals: MemFDSeals, context: String = "") throws {
        let what = context.isEmpty ? "\(fd) \(seals)" : "\(context) (\(fd)) \(seals)"
        try negErrno("fcntl(F_ADD_SEALS)", what) { pv_memfd_add_seals(fd.rawValue, seals.rawValue) }
        let have = try self.seals(fd)
        guard have.isSuperset(of: seals) else {
            throw SystemError("fcntl(F_GET_SEALS)", "\(what): only \(have) took", errno: .invalidArgument)
        }
    }

    /// The seals a memfd carries. The corresponding C call is `fcntl(F_GET_SEALS)`.
    public static func seals(_ fd: FileDescriptor) throws -> MemFDSeals {
        MemFDSeals(rawValue: try negErrno("fcntl(F_GET_SEALS)", "\(fd)") { pv_memfd_get_seals(fd.rawValue) })
    }

    /// Sets the file's size (refused with EPERM once `shrink` or `grow` forbid it). The
    /// corresponding C function is `ftruncate`.
    public static func resize(_ fd: FileDescriptor, to size: Int) throws {
        try negErrno("ftruncate", "\(fd) to \(size)") { pv_ftruncate(fd.rawValue, Int64(size)) }
    }

    /// Allocates `length` bytes at `offset` (fallocate mode 0: past the end it grows the file,
    /// refused with EPERM under `grow`). The corresponding C function is `fallocate`.
    public static func allocate(_ fd: FileDescriptor, offset: Int, length: Int) throws {
        try negErrno("fallocate", "\(fd) offset \(offset) length \(length)") { pv_fallocate(fd.rawValue, 0, Int64(offset), Int64(length)) }
    }

    /// Returns `length` bytes at `offset` to the host (FALLOC_FL_PUNCH_HOLE).
    public static func punchHole(_ fd: FileDescriptor, offset: Int, length: Int) throws {
        try negErrno("fallocate(PUNCH_HOLE)", "\(fd) offset \(offset) length \(length)") {
            pv_punch_hole(fd.rawValue, Int64(offset), Int64(length))
        }
    }

    /// Bytes of the file actually backed by memory (st_blocks × 512).
    public static func allocatedBytes(_ fd: FileDescriptor) throws -> Int {
        Int(try FileStatus(fd).allocatedBytes)
    }
}

/// Futexes on shared memory words (not FUTEX_PRIVATE: the waker may be another process).
public enum Futex {
    public enum WaitResult: Equatable { case woken, valueChanged, timedOut, interrupted }

    /// Sleeps while `*word == expected`. The corresponding C call is `futex(FUTEX_WAIT)`.
    public static func wait(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32, timeoutNs: Int64 = -1) throws -> WaitResult {
        let rc = pv_futex_wait(word, expected, timeoutNs)
        switch -rc {
        case 0: return .woken
        case EAGAIN: return .valueChanged
        case ETIMEDOUT: return .timedOut
        case EINTR: return .interrupted
        default: throw SystemError("futex(FUTEX_WAIT)", errno: Errno(rawValue: -rc))
        }
    }

    /// Wakes up to `count` waiters; returns how many woke.
    @discardableResult
    public static func wake(_ word: UnsafeMutablePointer<UInt32>, count: Int32 = 1) throws -> Int {
        Int(try negErrno("futex(FUTEX_WAKE)") { pv_futex_wake(word, count) })
    }

    /// Waits on several words at once (futex_waitv, Linux 5.16+): the index of the word that woke,
    /// or nil on timeout.
    public static func waitAny(_ words: [(UnsafeMutablePointer<UInt32>, UInt32)], timeoutNs: Int64 = -1) throws -> Int? {
        let waiters = words.map { pv_futex_waiter(addr: $0.0, expected: $0.1) }
        let rc = waiters.withUnsafeBufferPointer { pv_futex_waitv($0.baseAddress, UInt32($0.count), timeoutNs) }
        if rc == -ETIMEDOUT { return nil }
        if rc == -EAGAIN { return -1 }  // a word had already changed: caller rescans
        if rc < 0 { throw SystemError("futex_waitv", errno: Errno(rawValue: -rc)) }
        return Int(rc)
    }
}

/// Several separately mapped shared pages seen again back to back, for structures that span
/// pages (Xen's multi-page rings): each page is mapped a second time into one reserved range
/// (`mremap` with old size 0); the original mappings stay. `release` unmaps the range only.
public enum ContiguousAlias {
    public static func make(_ pages: [UnsafeMutableRawPointer], pageSize: Int = 4096) throws -> UnsafeMutableRawPointer {
        precondition(!pages.isEmpty)
        let region = try reserve(pages: pages.count, pageSize: pageSize)
        for (i, p) in pages.enumerated() where !alias(p, pageSize: pageSize, at: region + i * pageSize) {
            let e = Errno.current
            munmap(region, pages.count * pageSize)
            throw SystemError("mremap", "page \(i) of \(pages.count)", errno: e)
        }
        return region
    }

    /// Reserves address space for `pages` pages (PROT_NONE: nothing is allocated).
    static func reserve(pages: Int, pageSize: Int) throws -> UnsafeMutableRawPointer {
        let length = pages * pageSize
        guard let region = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), region != MAP_FAILED else {
            throw SystemError("mmap", "\(length) bytes reserved for \(pages) pages", errno: .current)
        }
        return region
    }

    /// Maps the shared page at `page` a second time at `to` (mremap with old size 0).
    static func alias(_ page: UnsafeMutableRawPointer, pageSize: Int, at to: UnsafeMutableRawPointer) -> Bool {
        guard let r = pv_mremap_alias(page, pageSize, to), r != MAP_FAILED else { return false }
        return r == to
    }

    public static func release(_ region: UnsafeMutableRawPointer, pages: Int, pageSize: Int = 4096) {
        munmap(region, pages * pageSize)
    }
}

/// A reserved stretch of address space that shared pages mapped elsewhere are aliased into, one
/// after the other (`append`): pages scattered over many mappings become one contiguous range,
/// which io_uring can register as a single buffer. Releasing it unmaps the aliases only.
public final class AliasRegion {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public let pageSize: Int
    /// Pages aliased so far: they fill [base, base + count * pageSize).
    public private(set) var count = 0
    private var released = false

    /// Reserves `capacity` pages of address space (PROT_NONE: nothing is allocated).
    public init(capacity: Int, pageSize: Int = 4096) throws {
        precondition(capacity > 0)
        base = try ContiguousAlias.reserve(pages: capacity, pageSize: pageSize)
        self.capacity = capacity
        self.pageSize = pageSize
    }

    /// Aliases the shared page at `page` at the next free place; returns its index, or nil when
    /// the region is full or released (or the kernel refuses: the page is then not aliased).
    public func append(_ page: UnsafeMutableRawPointer) -> Int? {
        guard !released, count < capacity else { return nil }
        guard ContiguousAlias.alias(page, pageSize: pageSize, at: base + count * pageSize) else { return nil }
        count += 1
        return count - 1
    }

    /// Where page `index` is aliased.
    public func address(_ index: Int) -> UnsafeMutableRawPointer { base + index * pageSize }

    /// Unmaps every alias (the original mappings stay). Idempotent.
    public func release() {
        guard !released else { return }
        released = true
        munmap(base, capacity * pageSize)
    }

    deinit { release() }
}

import Glibc

/// A mapping of memory (mmap(2)) that this object owns: of a descriptor (shared or private) or
/// anonymous, read-only or read-write. Unmapped by `unmap()` or when the object is released.
/// Hot paths that keep the pointer in bookkeeping of their own (one grant page per request)
/// use the static `map`/`unmap` below instead: they allocate nothing.
public final class SharedMapping {
    /// Who sees the mapping's writes. `shared` (MAP_SHARED): every other mapping of the same file,
    /// in this process or another. `private` (MAP_PRIVATE): nobody; the first write to a page
    /// copies it (copy-on-write), and later changes to the file may or may not show through.
    public enum Sharing: Sendable {
        case shared, `private`

        @inlinable public var flags: Int32 { self == .shared ? MAP_SHARED : MAP_PRIVATE }
    }

    /// What may be done with the mapped pages (`PROT_*`). A writable shared mapping of a
    /// descriptor opened read-only, or of a memfd sealed against writes, is refused (EACCES/EPERM).
    public struct Protection: OptionSet, Sendable {
        public let rawValue: Int32
        @inlinable public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let read = Protection(rawValue: PROT_READ)
        public static let write = Protection(rawValue: PROT_WRITE)
        public static let readWrite: Protection = [.read, .write]
    }

    /// The first mapped byte. Dangling after `unmap()`.
    public let base: UnsafeMutableRawPointer
    /// Bytes mapped (the mapping itself covers whole pages).
    public let length: Int
    /// False once `unmap()` has run.
    public private(set) var isMapped = true

    /// Maps `length` bytes of `fd` from `offset` (a multiple of the page size), MAP_SHARED,
    /// read-write or read-only. The descriptor may be closed afterwards: the mapping keeps the file.
    public convenience init(_ fd: FileDescriptor, length: Int, offset: Int = 0, writable: Bool = true) throws {
        try self.init(fd, length: length, offset: offset, protection: writable ? .readWrite : .read)
    }

    /// Maps `length` bytes of `fd` from `offset` (a multiple of the page size).
    public init(_ fd: FileDescriptor, length: Int, offset: Int = 0, protection: Protection, sharing: Sharing = .shared) throws {
        switch Self.map(fd, length: length, offset: offset, protection: protection, sharing: sharing) {
        case let .success(p): base = p
        case let .failure(e): throw SystemError("mmap", "\(fd) length \(length)", errno: e)
        }
        self.length = length
    }

    /// Maps `length` bytes of fresh zero-filled memory (MAP_ANONYMOUS). `private` (the default) is
    /// this process's own memory; `shared` is also seen by children forked after it.
    public init(anonymous length: Int, protection: Protection = .readWrite, sharing: Sharing = .private) throws {
        let p = mmap(nil, length, protection.rawValue, sharing.flags | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemError("mmap", "anonymous length \(length)", errno: .current) }
        base = p
        self.length = length
    }

    deinit { unmap() }

    /// The mapped bytes.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: length) }

    /// Maps `length` bytes of `fd` from `offset` over the pages at `byteOffset` of this mapping, in
    /// place (MAP_FIXED): the old pages are replaced in one step, so there is no instant at which
    /// the addresses are unmapped for another thread to fault on or for something else to be
    /// mapped at. `byteOffset` must be page-aligned and the range inside this mapping.
    public func replace(at byteOffset: Int, length: Int, with fd: FileDescriptor, offset: Int = 0,
                        protection: Protection = .readWrite, sharing: Sharing = .shared) throws {
        precondition(isMapped && byteOffset >= 0 && length > 0 && byteOffset + length <= self.length, "replace outside the mapping")
        if case let .failure(e) = Self.map(fd, replacing: base + byteOffset, length: length, offset: offset, protection: protection, sharing: sharing) {
            throw SystemError("mmap(MAP_FIXED)", "\(fd) over bytes \(byteOffset)..<\(byteOffset + length) of \(self.length)", errno: e)
        }
    }

    /// Asks the kernel to back `length` bytes at `byteOffset` with transparent huge pages
    /// (madvise MADV_HUGEPAGE; private anonymous memory, 2 MiB-aligned to gain anything). Only a
    /// hint: false when refused (a kernel without THP), and the memory works the same either way.
    @discardableResult
    public func adviseHugePages(at byteOffset: Int = 0, length: Int? = nil) -> Bool {
        let length = length ?? self.length - byteOffset
        precondition(isMapped && byteOffset >= 0 && byteOffset + length <= self.length, "advice outside the mapping")
        return madvise(base + byteOffset, length, MADV_HUGEPAGE) == 0
    }

    /// Faults `length` bytes at `byteOffset` in now, in one call (madvise MADV_POPULATE_READ, or
    /// MADV_POPULATE_WRITE with `forWriting`, which also allocates shmem pages): bulk copies then
    /// take no page fault per page. Only an optimisation: false when the kernel refuses (before
    /// 5.14), and the memory works the same either way.
    @discardableResult
    public func prefault(at byteOffset: Int = 0, length: Int? = nil, forWriting: Bool = false) -> Bool {
        let length = length ?? self.length - byteOffset
        precondition(isMapped && byteOffset >= 0 && byteOffset + length <= self.length, "prefault outside the mapping")
        return madvise(base + byteOffset, length, forWriting ? 23 /* MADV_POPULATE_WRITE */ : 22 /* MADV_POPULATE_READ */) == 0
    }

    /// Unmaps now (munmap); idempotent. `base` must not be used after.
    public func unmap() {
        guard isMapped else { return }
        isMapped = false
        Self.unmap(base, length: length)
    }
}

extension SharedMapping {
    /// Maps `length` bytes of `fd` from `offset` with no owner (mmap): the caller unmaps it with
    /// `unmap(_:length:)`. Nothing is allocated; the errno on failure.
    @inlinable @inline(__always)
    public static func map(_ fd: FileDescriptor, length: Int, offset: Int = 0, protection: Protection = .readWrite,
                           sharing: Sharing = .shared) -> Result<UnsafeMutableRawPointer, Errno> {
        guard let p = mmap(nil, length, protection.rawValue, sharing.flags, fd.rawValue, off_t(offset)), p != MAP_FAILED else {
            return .failure(.current)
        }
        return .success(p)
    }

    /// Maps `length` bytes of `fd` from `offset` at `place` exactly, replacing whatever was mapped
    /// there in one step (MAP_FIXED: no instant at which the range is unmapped). The way to re-back
    /// a page in place. `place` must be page-aligned; the errno on failure (the old mapping is then
    /// left as it was, unless the kernel had already begun replacing it: treat the range as lost).
    @inlinable @inline(__always)
    public static func map(_ fd: FileDescriptor, replacing place: UnsafeMutableRawPointer, length: Int, offset: Int = 0,
                           protection: Protection = .readWrite, sharing: Sharing = .shared) -> Result<Void, Errno> {
        guard let p = mmap(place, length, protection.rawValue, sharing.flags | MAP_FIXED, fd.rawValue, off_t(offset)), p == place else {
            return .failure(.current)
        }
        return .success(())
    }

    /// Unmaps `length` bytes at `base` (munmap) mapped by the static `map`. Errors (EINVAL for a
    /// bad range) are ignored: unmapping a range that holds no mapping is not one.
    @inlinable @inline(__always)
    public static func unmap(_ base: UnsafeMutableRawPointer, length: Int) {
        _ = munmap(base, length)
    }
}

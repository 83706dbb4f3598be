import LinuxHost

/// A small allocator over pseudo-physical RAM whose every byte of bookkeeping lives in the
/// memory it manages, so a guest finds its data again after a save/restore (or migration):
/// the new process starts from `main` with nothing of the Swift heap, but its RAM comes back
/// exactly as it was, at the same pfns. On a fresh boot the RAM is zero and the heap initialises
/// itself; on a restore it finds its header and reuses everything.
///
/// ```swift
/// struct Counters { var boots: UInt64 = 0; var requests: UInt64 = 0 }
/// let heap = try domain.memory.heap                                    // pfns 0 ..< memory/2
/// let c = try heap.root(named: "counters", initialValue: Counters())   // same memory after a restore
/// c.pointee.boots += 1
/// let table = try heap.rootBytes(named: "table", count: 1 << 20)       // zero-filled when created
/// ```
///
/// Layout (offsets from `base`, which is pfn 0 for `domain.memory.heap`):
/// - page 0: the header. Bytes 0..<40 are fixed at initialisation and covered by a checksum at 40
///   (FNV-1a 64): magic `PVRAMHP1`, version, page size, size in pages, where blocks start, the
///   root table's geometry. At 64 the head of the free list; from 128 the root table (48 entries
///   of 80 bytes: state, block offset, byte count, alignment, kind, type hash, name ≤ 32 bytes).
/// - pages 1 ..< `pages`: blocks, 16-byte aligned, each with a 16-byte header (size, and a tag
///   that says allocated or free and which offset it belongs to). Free blocks form one list in
///   address order (first fit; a freed block merges with free neighbours).
///
/// Everything stored is an offset from `base`, never an address: after a restore the RAM may be
/// mapped elsewhere. The same goes for what guests keep in it: store `offset(of:)` and turn it
/// back with `pointer(at:)`; a pointer or class reference stored in the heap is meaningless in
/// the next process (`BitwiseCopyable` keeps out `String`, `Array` and classes, not raw pointers).
///
/// Every change is made in an order that leaves the heap consistent at each step, with a full
/// fence before the store that publishes it (the magic word last on initialisation, a root's
/// state word after its fields, a free-list link after the block it points to): if the RAM is
/// captured in the middle of an operation, the restored heap is intact and at worst one block
/// is lost (never reachable, never handed out twice). Whether the guest's own data is consistent
/// at that point is the guest's business (kvstore keeps a one-entry journal for that).
///
/// All methods may be called from any thread (one recursive lock; `initialize` closures may use
/// the heap).
public final class RAMHeap {
    /// Bytes per page.
    public static let pageSize = 4096
    /// The header format this code reads and writes.
    public static let version: UInt32 = 1
    /// Roots one heap can hold.
    public static let rootCapacity = 48
    /// The longest root name, in UTF-8 bytes.
    public static let rootNameLimit = 32
    /// The largest alignment `allocate` accepts (a page).
    public static let maxAlignment = 4096
    /// The smallest heap: the header page and one page of blocks.
    public static let minimumPages = 2

    /// Start of the heap (page 0 of its region).
    public let base: UnsafeMutableRawPointer
    /// Size in pages, fixed when the heap was first initialised.
    public let pages: Int
    /// True when this heap was found already initialised (a restore, or a second open of the same
    /// memory); false when it was initialised now.
    public let restored: Bool

    private let lock = Lock(recursive: true)
    /// Called before and after every publishing store (tests capture the memory there, as a save
    /// taken at that instant would).
    var publishHook: (() -> Void)?

    /// Bytes the heap spans (`pages` × 4096).
    public var byteCount: Int { pages * RAMHeap.pageSize }

    // MARK: layout

    enum Header {
        static let magic: UInt64 = 0x3150_484D_4152_5650  // "PVRAMHP1" in memory order
        static let magicOffset = 0
        static let versionOffset = 8
        static let pageSizeOffset = 12
        static let pagesOffset = 16
        static let dataStartOffset = 24
        static let rootCapacityOffset = 32
        static let rootEntrySizeOffset = 36
        static let checksumOffset = 40
        static let checksummedBytes = 40
        static let freeHeadOffset = 64
        static let rootTableOffset = 128
        static let rootEntrySize = 80
        static let dataStart = RAMHeap.pageSize
    }

    enum RootEntry {
        static let stateOffset = 0  // 0 free, `used` when the entry is valid (written last)
        static let blockOffset = 8  // offset of the root's bytes
        static let byteCountOffset = 16
        static let alignmentOffset = 24  // UInt32
        static let kindOffset = 28  // UInt32: typed or bytes
        static let typeHashOffset = 32
        static let nameLengthOffset = 40  // UInt32
        static let nameOffset = 48  // 32 bytes
        static let used: UInt64 = 0x544F_4F52_5656_5001
        static let kindTyped: UInt32 = 1
        static let kindBytes: UInt32 = 2
    }

    enum Block {
        static let headerSize = 16
        static let minimum = 32  // header + the free list's link
        static let granule = 16
        static let allocatedTag: UInt64 = 0x4B43_4F4C_4C41_5650  // xor the block's offset
        static let freeTag: UInt64 = 0x4545_5246_5241_5650
    }

    // MARK: opening

    /// Opens the heap in the `pages` pages at `base` (page-aligned): initialises it when there is
    /// no header (fresh, zeroed RAM), finds it again when there is a valid one. Throws
    /// `RAMHeapError` when a header is there but invalid (another version, a bad checksum, another
    /// size), or when `isPopulated` (called with each page index 0 ..< `pages`) says a page
    /// cannot be written. The region must stay mapped as long as the heap is used.
    public convenience init(base: UnsafeMutableRawPointer, pages: Int, isPopulated: (Int) -> Bool = { _ in true }) throws {
        try self.init(base: base, pages: pages, regionPages: pages, isPopulated: isPopulated)
    }

    /// `pages` is the size wanted; `regionPages` how far the caller's memory goes (a header
    /// claiming more is refused).
    init(base: UnsafeMutableRawPointer, pages: Int, regionPages: Int, isPopulated: (Int) -> Bool) throws {
        guard Int(bitPattern: base) % RAMHeap.pageSize == 0 else {
            throw RAMHeapError.invalidArgument("base \(base) is not page-aligned")
        }
        guard pages >= RAMHeap.minimumPages else { throw RAMHeapError.tooSmall(pages: pages, minimum: RAMHeap.minimumPages) }
        guard pages <= regionPages else {
            throw RAMHeapError.invalidArgument("a heap of \(pages) pages does not fit in a region of \(regionPages) pages")
        }
        guard pages <= Int.max / RAMHeap.pageSize / 2 else { throw RAMHeapError.invalidArgument("\(pages) pages is too large") }
        if let found = try RAMHeap.existingPages(at: UnsafeRawPointer(base)) {
            guard found == pages else { throw RAMHeapError.sizeMismatch(found: found, expected: pages) }
        }
        for page in 0..<pages where !isPopulated(page) {
            throw RAMHeapError.unpopulatedPage(page: page, heapPages: pages)
        }
        self.base = base
        self.pages = pages
        if RAMHeap.load(base, Header.magicOffset) == Header.magic {
            restored = true
            // Walk the free list once: a damaged heap is refused now rather than on some later call.
            _ = try freeListStatistics()
        } else {
            restored = false
            initialise()
        }
    }

    /// The size in pages of the heap whose header is at `base`; nil when there is none (no
    /// magic: fresh RAM). Throws when the magic is there but the header is not one this code
    /// can use (another version, a bad checksum, other geometry).
    public static func existingPages(at base: UnsafeRawPointer) throws -> Int? {
        guard base.load(fromByteOffset: Header.magicOffset, as: UInt64.self) == Header.magic else { return nil }
        let version = base.load(fromByteOffset: Header.versionOffset, as: UInt32.self)
        guard version == RAMHeap.version else { throw RAMHeapError.versionMismatch(found: version, supported: RAMHeap.version) }
        let stored = base.load(fromByteOffset: Header.checksumOffset, as: UInt64.self)
        let computed = checksum(base)
        guard stored == computed else { throw RAMHeapError.checksumMismatch(stored: stored, computed: computed) }
        let pageSize = base.load(fromByteOffset: Header.pageSizeOffset, as: UInt32.self)
        let pages = base.load(fromByteOffset: Header.pagesOffset, as: UInt64.self)
        let dataStart = base.load(fromByteOffset: Header.dataStartOffset, as: UInt64.self)
        let capacity = base.load(fromByteOffset: Header.rootCapacityOffset, as: UInt32.self)
        let entrySize = base.load(fromByteOffset: Header.rootEntrySizeOffset, as: UInt32.self)
        guard pageSize == UInt32(RAMHeap.pageSize), dataStart == UInt64(Header.dataStart), capacity == UInt32(RAMHeap.rootCapacity),
              entrySize == UInt32(Header.rootEntrySize), pages >= UInt64(RAMHeap.minimumPages), pages <= UInt64(Int.max / RAMHeap.pageSize / 2)
        else {
            throw RAMHeapError.badGeometry("page size \(pageSize), \(pages) pages, blocks from \(dataStart), \(capacity) roots of \(entrySize) bytes")
        }
        return Int(pages)
    }

    /// The pages a heap header at `base` claims, valid or not (the balloon keeps them even when
    /// the header cannot be used, so nothing is given away before someone looks at it).
    static func claimedPages(at base: UnsafeRawPointer) -> UInt64? {
        guard base.load(fromByteOffset: Header.magicOffset, as: UInt64.self) == Header.magic else { return nil }
        return base.load(fromByteOffset: Header.pagesOffset, as: UInt64.self)
    }

    static func checksum(_ base: UnsafeRawPointer) -> UInt64 {
        fnv1a(UnsafeRawBufferPointer(start: base, count: Header.checksummedBytes))
    }

    static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }

    /// Writes a new header and one free block spanning pages 1 ..< `pages`; the magic goes last.
    private func initialise() {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: RAMHeap.pageSize)
        base.storeBytes(of: RAMHeap.version, toByteOffset: Header.versionOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(RAMHeap.pageSize), toByteOffset: Header.pageSizeOffset, as: UInt32.self)
        base.storeBytes(of: UInt64(pages), toByteOffset: Header.pagesOffset, as: UInt64.self)
        base.storeBytes(of: UInt64(Header.dataStart), toByteOffset: Header.dataStartOffset, as: UInt64.self)
        base.storeBytes(of: UInt32(RAMHeap.rootCapacity), toByteOffset: Header.rootCapacityOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(Header.rootEntrySize), toByteOffset: Header.rootEntrySizeOffset, as: UInt32.self)
        base.storeBytes(of: Header.magic, toByteOffset: Header.magicOffset, as: UInt64.self)
        let sum = RAMHeap.checksum(base)  // computed over the header as it will read with its magic
        base.storeBytes(of: 0, toByteOffset: Header.magicOffset, as: UInt64.self)
        base.storeBytes(of: sum, toByteOffset: Header.checksumOffset, as: UInt64.self)
        let first = Header.dataStart
        writeFreeBlock(at: first, size: byteCount - first, next: 0)
        base.storeBytes(of: UInt64(first), toByteOffset: Header.freeHeadOffset, as: UInt64.self)
        publish(Header.magicOffset, Header.magic)
    }

    // MARK: ordered stores

    static func load(_ base: UnsafeRawPointer, _ offset: Int) -> UInt64 {
        base.load(fromByteOffset: offset, as: UInt64.self)
    }

    private func load(_ offset: Int) -> UInt64 { RAMHeap.load(base, offset) }

    private func store(_ offset: Int, _ value: UInt64) {
        base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
    }

    /// Every store before this one is in memory before it; it is in memory before any after it.
    private func publish(_ offset: Int, _ value: UInt64) {
        SharedAtomic.fence()
        publishHook?()
        SharedAtomic.store((base + offset).assumingMemoryBound(to: UInt64.self), value)
        SharedAtomic.fence()
        publishHook?()
    }

    private func writeFreeBlock(at offset: Int, size: Int, next: Int) {
        store(offset, UInt64(size))
        store(offset + 8, Block.freeTag ^ UInt64(offset))
        store(offset + Block.headerSize, UInt64(next))
    }

    // MARK: addresses

    /// The offset of `pointer` from `base`, when it points into the heap: what to store inside
    /// the heap in place of a pointer.
    public func offset(of pointer: UnsafeRawPointer) -> Int? {
        let d = pointer - UnsafeRawPointer(base)
        return d >= 0 && d < byteCount ? d : nil
    }

    /// The address of `offset` in this process (nil outside the heap).
    public func pointer(at offset: Int) -> UnsafeMutableRawPointer? {
        offset >= 0 && offset < byteCount ? base + offset : nil
    }

    // MARK: allocation

    /// Allocates `byteCount` bytes (uninitialised: a reused block holds what it held) aligned to
    /// `alignment` (a power of two up to a page). Throws `outOfSpace` when no free block is large
    /// enough, `invalidArgument` for a negative size or a bad alignment.
    public func allocate(byteCount: Int, alignment: Int = 16) throws -> UnsafeMutableRawPointer {
        try lock.withLock { base + (try allocateLocked(byteCount: byteCount, alignment: alignment)) }
    }

    /// The payload offset of a new block.
    private func allocateLocked(byteCount n: Int, alignment: Int) throws -> Int {
        guard n >= 0, n <= self.byteCount else { throw RAMHeapError.invalidArgument("allocation of \(n) bytes in a heap of \(self.byteCount)") }
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= RAMHeap.maxAlignment else {
            throw RAMHeapError.invalidArgument("alignment \(alignment) is not a power of two up to \(RAMHeap.maxAlignment)")
        }
        let align = max(alignment, Block.granule)
        let need = max(Block.minimum, Block.headerSize + RAMHeap.roundUp(n, Block.granule))
        var link = Header.freeHeadOffset  // where the offset of `current` is stored
        var current = Int(load(link))
        var steps = 0
        while current != 0 {
            let size = try checkedFreeBlock(current, steps: &steps)
            let next = Int(load(current + Block.headerSize))
            // Where the block to hand out would start: its payload aligned, and the gap before it
            // either nothing or a free block of its own.
            var payload = RAMHeap.roundUp(current + Block.headerSize, align)
            if payload - Block.headerSize - current > 0 && payload - Block.headerSize - current < Block.minimum { payload += align }
            let start = payload - Block.headerSize
            let gap = start - current
            if start + need <= current + size {
                var blockSize = need
                var tail = current + size - (start + need)
                if tail < Block.minimum {
                    blockSize += tail
                    tail = 0
                }
                let tailOffset = start + blockSize
                if gap == 0 {
                    if tail > 0 {
                        writeFreeBlock(at: tailOffset, size: tail, next: next)
                        publish(link, UInt64(tailOffset))
                    } else {
                        publish(link, UInt64(next))
                    }
                } else {
                    // The front stays in the list, shrunk first (the rest is unreachable until the tail is linked).
                    publish(current, UInt64(gap))
                    if tail > 0 {
                        writeFreeBlock(at: tailOffset, size: tail, next: next)
                        publish(current + Block.headerSize, UInt64(tailOffset))
                    }
                }
                store(start, UInt64(blockSize))
                publish(start + 8, Block.allocatedTag ^ UInt64(start))
                return payload
            }
            link = current + Block.headerSize
            current = next
        }
        let stats = try freeListStatistics()
        throw RAMHeapError.outOfSpace(requested: n, alignment: alignment, freeBytes: stats.freeBytes, largestFreeBlock: stats.largestFreeBlock)
    }

    /// Frees a block `allocate` returned. Throws `notAllocated` for anything else (a pointer
    /// outside the heap, inside a block, or to a block already freed).
    public func deallocate(_ pointer: UnsafeMutableRawPointer) throws {
        try lock.withLock {
            guard let payload = offset(of: pointer) else { throw RAMHeapError.notAllocated(offset: pointer - base) }
            try deallocateLocked(payload: payload)
        }
    }

    private func deallocateLocked(payload: Int) throws {
        let start = payload - Block.headerSize
        guard let size = allocatedBlockSize(at: start) else { throw RAMHeapError.notAllocated(offset: payload) }
        // The free blocks before and after it, in address order.
        var link = Header.freeHeadOffset
        var previous = 0
        var next = Int(load(link))
        var steps = 0
        while next != 0 && next < start {
            _ = try checkedFreeBlock(next, steps: &steps)
            previous = next
            link = next + Block.headerSize
            next = Int(load(link))
        }
        var nextSize = 0
        if next != 0 {
            nextSize = try checkedFreeBlock(next, steps: &steps)
            guard next >= start + size else { throw RAMHeapError.corrupt(offset: next, reason: "a free block overlaps the allocated block at \(start)") }
        }
        let previousSize = previous == 0 ? 0 : Int(load(previous))
        guard previous == 0 || previous + previousSize <= start else {
            throw RAMHeapError.corrupt(offset: previous, reason: "a free block overlaps the allocated block at \(start)")
        }
        let mergeNext = next != 0 && start + size == next
        let mergePrevious = previous != 0 && previous + previousSize == start
        switch (mergePrevious, mergeNext) {
        case (false, false):
            store(start + Block.headerSize, UInt64(next))
            publish(start + 8, Block.freeTag ^ UInt64(start))
            publish(link, UInt64(start))
        case (false, true):
            // Marked free while still unreachable, then grown over `next`, then linked in its place.
            store(start + Block.headerSize, load(next + Block.headerSize))
            publish(start + 8, Block.freeTag ^ UInt64(start))
            publish(start, UInt64(size + nextSize))
            publish(link, UInt64(start))  // `next` is now inside this block, unreachable
            store(next + 8, 0)
        case (true, false):
            publish(start + 8, 0)  // lost until the previous block grows over it
            publish(previous, UInt64(previousSize + size))
        case (true, true):
            publish(start + 8, 0)
            publish(previous + Block.headerSize, load(next + Block.headerSize))  // `next` unlinked (lost for a moment)
            publish(previous, UInt64(previousSize + size + nextSize))
            store(next + 8, 0)
        }
    }

    /// The size of the allocated block starting at `start`, nil when there is none.
    private func allocatedBlockSize(at start: Int) -> Int? {
        guard start >= Header.dataStart, start % Block.granule == 0, start + Block.minimum <= byteCount,
              load(start + 8) == Block.allocatedTag ^ UInt64(start) else { return nil }
        let size = Int(truncatingIfNeeded: load(start))
        guard size >= Block.minimum, size % Block.granule == 0, size <= byteCount - start else { return nil }
        return size
    }

    /// The size of the free block at `offset`, checked; throws `corrupt` for anything that is not
    /// one, or when the walk has gone on longer than the heap has blocks (a cycle).
    private func checkedFreeBlock(_ offset: Int, steps: inout Int) throws -> Int {
        steps += 1
        guard steps <= byteCount / Block.minimum else { throw RAMHeapError.corrupt(offset: offset, reason: "the free list has a cycle") }
        guard offset >= Header.dataStart, offset % Block.granule == 0, offset <= byteCount - Block.minimum else {
            throw RAMHeapError.corrupt(offset: offset, reason: "a free-list link points outside the heap's blocks")
        }
        guard load(offset + 8) == Block.freeTag ^ UInt64(offset) else {
            throw RAMHeapError.corrupt(offset: offset, reason: "the free list reaches a block that is not marked free")
        }
        let size = Int(truncatingIfNeeded: load(offset))
        guard size >= Block.minimum, size % Block.granule == 0, size <= byteCount - offset else {
            throw RAMHeapError.corrupt(offset: offset, reason: "free block of impossible size \(size)")
        }
        let next = Int(truncatingIfNeeded: load(offset + Block.headerSize))
        guard next == 0 || next >= offset + size else {
            throw RAMHeapError.corrupt(offset: offset, reason: "the free list is out of address order (next \(next))")
        }
        return size
    }

    /// What is free: bytes in free blocks (headers included), the largest block's payload, and
    /// the number of free blocks. Throws `corrupt` if the free list is damaged.
    public func statistics() throws -> RAMHeapStatistics {
        try lock.withLock { try freeListStatistics() }
    }

    private func freeListStatistics() throws -> RAMHeapStatistics {
        var stats = RAMHeapStatistics(freeBytes: 0, largestFreeBlock: 0, freeBlocks: 0)
        var current = Int(truncatingIfNeeded: load(Header.freeHeadOffset))
        var steps = 0
        while current != 0 {
            let size = try checkedFreeBlock(current, steps: &steps)
            stats.freeBytes += size
            stats.largestFreeBlock = max(stats.largestFreeBlock, size - Block.headerSize)
            stats.freeBlocks += 1
            current = Int(truncatingIfNeeded: load(current + Block.headerSize))
        }
        return stats
    }

    /// The free blocks, headers included, in address order (for tests).
    func freeBlockRanges() throws -> [Range<Int>] {
        try lock.withLock {
            var out: [Range<Int>] = []
            var current = Int(truncatingIfNeeded: load(Header.freeHeadOffset))
            var steps = 0
            while current != 0 {
                out.append(current..<(current + (try checkedFreeBlock(current, steps: &steps))))
                current = Int(truncatingIfNeeded: load(current + Block.headerSize))
            }
            return out
        }
    }

    static func roundUp(_ v: Int, _ to: Int) -> Int { (v + to - 1) & ~(to - 1) }

    // MARK: roots

    /// The root `name` of type `T`: on a fresh heap (or the first time this name is asked for) a
    /// new block, zero-filled and then passed to `initialize`; afterwards, and after a restore,
    /// the same block. Throws `rootMismatch` when the stored root was made for another type (its
    /// size, alignment or type name differ), `rootTableFull`, `invalidArgument` for an empty or
    /// too long name, `outOfSpace`, or what `initialize` throws (the block is freed then and the
    /// root not made).
    public func root<T: BitwiseCopyable>(named name: String, of type: T.Type = T.self,
                                         initialize: (UnsafeMutablePointer<T>) throws -> Void) throws -> UnsafeMutablePointer<T> {
        let spec = RootSpec(kind: RootEntry.kindTyped, byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment,
                            typeName: String(reflecting: T.self))
        let p = try lock.withLock {
            try rootLocked(named: name, spec) { raw in try initialize(raw.bindMemory(to: T.self, capacity: 1)) }
        }
        return p.assumingMemoryBound(to: T.self)
    }

    /// The root `name` holding a `T`, set to `initialValue` when it is created (see
    /// `root(named:of:initialize:)`).
    public func root<T: BitwiseCopyable>(named name: String, initialValue: @autoclosure () throws -> T) throws -> UnsafeMutablePointer<T> {
        try root(named: name, of: T.self) { $0.initialize(to: try initialValue()) }
    }

    /// The root `name`: `count` bytes aligned to `alignment`, zero-filled when created, the same
    /// bytes afterwards and after a restore. Throws `rootMismatch` when the stored root has
    /// another size or alignment, or was made by `root(named:of:)`.
    public func rootBytes(named name: String, count: Int, alignment: Int = 16) throws -> UnsafeMutableRawBufferPointer {
        let spec = RootSpec(kind: RootEntry.kindBytes, byteCount: count, alignment: alignment, typeName: nil)
        let p = try lock.withLock { try rootLocked(named: name, spec) { _ in } }
        return UnsafeMutableRawBufferPointer(start: p, count: count)
    }

    /// Whether a root of that name exists.
    public func hasRoot(named name: String) -> Bool {
        lock.withLock { findRoot(Array(name.utf8)) != nil }
    }

    /// The names of the roots, in the order they were made (by table slot).
    public var rootNames: [String] {
        lock.withLock {
            (0..<RAMHeap.rootCapacity).compactMap { i -> String? in
                let e = entryOffset(i)
                guard load(e + RootEntry.stateOffset) == RootEntry.used else { return nil }
                return String(decoding: nameBytes(e), as: UTF8.self)
            }
        }
    }

    struct RootSpec {
        var kind: UInt32
        var byteCount: Int
        var alignment: Int
        var typeName: String?
        var typeHash: UInt64 { typeName.map { name in Array(name.utf8).withUnsafeBytes { RAMHeap.fnv1a($0) } } ?? 0 }
        var description: String {
            let what = typeName.map { "\($0) (\(byteCount) bytes, alignment \(alignment), type hash \(RAMHeap.hex(typeHash)))" }
            return what ?? "\(byteCount) raw bytes, alignment \(alignment)"
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    private func entryOffset(_ i: Int) -> Int { Header.rootTableOffset + i * Header.rootEntrySize }

    private func nameBytes(_ entry: Int) -> UnsafeRawBufferPointer {
        let n = min(Int(base.load(fromByteOffset: entry + RootEntry.nameLengthOffset, as: UInt32.self)), RAMHeap.rootNameLimit)
        return UnsafeRawBufferPointer(start: base + entry + RootEntry.nameOffset, count: n)
    }

    private func findRoot(_ name: [UInt8]) -> Int? {
        for i in 0..<RAMHeap.rootCapacity {
            let e = entryOffset(i)
            if load(e + RootEntry.stateOffset) == RootEntry.used && nameBytes(e).elementsEqual(name) { return e }
        }
        return nil
    }

    private func rootLocked(named name: String, _ spec: RootSpec, initialize: (UnsafeMutableRawPointer) throws -> Void) throws -> UnsafeMutableRawPointer {
        let nameUTF8 = Array(name.utf8)
        guard !nameUTF8.isEmpty, nameUTF8.count <= RAMHeap.rootNameLimit else {
            throw RAMHeapError.invalidArgument("root name \"\(name)\": 1 to \(RAMHeap.rootNameLimit) bytes of UTF-8")
        }
        guard spec.byteCount >= 0 else { throw RAMHeapError.invalidArgument("root \"\(name)\" of \(spec.byteCount) bytes") }
        if let e = findRoot(nameUTF8) {
            let kind = base.load(fromByteOffset: e + RootEntry.kindOffset, as: UInt32.self)
            let count = Int(truncatingIfNeeded: load(e + RootEntry.byteCountOffset))
            let alignment = Int(base.load(fromByteOffset: e + RootEntry.alignmentOffset, as: UInt32.self))
            let hash = load(e + RootEntry.typeHashOffset)
            guard kind == spec.kind, count == spec.byteCount, alignment == spec.alignment, hash == spec.typeHash else {
                let stored = kind == RootEntry.kindTyped
                    ? "a typed root of \(count) bytes, alignment \(alignment), type hash \(RAMHeap.hex(hash))"
                    : kind == RootEntry.kindBytes ? "\(count) raw bytes, alignment \(alignment)" : "a root of unknown kind \(kind)"
                throw RAMHeapError.rootMismatch(name: name, stored: stored, requested: spec.description)
            }
            let payload = Int(truncatingIfNeeded: load(e + RootEntry.blockOffset))
            guard let size = allocatedBlockSize(at: payload - Block.headerSize), size - Block.headerSize >= count,
                  payload % max(alignment, 1) == 0 else {
                throw RAMHeapError.corrupt(offset: payload, reason: "root \"\(name)\" does not point at an allocated block of \(count) bytes")
            }
            return base + payload
        }
        func freeSlot() -> Int? { (0..<RAMHeap.rootCapacity).first { load(entryOffset($0) + RootEntry.stateOffset) == 0 } }
        guard freeSlot() != nil else { throw RAMHeapError.rootTableFull(capacity: RAMHeap.rootCapacity, name: name) }
        let payload = try allocateLocked(byteCount: spec.byteCount, alignment: spec.alignment)
        let p = base + payload
        p.initializeMemory(as: UInt8.self, repeating: 0, count: spec.byteCount)
        do {
            try initialize(p)
            // `initialize` may have made roots of its own: the slot is chosen after it.
            guard findRoot(nameUTF8) == nil else {
                throw RAMHeapError.invalidArgument("root \"\(name)\" was made by its own initialize closure")
            }
            guard freeSlot() != nil else { throw RAMHeapError.rootTableFull(capacity: RAMHeap.rootCapacity, name: name) }
        } catch {
            try deallocateLocked(payload: payload)
            throw error
        }
        // The entry's fields first, its state word last: a half-written entry is never a root.
        let e = entryOffset(freeSlot()!)
        store(e + RootEntry.blockOffset, UInt64(payload))
        store(e + RootEntry.byteCountOffset, UInt64(spec.byteCount))
        base.storeBytes(of: UInt32(spec.alignment), toByteOffset: e + RootEntry.alignmentOffset, as: UInt32.self)
        base.storeBytes(of: spec.kind, toByteOffset: e + RootEntry.kindOffset, as: UInt32.self)
        store(e + RootEntry.typeHashOffset, spec.typeHash)
        base.storeBytes(of: UInt32(nameUTF8.count), toByteOffset: e + RootEntry.nameLengthOffset, as: UInt32.self)
        (base + e + RootEntry.nameOffset).initializeMemory(as: UInt8.self, repeating: 0, count: RAMHeap.rootNameLimit)
        nameUTF8.withUnsafeBytes { (base + e + RootEntry.nameOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        publish(e + RootEntry.stateOffset, RootEntry.used)
        return p
    }
}

/// What `RAMHeap.statistics()` reports.
public struct RAMHeapStatistics: Equatable, Sendable {
    /// Bytes in free blocks, their headers included.
    public var freeBytes: Int
    /// The largest allocation that could succeed now (alignment 16).
    public var largestFreeBlock: Int
    /// Free blocks (fragmentation).
    public var freeBlocks: Int
}

/// Why a `RAMHeap` refused.
public enum RAMHeapError: Error, CustomStringConvertible, Equatable {
    /// A heap header is there, written by another version of this code.
    case versionMismatch(found: UInt32, supported: UInt32)
    /// A heap header is there but its fixed fields do not match their checksum.
    case checksumMismatch(stored: UInt64, computed: UInt64)
    /// A heap header is there with a page size or layout this code does not use.
    case badGeometry(String)
    /// A heap header is there for another size than the one asked for (or the memory has).
    case sizeMismatch(found: Int, expected: Int)
    /// Fewer pages than a heap needs.
    case tooSmall(pages: Int, minimum: Int)
    /// A page of the heap is not populated (writing it would get the domain crashed).
    case unpopulatedPage(page: Int, heapPages: Int)
    /// No free block is large enough.
    case outOfSpace(requested: Int, alignment: Int, freeBytes: Int, largestFreeBlock: Int)
    /// `deallocate` of something `allocate` did not return, or returned and was freed since.
    case notAllocated(offset: Int)
    /// The root exists with another size, alignment or type.
    case rootMismatch(name: String, stored: String, requested: String)
    /// Every root slot is taken.
    case rootTableFull(capacity: Int, name: String)
    /// The heap's bookkeeping is damaged at `offset`.
    case corrupt(offset: Int, reason: String)
    /// A bad argument, said in words.
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .versionMismatch(found, supported):
            return "RAM heap: the header in memory is version \(found), this code reads version \(supported)"
        case let .checksumMismatch(stored, computed):
            return "RAM heap: the header's checksum is \(RAMHeap.hex(stored)) but its fields sum to \(RAMHeap.hex(computed)) (damaged header)"
        case let .badGeometry(what):
            return "RAM heap: the header describes a layout this code does not use (\(what))"
        case let .sizeMismatch(found, expected):
            return "RAM heap: the heap in memory is \(found) pages, \(expected) pages were asked for"
        case let .tooSmall(pages, minimum):
            return "RAM heap: \(pages) pages is too small (at least \(minimum): the header page and one page of blocks)"
        case let .unpopulatedPage(page, heapPages):
            return "RAM heap: page \(page) of the \(heapPages)-page heap is not populated (ballooned out or beyond the boot memory)"
        case let .outOfSpace(requested, alignment, freeBytes, largest):
            return "RAM heap: no room for \(requested) bytes aligned to \(alignment) (\(freeBytes) bytes free, largest block \(largest))"
        case let .notAllocated(offset):
            return "RAM heap: deallocate of offset \(offset), which is not a block allocate returned (or it was freed already)"
        case let .rootMismatch(name, stored, requested):
            return "RAM heap: root \"\(name)\" holds \(stored), asked for as \(requested)"
        case let .rootTableFull(capacity, name):
            return "RAM heap: cannot make root \"\(name)\": all \(capacity) root slots are taken"
        case let .corrupt(offset, reason):
            return "RAM heap: damaged bookkeeping at offset \(offset): \(reason)"
        case let .invalidArgument(what):
            return "RAM heap: \(what)"
        }
    }
}

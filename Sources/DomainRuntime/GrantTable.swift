import LinuxHost
import ProcvisorABI

/// A page this domain can grant: a memfd page of its own, mapped here.
public struct GrantablePage: Equatable {
    /// Its frame number, as written in grant entries.
    public let gfn: UInt64
    public let base: UnsafeMutableRawPointer
}

/// Another domain's page mapped here through a grant.
public final class GrantMapping {
    public let handle: UInt32
    public let granter: UInt16
    public let ref: GrantRef
    public let readonly: Bool
    public let base: UnsafeMutableRawPointer
    fileprivate var mapped = true

    init(handle: UInt32, granter: UInt16, ref: GrantRef, readonly: Bool, base: UnsafeMutableRawPointer) {
        self.handle = handle
        self.granter = granter
        self.ref = ref
        self.readonly = readonly
        self.base = base
    }
}

/// Grants mapped back to back: `base` spans `mappings.count` pages.
public final class GrantMappingRun {
    public let base: UnsafeMutableRawPointer
    public let mappings: [GrantMapping]
    fileprivate var aliased: Bool

    init(base: UnsafeMutableRawPointer, mappings: [GrantMapping], aliased: Bool) {
        self.base = base
        self.mappings = mappings
        self.aliased = aliased
    }
}

/// Why a grant operation failed.
public enum GrantError: Error, Equatable, CustomStringConvertible {
    /// The supervisor refused with this `GNTST_*` status.
    case status(GNTST, operation: String)
    case hypercall(HypercallError)
    /// `endAccess` while the grantee still has the page mapped (GTF_reading/GTF_writing set).
    case stillMapped(GrantRef)
    /// No free entry left in the grant table at its maximum size.
    case tableFull
    case invalidReference(GrantRef)
    /// The access ended, but the page could not be re-backed (the supervisor refused, or the
    /// new page could not be mapped over it): the page must not be reused.
    case rebacking(gfn: UInt64, reason: String)

    public var description: String {
        switch self {
        case let .status(s, op): return "\(op): GNTST_\(s)"
        case let .hypercall(e): return e.description
        case let .stillMapped(r): return "grant \(r) is still mapped by its grantee"
        case .tableFull: return "the grant table is full"
        case let .invalidReference(r): return "grant \(r) is not one of ours"
        case let .rebacking(gfn, reason): return "re-backing grantable page \(String(gfn, radix: 16)): \(reason)"
        }
    }
}

/// The domain's grant table (v1 entries it writes itself, no hypercall to grant), its pool of
/// grantable pages, and mapping/copying other domains' grants through the supervisor.
public final class GrantTable {
    /// Xen reserves the first entries for the toolstack (GNTTAB_NR_RESERVED_ENTRIES).
    public static let reservedEntries: GrantRef = 8
    let hypercalls: HypercallChannel
    private let mutex = Lock()
    @exclusivity(unchecked) private var table: SharedMapping?
    @exclusivity(unchecked) private var nrFrames = 0
    @exclusivity(unchecked) private var maxFrames = 0
    @exclusivity(unchecked) private var freeRefs: [GrantRef] = []
    @exclusivity(unchecked) private var pool: [GrantablePage] = []
    @exclusivity(unchecked) private var pageMappings: [UInt64: SharedMapping] = [:]
    /// The supervisor's exposure map (`GrantExposureMap`), read-only.
    @exclusivity(unchecked) private var exposure: SharedMapping?
    /// Where else each grantable page is mapped here (`contiguousView`), so re-backing replaces
    /// those views too.
    @exclusivity(unchecked) private var aliases: [UInt64: [UnsafeMutableRawPointer]] = [:]

    init(hypercalls: HypercallChannel) {
        self.hypercalls = hypercalls
    }

    private func lock() { mutex.lock() }
    private func unlock() { mutex.unlock() }

    /// `GNTTABOP_setup_table` up to `frames` (caller holds the lock).
    private func grow(to frames: Int) throws {
        let (r, fds) = hypercalls.callWithFDs(.grantTableOp, [GnttabOp.setupTable.rawValue, UInt64(frames)])
        defer { fds.forEach { $0.close() } }
        if r.rc < 0 { throw GrantError.hypercall(HypercallError(operation: "GNTTABOP_setup_table", errno: -r.rc)) }
        if table == nil {
            let q = hypercalls.call(.grantTableOp, [GnttabOp.querySize.rawValue])
            maxFrames = Int(q.rc >> 32)
            guard let fd = fds.first else { throw GrantError.tableFull }
            table = try SharedMapping(fd, length: maxFrames * 4096)
        }
        let first = UInt32(max(nrFrames * GrantEntryV1.perFrame, Self.reservedEntries.index))
        nrFrames = frames
        let end = UInt32(frames * GrantEntryV1.perFrame)
        freeRefs.append(contentsOf: (first..<end).reversed().lazy.map(GrantRef.init(_:)))
    }

    private func entryWord(_ ref: GrantRef) -> UnsafeMutablePointer<UInt32> {
        (table!.base + ref.entryOffset).assumingMemoryBound(to: UInt32.self)
    }

    // MARK: grantable pages

    /// A page from the pool (the supervisor hands them out 16 at a time).
    public func allocatePage() throws -> GrantablePage {
        lock(); defer { unlock() }
        if pool.isEmpty {
            let wantMap = exposure == nil
            // 16 descriptors fit in one reply: 15 pages and the map the first time.
            let (r, fds) = hypercalls.callWithFDs(.allocGrantPages, [wantMap ? 15 : 16, wantMap ? 1 : 0])
            defer { fds.forEach { $0.close() } }
            if r.rc < 0 { throw GrantError.hypercall(HypercallError(operation: "alloc_grant_pages", errno: -r.rc)) }
            var pageFDs = fds[...]
            if wantMap {
                guard let mapFD = pageFDs.popLast(), pageFDs.count == Int(r.rc) else {
                    throw GrantError.hypercall(HypercallError(operation: "alloc_grant_pages (exposure map)", errno: XenErrno.EIO.rawValue))
                }
                exposure = try SharedMapping(mapFD, length: GrantExposureMap.bytes, writable: false)
            }
            var rd = WireReader(r.payload, what: "grant pages")
            for fd in pageFDs {
                let gfn = try rd.u64()
                let m = try SharedMapping(fd, length: 4096)
                pageMappings[gfn] = m
                pool.append(GrantablePage(gfn: gfn, base: m.base))
            }
        }
        guard let page = pool.popLast() else { throw GrantError.tableFull }
        page.base.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        return page
    }

    /// Returns a page to the pool for reuse (end its grants first).
    public func freePage(_ page: GrantablePage) {
        lock(); pool.append(page); unlock()
    }

    // MARK: granting (no hypercall)

    /// Grants `domid` access to `page`; returns the grant reference to hand to it.
    public func grantAccess(_ page: GrantablePage, to domid: UInt16, readonly: Bool = false) throws -> GrantRef {
        lock(); defer { unlock() }
        if freeRefs.isEmpty {
            if table == nil { try grow(to: 4) } else if nrFrames < maxFrames { try grow(to: min(maxFrames, nrFrames * 2)) }
        }
        guard let ref = freeRefs.popLast() else { throw GrantError.tableFull }
        let frame = (table!.base + ref.entryOffset + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self)
        frame.pointee = UInt32(truncatingIfNeeded: page.gfn)
        // Flags last, together with the domid, so the supervisor never sees a half-written entry.
        let flags = GTF.permitAccess | (readonly ? GTF.readonly : 0)
        SharedAtomic.store(entryWord(ref), UInt32(flags) | UInt32(domid) << 16)
        return ref
    }

    /// Revokes a grant; refused while the grantee has it mapped, as in Xen. When it returns, the
    /// grantee holds this page in no form: if the supervisor ever sent its descriptor to another
    /// domain (the exposure map says so), the page has been re-backed — a fresh copy mapped over
    /// it (and over its `contiguousView`s) — and whatever the grantee kept is the old page,
    /// which no longer reaches this domain. A page never exposed costs no hypercall.
    public func endAccess(_ ref: GrantRef) throws {
        if let e = endAccess([ref])[0] { throw e }
    }

    /// Ends several grants, re-backing the exposed pages with as few hypercalls as can be
    /// (16 pages each): an error per ref, nil where the access ended (and the page, if it was
    /// exposed, was re-backed).
    public func endAccess(_ refs: [GrantRef]) -> [GrantError?] {
        lock(); defer { unlock() }
        var results = [GrantError?](repeating: nil, count: refs.count)
        var exposed: [(index: Int, gfn: UInt64)] = []
        for (i, ref) in refs.enumerated() {
            guard table != nil, ref >= Self.reservedEntries, ref.index < nrFrames * GrantEntryV1.perFrame else {
                results[i] = .invalidReference(ref)
                continue
            }
            let word = entryWord(ref)
            var ended = false
            while true {
                let old = SharedAtomic.load(word)
                if UInt16(old & 0xffff) & (GTF.reading | GTF.writing) != 0 { results[i] = .stillMapped(ref); break }
                if SharedAtomic.compareExchange(word, expected: old, desired: 0) == old { ended = true; break }
            }
            guard ended else { continue }
            freeRefs.append(ref)
            // Read after the compare-and-swap: the supervisor marks a page before it can be
            // mapped (GTF_reading/writing set by its own CAS), so an access that ended here saw
            // any mapping's mark. An unmapped frame (a raw entry) has no mark.
            let gfn = UInt64((table!.base + ref.entryOffset + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee)
            if isExposed(gfn), !exposed.contains(where: { $0.gfn == gfn }) { exposed.append((i, gfn)) }
        }
        for start in stride(from: 0, to: exposed.count, by: UnixSocket.maxFDsPerMessage) {
            let batch = Array(exposed[start..<min(exposed.count, start + UnixSocket.maxFDsPerMessage)])
            for (k, failure) in reback(batch.map(\.gfn)).enumerated() where failure != nil {
                results[batch[k].index] = failure
            }
        }
        return results
    }

    private func isExposed(_ gfn: UInt64) -> Bool {
        guard let exposure, gfn >= grantPageGFNBase, gfn - grantPageGFNBase < UInt64(GrantExposureMap.maxPages),
              pageMappings[gfn] != nil else { return false }
        return SharedAtomic.load((exposure.base + Int(gfn - grantPageGFNBase) * 4).assumingMemoryBound(to: UInt32.self)) != 0
    }

    /// `rebackGrantPages` for `gfns` (caller holds the lock): maps each fresh page over the old
    /// one at its address and at every alias. A page another grantee still maps through a second
    /// grant is left as it is (the supervisor answers EBUSY; it stays exposed and is re-backed
    /// when that grant ends). A failure per gfn.
    private func reback(_ gfns: [UInt64]) -> [GrantError?] {
        var w = WireWriter()
        for gfn in gfns { w.u64(gfn) }
        let (r, fds) = hypercalls.callWithFDs(.rebackGrantPages, [], payload: w.bytes)
        var remaining = fds[...]
        defer { remaining.forEach { $0.close() } }
        var rd = WireReader(r.payload, what: "reback grant pages")
        return gfns.map { gfn in
            guard r.rc >= 0, let raw = try? rd.u32() else {
                return .rebacking(gfn: gfn, reason: "the supervisor answered \(r.rc)")
            }
            let status = Int32(bitPattern: raw)
            if status == -Int32(XenErrno.EBUSY.rawValue) { return nil }
            guard status == 0, let fd = remaining.popFirst() else {
                return .rebacking(gfn: gfn, reason: "the supervisor refused (\(status))")
            }
            defer { fd.close() }
            let places = [pageMappings[gfn]!.base] + (aliases[gfn] ?? [])
            for place in places {
                // MAP_FIXED replaces the old page's mapping in one step: no instant where the
                // address is unmapped for another thread to fault on or to map something else at.
                if case let .failure(e) = SharedMapping.map(fd, replacing: place, length: 4096) {
                    return .rebacking(gfn: gfn, reason: "mmap(MAP_FIXED): \(e)")
                }
            }
            return nil
        }
    }

    // MARK: views of grantable pages

    /// The pages seen again back to back (a multi-page ring the granter reads as one), through
    /// mremap aliases this table keeps track of: when a page's grant ends and it is re-backed,
    /// the view is re-backed with it. Aliases of grantable pages made any other way would keep
    /// the old page after a re-back (and so stay shared with the grantee): use this.
    public func contiguousView(_ pages: [GrantablePage]) throws -> UnsafeMutableRawPointer {
        lock(); defer { unlock() }
        let base = try ContiguousAlias.make(pages.map(\.base))
        for (i, page) in pages.enumerated() { aliases[page.gfn, default: []].append(base + i * 4096) }
        return base
    }

    /// Unmaps a `contiguousView` of `pages`.
    public func releaseContiguousView(_ base: UnsafeMutableRawPointer, pages: [GrantablePage]) {
        lock(); defer { unlock() }
        for (i, page) in pages.enumerated() {
            aliases[page.gfn]?.removeAll { $0 == base + i * 4096 }
            if aliases[page.gfn]?.isEmpty == true { aliases[page.gfn] = nil }
        }
        ContiguousAlias.release(base, pages: pages.count)
    }

    /// The raw v1 entry words (flags | domid << 16): lets tests and tools inspect the table.
    public func entry(_ ref: GrantRef) -> (flags: UInt16, domid: UInt16, frame: UInt32)? {
        lock(); defer { unlock() }
        guard table != nil, ref.index < nrFrames * GrantEntryV1.perFrame else { return nil }
        let w = SharedAtomic.load(entryWord(ref))
        let frame = (table!.base + ref.entryOffset + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee
        return (UInt16(w & 0xffff), UInt16(w >> 16), frame)
    }

    /// Writes a raw entry (for tests of hostile granters; real granters use `grantAccess`).
    public func writeRawEntry(_ ref: GrantRef, flags: UInt16, domid: UInt16, frame: UInt32) throws {
        lock(); defer { unlock() }
        if table == nil { try grow(to: 1) }
        guard ref.index < nrFrames * GrantEntryV1.perFrame else { throw GrantError.invalidReference(ref) }
        (table!.base + ref.entryOffset + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee = frame
        SharedAtomic.store(entryWord(ref), UInt32(flags) | UInt32(domid) << 16)
    }

    // MARK: mapping others' grants

    /// `GNTTABOP_map_grant_ref` for up to 16 grants in one hypercall.
    public func map(_ requests: [(domid: UInt16, ref: GrantRef, readonly: Bool)]) -> [Result<GrantMapping, GrantError>] {
        let reqs = requests.map { GrantMapRequest(ref: $0.ref, domid: DomID($0.domid), flags: $0.readonly ? GNTMAP_readonly : 0) }
        let (r, fds) = hypercalls.callWithFDs(.grantTableOp, [GnttabOp.mapGrantRef.rawValue], payload: GrantMapRequest.encode(reqs))
        var remaining = fds[...]
        defer { remaining.forEach { $0.close() } }
        guard r.rc >= 0, let results = try? GrantMapResult.decode(r.payload), results.count == requests.count else {
            let e = GrantError.hypercall(HypercallError(operation: "GNTTABOP_map_grant_ref", errno: r.rc < 0 ? -r.rc : XenErrno.EIO.rawValue))
            return requests.map { _ in .failure(e) }
        }
        return zip(requests, results).map { req, res in
            guard res.status == .okay, let fd = remaining.popFirst() else { return .failure(.status(res.status, operation: "GNTTABOP_map_grant_ref")) }
            defer { fd.close() }
            guard case let .success(p) = SharedMapping.map(fd, length: 4096, protection: req.readonly ? .read : .readWrite) else {
                return .failure(.status(.generalError, operation: "mmap of grant"))
            }
            return .success(GrantMapping(handle: res.handle, granter: req.domid, ref: req.ref, readonly: req.readonly, base: p))
        }
    }

    /// `GNTTABOP_map_grant_ref` for one grant, handing back the page's descriptor unmapped: for
    /// callers that map it their own way, and for tests of a grantee that keeps it. Unmap the
    /// handle with `unmapHandleOnly`.
    public func mapDescriptor(domid: UInt16, ref: GrantRef, readonly: Bool = false) throws -> (handle: UInt32, fd: FileDescriptor) {
        let req = GrantMapRequest(ref: ref, domid: DomID(domid), flags: readonly ? GNTMAP_readonly : 0)
        let (r, fds) = hypercalls.callWithFDs(.grantTableOp, [GnttabOp.mapGrantRef.rawValue], payload: GrantMapRequest.encode([req]))
        guard r.rc >= 0, let res = try? GrantMapResult.decode(r.payload), res.count == 1 else {
            fds.forEach { $0.close() }
            throw GrantError.hypercall(HypercallError(operation: "GNTTABOP_map_grant_ref", errno: r.rc < 0 ? -r.rc : XenErrno.EIO.rawValue))
        }
        guard res[0].status == .okay, let fd = fds.first else {
            fds.forEach { $0.close() }
            throw GrantError.status(res[0].status, operation: "GNTTABOP_map_grant_ref")
        }
        return (res[0].handle, fd)
    }

    /// Maps one grant.
    public func map(domid: UInt16, ref: GrantRef, readonly: Bool = false) throws -> GrantMapping {
        try map([(domid, ref, readonly)])[0].get()
    }

    /// Handles per unmap hypercall (the supervisor refuses bigger lists).
    public static let maxUnmapBatch = 64

    /// `GNTTABOP_unmap_grant_ref`: unmaps here, then tells the supervisor (Xen's GTF_reading/
    /// writing bookkeeping), in batches of `maxUnmapBatch`.
    public func unmap(_ mappings: [GrantMapping]) -> [GNTST] {
        if mappings.count > Self.maxUnmapBatch {
            return stride(from: 0, to: mappings.count, by: Self.maxUnmapBatch).flatMap {
                unmap(Array(mappings[$0..<min(mappings.count, $0 + Self.maxUnmapBatch)]))
            }
        }
        var w = WireWriter()
        for m in mappings {
            if m.mapped { SharedMapping.unmap(m.base, length: 4096); m.mapped = false }
            w.u32(m.handle)
        }
        let r = hypercalls.call(.grantTableOp, [GnttabOp.unmapGrantRef.rawValue], payload: w.bytes)
        guard r.rc >= 0, let s = try? GrantStatusList.decode(r.payload), s.count == mappings.count else {
            return mappings.map { _ in .generalError }
        }
        return s
    }

    public func unmap(_ m: GrantMapping) throws {
        let s = unmap([m])[0]
        if s != .okay { throw GrantError.status(s, operation: "GNTTABOP_unmap_grant_ref") }
    }

    /// Maps `refs` of `domid` back to back (a multi-page ring: `ring-ref0` … `ring-refN`), 16 per
    /// hypercall. All or nothing: on any failure what was mapped is unmapped and the first
    /// failure thrown.
    public func mapRun(domid: UInt16, refs: [GrantRef], readonly: Bool = false) throws -> GrantMappingRun {
        precondition(!refs.isEmpty)
        var mapped: [GrantMapping] = []
        var failure: GrantError?
        for start in stride(from: 0, to: refs.count, by: 16) {
            for r in map(refs[start..<min(refs.count, start + 16)].map { (domid, $0, readonly) }) {
                switch r {
                case let .success(m): mapped.append(m)
                case let .failure(e): failure = failure ?? e
                }
            }
            if failure != nil { break }
        }
        if let failure {
            _ = unmap(mapped)
            throw failure
        }
        if mapped.count == 1 { return GrantMappingRun(base: mapped[0].base, mappings: mapped, aliased: false) }
        do {
            let base = try ContiguousAlias.make(mapped.map(\.base))
            return GrantMappingRun(base: base, mappings: mapped, aliased: true)
        } catch {
            _ = unmap(mapped)
            throw GrantError.status(.generalError, operation: "contiguous mapping of \(refs.count) grants: \(error)")
        }
    }

    /// Unmaps a run (its contiguous view first, then the pages).
    public func unmap(_ run: GrantMappingRun) -> [GNTST] {
        if run.aliased { ContiguousAlias.release(run.base, pages: run.mappings.count); run.aliased = false }
        return unmap(run.mappings)
    }

    /// Unmaps with a raw handle only (no munmap here): for tests of a grantee that keeps its mapping.
    public func unmapHandleOnly(_ handle: UInt32) -> GNTST {
        var w = WireWriter()
        w.u32(handle)
        let r = hypercalls.call(.grantTableOp, [GnttabOp.unmapGrantRef.rawValue], payload: w.bytes)
        return (try? GrantStatusList.decode(r.payload))?.first ?? .generalError
    }

    /// `GNTTABOP_copy`: the supervisor copies between the two sides; a status per op.
    public func copy(_ ops: [GrantCopy]) -> [GNTST] {
        let r = hypercalls.call(.grantTableOp, [GnttabOp.copy.rawValue], payload: GrantCopy.encode(ops))
        guard r.rc >= 0, let s = try? GrantStatusList.decode(r.payload), s.count == ops.count else { return ops.map { _ in .generalError } }
        return s
    }
}

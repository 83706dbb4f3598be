import LinuxHost
import Logging
import ProcvisorABI

/// A grantable page: a memfd of its own, so a grantee can be handed exactly this page and
/// nothing else. Mappings in other domains keep it alive after its owner dies.
///
/// The memfd is sealed against resizing (`MemFDSeals.handedOut`) before any descriptor of it
/// exists outside this object, so the supervisor's own mapping (grant copy, re-backing) can never
/// fault past EOF: no domain can make it raise SIGBUS here.
final class GrantPage {
    static var nextSerial: UInt64 = 1
    /// Pages alive (each holds one descriptor here), whoever owns them: the descriptor budget
    /// counts these, including pages of dead granters that maptracks keep.
    static var live = 0
    let name: String
    let fd: FileDescriptor
    let owner: DomID
    let gfn: UInt64
    /// Maptrack entries (in any grantee) holding this page.
    var mapCount = 0

    init(owner: DomID, gfn: UInt64) throws {
        name = "pv-gnt-\(GrantPage.nextSerial)"
        GrantPage.nextSerial += 1
        fd = try MemFD.create(name: name, size: 4096)
        self.owner = owner
        self.gfn = gfn
        GrantPage.live += 1
    }

    /// A page a live update handed over.
    init(adopting i: GrantPageImage) {
        name = i.name
        fd = FileDescriptor(rawValue: i.fd)
        owner = DomID(i.owner)
        gfn = i.gfn
        mapCount = i.mapCount
        GrantPage.live += 1
    }

    deinit {
        fd.close()
        GrantPage.live -= 1
    }

    /// The supervisor's own mapping (for grant copy), made on first use and kept while it is
    /// among the `maxMapped` most recently mapped pages: no number of grant pages can exhaust the
    /// supervisor's mappings (`vm.max_map_count`, whose exhaustion would fail its own
    /// allocations). Call `makeRoom` before taking pointers that must stay valid together.
    func bytes() throws -> UnsafeMutableRawPointer {
        if let mapping { return mapping.base }
        let m = try SharedMapping(fd, length: 4096)
        mapping = m
        Self.mapped.append(WeakGrantPage(page: self))
        return m.base
    }

    private var mapping: SharedMapping?
    /// Pages that have (or had) a supervisor mapping, oldest first.
    private static var mapped: [WeakGrantPage] = []
    static var maxMapped = 4096

    /// How many pages have a supervisor mapping now.
    static var mappedCount: Int { mapped.reduce(0) { $0 + ($1.page?.mapping != nil ? 1 : 0) } }

    /// Unmaps the oldest kept mappings until `count` more fit under `maxMapped`.
    static func makeRoom(_ count: Int) {
        let excess = mapped.count + count - maxMapped
        guard excess > 0 else { return }
        for w in mapped.prefix(excess) { w.page?.mapping = nil }
        mapped.removeFirst(min(excess, mapped.count))
    }

    /// Copies `count` bytes at `offset` of this page into `buffer` (positioned reads, no mapping).
    func read(into buffer: UnsafeMutableRawPointer, offset: Int, count: Int) throws {
        var done = 0
        while done < count {
            let n = try fd.read(into: UnsafeMutableRawBufferPointer(start: buffer + done, count: count - done), at: Int64(offset + done))
            guard n > 0 else { throw SystemError("pread", "\(name)", errno: .ioError) }
            done += n
        }
    }

    /// Writes `count` bytes of `buffer` at `offset` of this page.
    func write(from buffer: UnsafeRawPointer, offset: Int, count: Int) throws {
        var done = 0
        while done < count {
            let n = try fd.write(from: UnsafeRawBufferPointer(start: buffer + done, count: count - done), at: Int64(offset + done))
            guard n > 0 else { throw SystemError("pwrite", "\(name)", errno: .ioError) }
            done += n
        }
    }

    /// A descriptor for this page alone, read-only when `readonly`: mmap(PROT_WRITE) of it fails.
    func descriptor(readonly: Bool) throws -> FileDescriptor {
        if !readonly { return fd }
        return try FileDescriptor.open("/proc/self/fd/\(fd.rawValue)", .readOnly)
    }
}

struct WeakGrantPage {
    weak var page: GrantPage?
}

/// One mapping a grantee holds (Xen's maptrack entry).
struct MapTrackEntry {
    let granter: DomID
    let ref: GrantRef
    let page: GrantPage
    let readonly: Bool
}

/// A domain's grant state: its table (as granter), its grantable pages, its mappings (as grantee).
final class DomainGrants {
    /// The most grantable pages one domain may hold, whatever the descriptor budget allows.
    static let maxPages = GrantExposureMap.maxPages
    let maxFrames: Int
    var nrFrames = 0
    var tableFD: FileDescriptor?
    var table: SharedMapping?
    var pages: [UInt64: GrantPage] = [:]
    var nextGFN = grantPageGFNBase
    /// gfns of freed pages, reused first: every live page's gfn stays below
    /// `grantPageGFNBase + maxPages`, inside the exposure map.
    var freeGFNs: [UInt64] = []
    /// The exposure map (`GrantExposureMap`): written here, read-only and sealed for the domain.
    var exposure: (fd: FileDescriptor, readOnlyFD: FileDescriptor, mapping: SharedMapping)?
    /// A budget refusal was logged since the domain last held fewer pages (one line, not a flood).
    var budgetRefusalLogged = false
    var maptrack: [UInt32: MapTrackEntry] = [:]
    var nextHandle: UInt32 = 1
    /// Active mappings of this domain's grant entries by others: (readers, writers) per ref.
    var active: [GrantRef: (readers: Int, writers: Int)] = [:]

    init(maxFrames: Int) { self.maxFrames = maxFrames }

    deinit {
        tableFD?.close()
        exposure?.fd.close()
        exposure?.readOnlyFD.close()
    }

    func allocateGFN() -> UInt64 {
        if let gfn = freeGFNs.popLast() { return gfn }
        nextGFN += 1
        return nextGFN - 1
    }

    private func exposureWord(_ gfn: UInt64) -> UnsafeMutablePointer<UInt32>? {
        guard let exposure, gfn >= grantPageGFNBase, gfn - grantPageGFNBase < UInt64(Self.maxPages) else { return nil }
        return (exposure.mapping.base + Int(gfn - grantPageGFNBase) * 4).assumingMemoryBound(to: UInt32.self)
    }

    /// Marks `page` exposed (its descriptor is about to leave for another domain), or not. The
    /// mark is stored before the descriptor is sent and before the entry's GTF_reading/writing
    /// can be cleared again (both after this store, the clear by an atomic RMW), so a granter
    /// whose endAccess compare-and-swap succeeds always sees it.
    func setExposed(_ page: GrantPage, _ exposed: Bool) {
        guard let w = exposureWord(page.gfn) else { return }
        SharedAtomic.store(w, exposed ? 1 : 0)
    }

    func isExposed(_ page: GrantPage) -> Bool {
        guard let w = exposureWord(page.gfn) else { return false }
        return SharedAtomic.load(w) != 0
    }

    var entryCount: Int { nrFrames * GrantEntryV1.perFrame }

    /// flags (low 16 bits) and domid (high 16 bits) of an entry, read and swapped together.
    func entryWord(_ ref: GrantRef) -> UnsafeMutablePointer<UInt32>? {
        guard let table, ref.index < entryCount else { return nil }
        return (table.base + ref.entryOffset).assumingMemoryBound(to: UInt32.self)
    }

    func frame(_ ref: GrantRef) -> UInt32 {
        (table!.base + ref.entryOffset + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee
    }
}

/// Xen's grant tables as a service of the supervisor: every domain's table, grantable pages and
/// maptrack, and the operations on them (`grant_table_op`, the grantable-page calls). It owns its
/// state; what it needs of the rest of the supervisor comes through the closures below, so it runs
/// in a unit test with no domain process at all.
final class GrantService {
    /// Grant table frames a domain may set up.
    let maxFrames: Int
    private(set) var tables: [DomID: DomainGrants] = [:]
    /// Whether a domain is alive (its process runs): only a live domain's entries can be mapped or
    /// copied from.
    var isLive: (DomID) -> Bool = { _ in true }
    /// How many more grantable pages a domain may have now, and the words for a refusal (the
    /// supervisor's descriptor budget).
    var pageRoom: (DomID, DomainGrants) -> (room: Int, refusal: String) = { _, _ in (DomainGrants.maxPages, "") }
    /// A line in the hypervisor log (`xl dmesg`).
    var log: (String) -> Void = { _ in }
    var logger: Logger

    init(maxFrames: Int, logger: Logger) {
        self.maxFrames = maxFrames
        self.logger = logger
    }

    func adoptTable(_ domid: DomID, _ g: DomainGrants) { tables[domid] = g }

    /// `domid`'s grant state, made on first use.
    func grants(_ domid: DomID) -> DomainGrants {
        if let g = tables[domid] { return g }
        let g = DomainGrants(maxFrames: maxFrames)
        tables[domid] = g
        return g
    }

    /// `PROCVISOR allocGrantPages`: new grantable pages, one memfd each; with args[1] = 1 the
    /// domain's exposure map (read-only) comes after them.
    func allocPages(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        let wantMap = r.args.count > 1 && r.args[1] == 1
        var count = Int(min(r.args[0], 64))
        guard count >= 1, count + (wantMap ? 1 : 0) <= UnixSocket.maxFDsPerMessage else { return .error(.EINVAL) }
        let g = grants(domid)
        // Fewer than asked when that is all the budget leaves (rc says how many); none: ENOMEM.
        let (room, refusal) = pageRoom(domid, g)
        count = min(count, room)
        if count == 0 {
            if !g.budgetRefusalLogged {
                g.budgetRefusalLogged = true
                log(refusal)
                logger.warning("grantable pages refused", metadata: ["domid": "\(domid)", "reason": "\(refusal)"])
            }
            return .error(.ENOMEM)
        }
        if g.exposure == nil {
            do {
                g.exposure = try MemFD.createReadOnlyShared(name: "pv-gntexp-\(domid)", size: GrantExposureMap.bytes)
            } catch {
                logger.error("cannot create the grant exposure map", metadata: ["domid": "\(domid)", "error": "\(error)"])
                return .error(.ENOMEM)
            }
        }
        var w = WireWriter()
        var fds: [FileDescriptor] = []
        for _ in 0..<count {
            let gfn = g.allocateGFN()
            guard let page = try? GrantPage(owner: domid, gfn: gfn) else {
                g.freeGFNs.append(gfn)
                return .error(.ENOMEM)
            }
            g.pages[page.gfn] = page
            g.setExposed(page, false)
            fds.append(page.fd)
            w.u64(page.gfn)
        }
        if wantMap, let exposure = g.exposure { fds.append(exposure.readOnlyFD) }
        return .ok(Int64(count), w.bytes, fds: fds)
    }

    func freePage(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        let g = grants(domid)
        guard let page = g.pages[r.args[0]] else { return .error(.EINVAL) }
        // A page still mapped by someone cannot go back (its entries say GTF_reading/writing).
        if page.mapCount > 0 { return .error(.EBUSY) }
        g.pages[r.args[0]] = nil
        // Whatever a grantee kept of it is that memfd; the gfn's next page is a new one.
        g.setExposed(page, false)
        g.freeGFNs.append(page.gfn)
        g.budgetRefusalLogged = false
        return .ok()
    }

    /// `PROCVISOR rebackGrantPages`: the granter ended access to these exposed pages. Each gets a
    /// fresh memfd with the page's current contents, which takes its place here (grant copy and
    /// later maps use it) and goes to the granter to map over the old one; the old memfd is
    /// dropped, so it lives on only in what a grantee kept (a descriptor, a mapping, a registered
    /// buffer) and no longer reaches the granter. Refused (-EBUSY) for a page still mapped
    /// through another grant: that grantee is entitled to it; the page stays exposed and is
    /// re-backed when that grant ends.
    func reback(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        guard r.payload.count % 8 == 0, !r.payload.isEmpty, r.payload.count / 8 <= UnixSocket.maxFDsPerMessage else {
            return .malformed("reback grant pages: bad gfn list")
        }
        let g = grants(domid)
        var rd = WireReader(r.payload, what: "reback grant pages")
        var w = WireWriter()
        var fds: [FileDescriptor] = []
        for _ in 0..<(r.payload.count / 8) {
            guard let gfn = try? rd.u64(), let old = g.pages[gfn] else { w.u32(UInt32(truncatingIfNeeded: -Int64(XenErrno.EINVAL.rawValue))); continue }
            if old.mapCount > 0 { w.u32(UInt32(truncatingIfNeeded: -Int64(XenErrno.EBUSY.rawValue))); continue }
            let copied = try? withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 64) { buffer -> GrantPage in
                let fresh = try GrantPage(owner: domid, gfn: gfn)
                try old.read(into: buffer.baseAddress!, offset: 0, count: 4096)
                try fresh.write(from: buffer.baseAddress!, offset: 0, count: 4096)
                return fresh
            }
            guard let fresh = copied else {
                w.u32(UInt32(truncatingIfNeeded: -Int64(XenErrno.ENOMEM.rawValue)))
                continue
            }
            g.pages[gfn] = fresh
            g.setExposed(fresh, false)
            fds.append(fresh.fd)
            w.u32(0)
        }
        return .ok(Int64(fds.count), w.bytes, fds: fds)
    }

    /// `__HYPERVISOR_grant_table_op`.
    func tableOp(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        let g = grants(domid)
        switch GnttabOp(rawValue: r.args[0]) {
        case .setupTable:
            let want = Int(min(r.args[1], UInt64(Int32.max)))
            guard want >= 1, want <= g.maxFrames else { return .error(.EINVAL) }
            if g.tableFD == nil {
                do {
                    let fd = try MemFD.create(name: "pv-gnttab-\(domid)", size: g.maxFrames * 4096)
                    g.tableFD = fd
                    g.table = try SharedMapping(fd, length: g.maxFrames * 4096)
                } catch {
                    return .error(.ENOMEM)
                }
            }
            g.nrFrames = max(g.nrFrames, want)
            return .ok(0, fds: [g.tableFD!])
        case .querySize:
            return .ok(Int64(g.nrFrames) | Int64(g.maxFrames) << 32)
        case .mapGrantRef:
            guard let reqs = try? GrantMapRequest.decode(r.payload), !reqs.isEmpty, reqs.count <= UnixSocket.maxFDsPerMessage else {
                return .malformed("grant map: bad request list")
            }
            var results: [GrantMapResult] = []
            var fds: [FileDescriptor] = [], owned: [FileDescriptor] = []
            for q in reqs {
                let (status, handle, fd) = map(domid, q)
                results.append(GrantMapResult(status: status, handle: handle))
                if let fd {
                    fds.append(fd.fd)
                    if fd.owned { owned.append(fd.fd) }
                }
            }
            return .ok(0, GrantMapResult.encode(results), fds: fds, owned: owned)
        case .unmapGrantRef:
            guard r.payload.count % 4 == 0, !r.payload.isEmpty, r.payload.count <= 4 * 64 else {
                return .malformed("grant unmap: bad handle list")
            }
            var rd = WireReader(r.payload, what: "grant unmap")
            var statuses: [GNTST] = []
            for _ in 0..<(r.payload.count / 4) {
                statuses.append(unmap(domid, handle: (try? rd.u32()) ?? 0))
            }
            return .ok(0, GrantStatusList.encode(statuses))
        case .copy:
            guard let ops = try? GrantCopy.decode(r.payload), !ops.isEmpty, ops.count <= 256 else {
                return .malformed("grant copy: bad op list")
            }
            // Room for every page the batch may map, made before any pointer is taken.
            GrantPage.makeRoom(2 * ops.count)
            return .ok(0, GrantStatusList.encode(ops.map { copy(domid, $0) }))
        case nil:
            return .error(.ENOSYS)
        }
    }

    /// Validates the granter's entry and hands back a descriptor for exactly that page.
    /// The descriptor comes back `owned` when it is a read-only reopen the caller must close after sending.
    func map(_ domid: DomID, _ q: GrantMapRequest) -> (GNTST, UInt32, (fd: FileDescriptor, owned: Bool)?) {
        guard q.domid != domid, isLive(q.domid), let gg = tables[q.domid] else { return (.badDomain, 0, nil) }
        guard let word = gg.entryWord(q.ref) else { return (.badGntref, 0, nil) }
        let g = grants(domid)
        guard g.maptrack.count < 65536 else { return (.noSpace, 0, nil) }
        let readonly = q.flags & GNTMAP_readonly != 0
        // Set GTF_reading/GTF_writing atomically against a granter rewriting the entry.
        var tries = 0
        while true {
            let old = SharedAtomic.load(word)
            let flags = UInt16(old & 0xffff), entryDomid = DomID(UInt16(old >> 16))
            guard flags & GTF.typeMask == GTF.permitAccess else { return (.badGntref, 0, nil) }
            guard entryDomid == domid else { return (.permissionDenied, 0, nil) }
            if !readonly && flags & GTF.readonly != 0 { return (.permissionDenied, 0, nil) }
            let new = old | UInt32(GTF.reading) | (readonly ? 0 : UInt32(GTF.writing))
            if SharedAtomic.compareExchange(word, expected: old, desired: new) == old { break }
            tries += 1
            if tries > 16 { return (.eagain, 0, nil) }
        }
        guard let page = gg.pages[UInt64(gg.frame(q.ref))] else {
            releaseEntry(gg, q.ref)
            return (.badPage, 0, nil)
        }
        guard let fd = try? page.descriptor(readonly: readonly) else {
            releaseEntry(gg, q.ref)
            return (.generalError, 0, nil)
        }
        let sent = (fd: fd, owned: readonly)
        // Exposed before the descriptor leaves (the reply is sent after dispatch returns).
        gg.setExposed(page, true)
        page.mapCount += 1
        var counts = gg.active[q.ref] ?? (0, 0)
        if readonly { counts.readers += 1 } else { counts.writers += 1 }
        gg.active[q.ref] = counts
        let handle = g.nextHandle
        g.nextHandle = g.nextHandle == UInt32.max ? 1 : g.nextHandle + 1
        g.maptrack[handle] = MapTrackEntry(granter: q.domid, ref: q.ref, page: page, readonly: readonly)
        return (.okay, handle, sent)
    }

    /// Clears the entry's GTF_reading/writing bits that no mapping needs any more.
    func releaseEntry(_ gg: DomainGrants, _ ref: GrantRef) {
        guard let word = gg.entryWord(ref) else { return }
        let counts = gg.active[ref] ?? (0, 0)
        var clear: UInt32 = 0
        if counts.writers == 0 { clear |= UInt32(GTF.writing) }
        if counts.readers == 0 && counts.writers == 0 { clear |= UInt32(GTF.reading); gg.active[ref] = nil }
        for _ in 0..<16 {
            let old = SharedAtomic.load(word)
            if SharedAtomic.compareExchange(word, expected: old, desired: old & ~clear) == old { return }
        }
    }

    /// The grantee says it unmapped: Xen's bookkeeping only (GTF_reading/GTF_writing). Nothing
    /// here checks what the grantee really let go of, and nothing needs to: the page is marked
    /// exposed, so when the granter ends access it is re-backed (`rebackGrantPages`) and whatever
    /// the grantee kept is detached from the granter by construction.
    func unmap(_ domid: DomID, handle: UInt32) -> GNTST {
        guard grants(domid).maptrack[handle] != nil else { return .badHandle }
        dropMapping(domid, handle: handle)
        return .okay
    }

    func dropMapping(_ domid: DomID, handle: UInt32) {
        guard let g = tables[domid], let entry = g.maptrack.removeValue(forKey: handle) else { return }
        entry.page.mapCount -= 1
        guard let gg = tables[entry.granter] else { return }
        var counts = gg.active[entry.ref] ?? (0, 0)
        if entry.readonly { counts.readers = max(0, counts.readers - 1) } else { counts.writers = max(0, counts.writers - 1) }
        gg.active[entry.ref] = counts
        releaseEntry(gg, entry.ref)
    }

    /// One `gnttab_copy` op: each side a gref granted to the caller or one of the caller's frames.
    func copy(_ domid: DomID, _ op: GrantCopy) -> GNTST {
        guard op.length > 0, Int(op.source.offset) + Int(op.length) <= 4096, Int(op.dest.offset) + Int(op.length) <= 4096 else {
            return .badCopyArg
        }
        func resolve(_ side: GrantCopy.Side, isGref: Bool, write: Bool) -> Result<GrantPage, GNTST> {
            if !isGref {
                guard side.domid == DOMID_SELF || side.domid == domid else { return .failure(.permissionDenied) }
                guard let page = tables[domid]?.pages[side.refOrGFN] else { return .failure(.badPage) }
                return .success(page)
            }
            guard side.domid != domid, isLive(side.domid), let gg = tables[side.domid] else {
                return .failure(.badDomain)
            }
            guard side.refOrGFN <= UInt64(UInt32.max), let word = gg.entryWord(GrantRef(UInt32(side.refOrGFN))) else { return .failure(.badGntref) }
            let v = SharedAtomic.load(word)
            let flags = UInt16(v & 0xffff)
            guard flags & GTF.typeMask == GTF.permitAccess else { return .failure(.badGntref) }
            guard DomID(UInt16(v >> 16)) == domid else { return .failure(.permissionDenied) }
            if write && flags & GTF.readonly != 0 { return .failure(.permissionDenied) }
            guard let page = gg.pages[UInt64(gg.frame(GrantRef(UInt32(side.refOrGFN))))] else { return .failure(.badPage) }
            return .success(page)
        }
        let src = resolve(op.source, isGref: op.flags & GNTCOPY_source_gref != 0, write: false)
        let dst = resolve(op.dest, isGref: op.flags & GNTCOPY_dest_gref != 0, write: true)
        switch (src, dst) {
        case let (.success(s), .success(d)):
            guard let sp = try? s.bytes(), let dp = try? d.bytes() else { return .generalError }
            (dp + Int(op.dest.offset)).copyMemory(from: sp + Int(op.source.offset), byteCount: Int(op.length))
            return .okay
        case let (.failure(e), _), let (_, .failure(e)):
            return e
        }
    }

    /// A domain is gone: its mappings of others went with its process; release them. Pages
    /// others still map stay alive through their maptrack entries.
    func release(_ domid: DomID) {
        guard let g = tables[domid] else { return }
        for handle in Array(g.maptrack.keys) { dropMapping(domid, handle: handle) }
        tables[domid] = nil
    }
}

extension GrantService {
    /// What a live update hands over: every page (those of dead granters that maptracks keep
    /// included), every table and maptrack. The descriptors it names go into `keep`.
    func image(keep: inout [FileDescriptor]) -> GrantImage {
        var pages: [Int32: GrantPageImage] = [:]
        func note(_ p: GrantPage) -> Int32 {
            if pages[p.fd.rawValue] == nil {
                pages[p.fd.rawValue] = GrantPageImage(fd: p.fd.rawValue, name: p.name, owner: p.owner.rawValue, gfn: p.gfn, mapCount: p.mapCount)
                keep.append(p.fd)
            }
            return p.fd.rawValue
        }
        let images = tables.sorted { $0.key < $1.key }.map { domid, g -> DomainGrantsImage in
            if let fd = g.tableFD { keep.append(fd) }
            if let e = g.exposure { keep += [e.fd, e.readOnlyFD] }
            return DomainGrantsImage(
                domid: domid.rawValue, maxFrames: g.maxFrames, nrFrames: g.nrFrames, tableFD: g.tableFD?.rawValue,
                pages: g.pages.mapValues(note), nextGFN: g.nextGFN, freeGFNs: g.freeGFNs,
                exposureFD: g.exposure?.fd.rawValue, exposureReadOnlyFD: g.exposure?.readOnlyFD.rawValue,
                budgetRefusalLogged: g.budgetRefusalLogged,
                maptrack: g.maptrack.sorted { $0.key < $1.key }.map { h, e in
                    MapTrackImage(handle: h, granter: e.granter.rawValue, ref: e.ref.rawValue, page: note(e.page), readonly: e.readonly)
                },
                nextHandle: g.nextHandle,
                active: Dictionary(uniqueKeysWithValues: g.active.map { ($0.key.rawValue, [$0.value.readers, $0.value.writers]) }))
        }
        return GrantImage(nextSerial: GrantPage.nextSerial, pages: pages.values.sorted { $0.fd < $1.fd }, tables: images)
    }

    /// Takes over what `image` describes (the service is new and empty).
    func adopt(_ i: GrantImage) throws {
        var pages: [Int32: GrantPage] = [:]
        for p in i.pages { pages[p.fd] = GrantPage(adopting: p) }
        func page(_ fd: Int32, _ what: String) throws -> GrantPage {
            guard let p = pages[fd] else { throw LiveUpdateError.badState("grant tables: \(what) names page descriptor \(fd), which is not in the state") }
            return p
        }
        for t in i.tables {
            let g = DomainGrants(maxFrames: t.maxFrames)
            g.nrFrames = t.nrFrames
            if let fd = t.tableFD {
                g.tableFD = FileDescriptor(rawValue: fd)
                g.table = try SharedMapping(g.tableFD!, length: t.maxFrames * 4096)
            }
            for (gfn, fd) in t.pages { g.pages[gfn] = try page(fd, "dom\(t.domid) gfn \(gfn)") }
            g.nextGFN = t.nextGFN
            g.freeGFNs = t.freeGFNs
            if let fd = t.exposureFD, let ro = t.exposureReadOnlyFD {
                let f = FileDescriptor(rawValue: fd)
                g.exposure = (f, FileDescriptor(rawValue: ro), try SharedMapping(f, length: GrantExposureMap.bytes))
            }
            g.budgetRefusalLogged = t.budgetRefusalLogged
            for m in t.maptrack {
                g.maptrack[m.handle] = MapTrackEntry(granter: DomID(m.granter), ref: GrantRef(rawValue: m.ref),
                                                     page: try page(m.page, "dom\(t.domid) handle \(m.handle)"), readonly: m.readonly)
            }
            g.nextHandle = t.nextHandle
            for (ref, rw) in t.active where rw.count == 2 { g.active[GrantRef(rawValue: ref)] = (rw[0], rw[1]) }
            adoptTable(DomID(t.domid), g)
        }
        GrantPage.nextSerial = max(GrantPage.nextSerial, i.nextSerial)
    }
}

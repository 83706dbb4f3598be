import Glibc
import LinuxHost
import ProcvisorABI

/// A grantable page: a memfd of its own, so a grantee can be handed exactly this page and
/// nothing else. Mappings in other domains keep it alive after its owner dies.
final class GrantPage {
    static var nextSerial: UInt64 = 1
    let name: String
    let fd: FileDescriptor
    let owner: UInt16
    let gfn: UInt64
    private var mapping: SharedMapping?

    init(owner: UInt16, gfn: UInt64) throws {
        name = "pv-gnt-\(GrantPage.nextSerial)"
        GrantPage.nextSerial += 1
        fd = try MemFD.create(name: name, size: 4096)
        self.owner = owner
        self.gfn = gfn
    }

    deinit { fd.close() }

    /// The supervisor's own mapping (for grant copy), made on first use.
    func bytes() throws -> UnsafeMutableRawPointer {
        if let mapping { return mapping.base }
        let m = try SharedMapping(fd, length: 4096)
        mapping = m
        return m.base
    }

    /// A descriptor for this page alone, read-only when `readonly`: mmap(PROT_WRITE) of it fails.
    func descriptor(readonly: Bool) throws -> FileDescriptor {
        if !readonly { return fd }
        return try FileDescriptor.open("/proc/self/fd/\(fd.rawValue)", O_RDONLY)
    }
}

/// One mapping a grantee holds (Xen's maptrack entry).
struct MapTrackEntry {
    let granter: UInt16
    let ref: GrantRef
    let page: GrantPage
    let readonly: Bool
}

/// A domain's grant state: its table (as granter), its grantable pages, its mappings (as grantee).
final class DomainGrants {
    static let maxPages = 4096
    let maxFrames: Int
    var nrFrames = 0
    var tableFD: FileDescriptor?
    var table: SharedMapping?
    var pages: [UInt64: GrantPage] = [:]
    var nextGFN = grantPageGFNBase
    var maptrack: [UInt32: MapTrackEntry] = [:]
    var nextHandle: UInt32 = 1
    /// Active mappings of this domain's grant entries by others: (readers, writers) per ref.
    var active: [GrantRef: (readers: Int, writers: Int)] = [:]

    init(maxFrames: Int) { self.maxFrames = maxFrames }

    deinit { tableFD?.close() }

    var entryCount: Int { nrFrames * GrantEntryV1.perFrame }

    /// flags (low 16 bits) and domid (high 16 bits) of an entry, read and swapped together.
    func entryWord(_ ref: GrantRef) -> UnsafeMutablePointer<UInt32>? {
        guard let table, Int(ref) < entryCount else { return nil }
        return (table.base + Int(ref) * GrantEntryV1.size).assumingMemoryBound(to: UInt32.self)
    }

    func frame(_ ref: GrantRef) -> UInt32 {
        (table!.base + Int(ref) * GrantEntryV1.size + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee
    }
}

extension Supervisor {
    func grants(_ dom: DomainRecord) -> DomainGrants {
        if let g = dom.grants { return g }
        let g = DomainGrants(maxFrames: options.maxGrantFrames)
        dom.grants = g
        return g
    }

    /// `PROCVISOR allocGrantPages`: new grantable pages, one memfd each.
    func allocGrantPages(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallReply {
        let count = Int(min(r.args[0], 64))
        guard count >= 1, count <= UnixSocket.maxFDsPerMessage else { return .error(r.seq, .EINVAL) }
        let g = grants(dom)
        guard g.pages.count + count <= DomainGrants.maxPages else { return .error(r.seq, .ENOMEM) }
        var w = WireWriter()
        var fds: [FileDescriptor] = []
        for _ in 0..<count {
            guard let page = try? GrantPage(owner: dom.domid, gfn: g.nextGFN) else { return .error(r.seq, .ENOMEM) }
            g.nextGFN += 1
            g.pages[page.gfn] = page
            fds.append(page.fd)
            w.u64(page.gfn)
        }
        replyFDs = fds
        return HypercallReply(seq: r.seq, rc: Int64(count), payload: w.bytes)
    }

    func freeGrantPage(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallReply {
        let g = grants(dom)
        guard let page = g.pages[r.args[0]] else { return .error(r.seq, .EINVAL) }
        // A page still mapped by someone cannot go back (its entries say GTF_reading/writing).
        let mapped = domains.values.contains { $0.grants?.maptrack.values.contains { $0.page === page } ?? false }
        if mapped { return .error(r.seq, .EBUSY) }
        g.pages[r.args[0]] = nil
        return HypercallReply(seq: r.seq, rc: 0)
    }

    /// `__HYPERVISOR_grant_table_op`.
    func grantTableOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallReply {
        let seq = r.seq
        let g = grants(dom)
        switch GnttabOp(rawValue: r.args[0]) {
        case .setupTable:
            let want = Int(min(r.args[1], UInt64(Int32.max)))
            guard want >= 1, want <= g.maxFrames else { return .error(seq, .EINVAL) }
            if g.tableFD == nil {
                do {
                    let fd = try MemFD.create(name: "pv-gnttab-\(dom.domid)", size: g.maxFrames * 4096)
                    g.tableFD = fd
                    g.table = try SharedMapping(fd, length: g.maxFrames * 4096)
                } catch {
                    return .error(seq, .ENOMEM)
                }
            }
            g.nrFrames = max(g.nrFrames, want)
            replyFDs = [g.tableFD!]
            return HypercallReply(seq: seq, rc: 0)
        case .querySize:
            return HypercallReply(seq: seq, rc: Int64(g.nrFrames) | Int64(g.maxFrames) << 32)
        case .mapGrantRef:
            guard let reqs = try? GrantMapRequest.decode(r.payload), !reqs.isEmpty, reqs.count <= UnixSocket.maxFDsPerMessage else {
                malformed(dom, seq: seq, "grant map: bad request list")
                return .error(seq, .EINVAL)
            }
            var results: [GrantMapResult] = []
            var fds: [FileDescriptor] = []
            for q in reqs {
                let (status, handle, fd) = mapGrant(dom, q)
                results.append(GrantMapResult(status: status, handle: handle))
                if let fd {
                    fds.append(fd.fd)
                    if fd.owned { replyOwnedFDs.append(fd.fd) }
                }
            }
            replyFDs = fds
            return HypercallReply(seq: seq, rc: 0, payload: GrantMapResult.encode(results))
        case .unmapGrantRef:
            guard r.payload.count % 4 == 0, !r.payload.isEmpty, r.payload.count <= 4 * 64 else {
                malformed(dom, seq: seq, "grant unmap: bad handle list")
                return .error(seq, .EINVAL)
            }
            var rd = WireReader(r.payload, what: "grant unmap")
            var statuses: [GNTST] = []
            // One look at the grantee's mappings and descriptors serves the whole batch.
            let refs = dom.hasProcess ? ProcFS.memfdReferences(of: dom.pid) : [:]
            for _ in 0..<(r.payload.count / 4) {
                statuses.append(unmapGrant(dom, handle: (try? rd.u32()) ?? 0, references: refs))
            }
            return HypercallReply(seq: seq, rc: 0, payload: GrantStatusList.encode(statuses))
        case .copy:
            guard let ops = try? GrantCopy.decode(r.payload), !ops.isEmpty, ops.count <= 256 else {
                malformed(dom, seq: seq, "grant copy: bad op list")
                return .error(seq, .EINVAL)
            }
            return HypercallReply(seq: seq, rc: 0, payload: GrantStatusList.encode(ops.map { grantCopy(dom, $0) }))
        case nil:
            return .error(seq, .ENOSYS)
        }
    }

    /// Validates the granter's entry and hands back a descriptor for exactly that page.
    /// The descriptor comes back `owned` when it is a read-only reopen the caller must close after sending.
    func mapGrant(_ dom: DomainRecord, _ q: GrantMapRequest) -> (GNTST, UInt32, (fd: FileDescriptor, owned: Bool)?) {
        guard q.domid != dom.domid, let granter = domains[q.domid], granter.hasProcess, let gg = granter.grants else { return (.badDomain, 0, nil) }
        guard let word = gg.entryWord(q.ref) else { return (.badGntref, 0, nil) }
        let g = grants(dom)
        guard g.maptrack.count < 65536 else { return (.noSpace, 0, nil) }
        let readonly = q.flags & GNTMAP_readonly != 0
        // Set GTF_reading/GTF_writing atomically against a granter rewriting the entry.
        var tries = 0
        while true {
            let old = SharedAtomic.load(word)
            let flags = UInt16(old & 0xffff), domid = UInt16(old >> 16)
            guard flags & GTF.typeMask == GTF.permitAccess else { return (.badGntref, 0, nil) }
            guard domid == dom.domid else { return (.permissionDenied, 0, nil) }
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
        var counts = gg.active[q.ref] ?? (0, 0)
        if readonly { counts.readers += 1 } else { counts.writers += 1 }
        gg.active[q.ref] = counts
        let handle = g.nextHandle
        g.nextHandle = g.nextHandle == UInt32.max ? 1 : g.nextHandle + 1
        g.maptrack[handle] = MapTrackEntry(granter: granter.domid, ref: q.ref, page: page, readonly: readonly)
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

    /// The grantee says it unmapped: check it really holds no mapping or descriptor of the page
    /// beyond its other handles (a mapping cannot be revoked from outside), then release.
    func unmapGrant(_ dom: DomainRecord, handle: UInt32, references: [String: Int]) -> GNTST {
        let g = grants(dom)
        guard let entry = g.maptrack[handle] else { return .badHandle }
        // Handles still held for the page after this one: the snapshot may show at most that many
        // mappings and descriptors (earlier handles of the batch are already dropped).
        let others = g.maptrack.values.filter { $0.page === entry.page }.count - 1
        if dom.hasProcess && (references[entry.page.name] ?? 0) > others {
            return .generalError
        }
        dropMapping(dom, handle: handle)
        return .okay
    }

    func dropMapping(_ dom: DomainRecord, handle: UInt32) {
        guard let g = dom.grants, let entry = g.maptrack.removeValue(forKey: handle) else { return }
        guard let granter = domains[entry.granter], granter.grants != nil, let gg = granter.grants else { return }
        var counts = gg.active[entry.ref] ?? (0, 0)
        if entry.readonly { counts.readers = max(0, counts.readers - 1) } else { counts.writers = max(0, counts.writers - 1) }
        gg.active[entry.ref] = counts
        releaseEntry(gg, entry.ref)
    }

    /// One `gnttab_copy` op: each side a gref granted to the caller or one of the caller's frames.
    func grantCopy(_ dom: DomainRecord, _ op: GrantCopy) -> GNTST {
        guard op.length > 0, Int(op.source.offset) + Int(op.length) <= 4096, Int(op.dest.offset) + Int(op.length) <= 4096 else {
            return .badCopyArg
        }
        func resolve(_ side: GrantCopy.Side, isGref: Bool, write: Bool) -> Result<GrantPage, GNTST> {
            if !isGref {
                guard side.domid == DOMID_SELF || side.domid == dom.domid else { return .failure(.permissionDenied) }
                guard let page = dom.grants?.pages[side.refOrGFN] else { return .failure(.badPage) }
                return .success(page)
            }
            guard side.domid != dom.domid, let granter = domains[side.domid], granter.hasProcess, let gg = granter.grants else {
                return .failure(.badDomain)
            }
            guard side.refOrGFN <= UInt64(UInt32.max), let word = gg.entryWord(GrantRef(side.refOrGFN)) else { return .failure(.badGntref) }
            let v = SharedAtomic.load(word)
            let flags = UInt16(v & 0xffff)
            guard flags & GTF.typeMask == GTF.permitAccess else { return .failure(.badGntref) }
            guard UInt16(v >> 16) == dom.domid else { return .failure(.permissionDenied) }
            if write && flags & GTF.readonly != 0 { return .failure(.permissionDenied) }
            guard let page = gg.pages[UInt64(gg.frame(GrantRef(side.refOrGFN)))] else { return .failure(.badPage) }
            return .success(page)
        }
        let src = resolve(op.source, isGref: op.flags & GNTCOPY_source_gref != 0, write: false)
        let dst = resolve(op.dest, isGref: op.flags & GNTCOPY_dest_gref != 0, write: true)
        switch (src, dst) {
        case let (.success(s), .success(d)):
            guard let sp = try? s.bytes(), let dp = try? d.bytes() else { return .generalError }
            memmove(dp + Int(op.dest.offset), sp + Int(op.source.offset), Int(op.length))
            return .okay
        case let (.failure(e), _), let (_, .failure(e)):
            return e
        }
    }

    /// A domain died: its mappings of others are gone with its process; release them. Pages
    /// others still map stay alive through their maptrack entries.
    func releaseGrants(_ dom: DomainRecord) {
        guard let g = dom.grants else { return }
        for handle in Array(g.maptrack.keys) { dropMapping(dom, handle: handle) }
        dom.grants = nil
    }
}

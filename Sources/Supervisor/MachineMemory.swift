import LinuxHost
import ProcvisorABI

/// The machine's memory (Xen's page allocator and `memory.c`): `totalFrames` 4 KiB frames, the
/// global M2P, and every domain's RAM and P2M. Frames are handed out in a scattered order on
/// purpose (a stride coprime to the total), so no guest can rely on machine contiguity. The
/// global M2P (mfn → pfn) lives in a memfd every domain maps read-only.
final class MachineMemory {
    let totalFrames: UInt64
    /// Each domain's RAM, from creation until its frames go back to the machine.
    private(set) var domains: [DomID: DomainMemory] = [:]
    // Touched once per page populated or given back (65536 times for a 256 MiB restore); only
    // the supervisor's one thread touches them, so the dynamic exclusivity checks are left out.
    @exclusivity(unchecked) private(set) var freeFrames: UInt64
    @exclusivity(unchecked) private var returned: [UInt64] = []
    @exclusivity(unchecked) private var cursor: UInt64 = 0
    private let stride: UInt64
    let m2pFD: FileDescriptor
    let m2pReadOnlyFD: FileDescriptor
    private let m2p: SharedMapping

    init(totalFrames: UInt64) throws {
        self.totalFrames = max(totalFrames, 1)
        freeFrames = self.totalFrames
        var s = self.totalFrames * 618 / 1000 | 1
        func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 { b == 0 ? a : gcd(b, a % b) }
        while gcd(s, self.totalFrames) != 1 { s += 2 }
        stride = s
        let bytes = Int(self.totalFrames) * 8
        // Written through this mapping; domains get a read-only descriptor (MemFD.createReadOnlyShared).
        (m2pFD, m2pReadOnlyFD, m2p) = try MemFD.createReadOnlyShared(name: "pv-m2p", size: bytes)
    }

    /// The machine a live update handed over: the same memfds, mapped again.
    init(adopting i: MachineImage) throws {
        guard i.totalFrames > 0, i.freeFrames <= i.totalFrames, i.stride > 0 else {
            throw LiveUpdateError.badState("machine memory: \(i.freeFrames) free of \(i.totalFrames) frames")
        }
        guard i.cursor <= i.totalFrames else { throw LiveUpdateError.badState("machine memory: cursor \(i.cursor) past \(i.totalFrames) frames") }
        totalFrames = i.totalFrames
        freeFrames = i.freeFrames
        cursor = i.cursor
        stride = i.stride
        m2pFD = FileDescriptor(rawValue: i.m2pFD)
        m2pReadOnlyFD = FileDescriptor(rawValue: i.m2pReadOnlyFD)
        m2p = try SharedMapping(m2pFD, length: Int(totalFrames) * 8)
        // Frames given back: hundreds of thousands once big domains have come and gone, so
        // they travel as one byte string (u64s, little-endian), not one number each.
        guard i.returned.count % 8 == 0 else { throw LiveUpdateError.badState("machine memory: a list of frames of \(i.returned.count) bytes") }
        var back = [UInt64](repeating: 0, count: i.returned.count / 8)
        back.withUnsafeMutableBytes { dst in i.returned.withUnsafeBytes { dst.copyMemory(from: $0) } }
        for (n, mfn) in back.enumerated() where UInt64(littleEndian: mfn) >= totalFrames {
            throw LiveUpdateError.badState("machine memory: returned frame \(n) is \(UInt64(littleEndian: mfn)), past \(totalFrames)")
        }
        returned = back.map { UInt64(littleEndian: $0) }
        guard totalFrames - cursor + UInt64(back.count) == freeFrames else {
            throw LiveUpdateError.badState("machine memory: \(freeFrames) frames free, but \(totalFrames - cursor) never handed out and \(back.count) given back")
        }
        for d in i.domains { domains[DomID(d.domid)] = try DomainMemory(adopting: d) }
    }

    /// What a live update hands over; the descriptors it names go into `keep`.
    func image(keep: inout [FileDescriptor]) -> MachineImage {
        keep += [m2pFD, m2pReadOnlyFD]
        return MachineImage(
            totalFrames: totalFrames, freeFrames: freeFrames,
            returned: returned.map { $0.littleEndian }.withUnsafeBytes { Array($0) }, cursor: cursor, stride: stride,
            m2pFD: m2pFD.rawValue, m2pReadOnlyFD: m2pReadOnlyFD.rawValue,
            domains: domains.sorted { $0.key < $1.key }.map { domid, m in
                keep += [m.ramFD, m.p2mFD, m.p2mReadOnlyFD]
                return DomainMemoryImage(domid: domid.rawValue, ramFD: m.ramFD.rawValue, p2mFD: m.p2mFD.rawValue,
                                         p2mReadOnlyFD: m.p2mReadOnlyFD.rawValue, spanPages: m.spanPages, maxPages: m.maxPages,
                                         currentPages: m.currentPages,
                                         cgroup: m.cgroup.map { CgroupImage(path: $0.path, version: $0.version.rawValue) })
            })
    }

    deinit {
        m2pFD.close()
        m2pReadOnlyFD.close()
    }

    func allocate() -> MFN? {
        guard freeFrames > 0 else { return nil }
        freeFrames -= 1
        if let r = returned.popLast() { return MFN(r) }
        let mfn = (cursor &* stride) % totalFrames
        cursor += 1
        return MFN(mfn)
    }

    func free(_ mfn: MFN) {
        setM2P(mfn, nil)
        returned.append(mfn.rawValue)
        freeFrames += 1
    }

    func setM2P(_ mfn: MFN, _ pfn: PFN?) {
        m2p.base.storeBytes(of: PhysMap.m2pEncode(pfn), toByteOffset: Int(mfn.rawValue) * 8, as: UInt64.self)
    }

    /// The pfn the M2P names for `mfn` (nil: the frame is free).
    func m2pEntry(_ mfn: MFN) -> PFN? {
        PhysMap.m2pDecode(m2p.base.load(fromByteOffset: Int(mfn.rawValue) * 8, as: UInt64.self))
    }

    enum DomainMemoryError: Error, CustomStringConvertible {
        case cannotCreate(domid: DomID, Error)
        case outOfFrames(domid: DomID)
        var description: String {
            switch self {
            case let .cannotCreate(domid, e): return "cannot create the RAM of dom\(domid): \(e)"
            case let .outOfFrames(domid): return "out of machine frames while populating dom\(domid)"
            }
        }
    }

    /// A new domain's RAM spanning `spanPages`, its first `populatedPages` backed by frames.
    /// Nothing is held when it throws.
    func createDomain(_ domid: DomID, spanPages: UInt64, populatedPages: UInt64) throws -> DomainMemory {
        let memory: DomainMemory
        do {
            memory = try DomainMemory(domid: domid, spanPages: spanPages)
        } catch {
            throw DomainMemoryError.cannotCreate(domid: domid, error)
        }
        for pfn in 0..<populatedPages where !memory.populate(PFN(pfn), from: self) {
            memory.releaseAll(to: self)
            throw DomainMemoryError.outOfFrames(domid: domid)
        }
        domains[domid] = memory
        return memory
    }

    /// The domain is gone (or never started): every frame it held goes back to the machine.
    /// Returns its memory, which the host frees when the last reference goes (the caller may
    /// keep it a moment, to answer whoever waits first).
    @discardableResult
    func releaseDomain(_ domid: DomID) -> DomainMemory? {
        guard let memory = domains.removeValue(forKey: domid) else { return nil }
        memory.releaseAll(to: self)
        return memory
    }

    /// `__HYPERVISOR_memory_op` made by `domid`: reservations, one page per extent.
    func op(_ domid: DomID, _ r: HypercallRequest) -> HypercallOutcome {
        guard let mem = domains[domid] else { return .error(.ESRCH) }
        func selfDomid(_ v: UInt64) -> Bool { v == UInt64(DOMID_SELF.rawValue) || v == UInt64(domid.rawValue) }
        switch XenMemOp(rawValue: r.args[0]) {
        case .currentReservation:
            guard selfDomid(r.args[1]) else { return .error(.EPERM) }
            return .ok(Int64(mem.currentPages))
        case .maximumReservation:
            guard selfDomid(r.args[1]) else { return .error(.EPERM) }
            return .ok(Int64(mem.maxPages))
        case .increaseReservation, .populatePhysmap, .decreaseReservation:
            guard r.payload.count % 8 == 0, r.payload.count / 8 <= XenMemOp.maxExtents else {
                return .malformed("memory_op: extent list must be at most \(XenMemOp.maxExtents) u64 pfns")
            }
            var rd = WireReader(r.payload, what: "extents")
            var done: Int64 = 0
            let decrease = r.args[0] == XenMemOp.decreaseReservation.rawValue
            for _ in 0..<(r.payload.count / 8) {
                guard let pfn = try? rd.u64() else { break }
                // Xen stops at the first extent it cannot do and returns how many it did.
                let ok = decrease ? mem.decrease(PFN(pfn), to: self) : mem.populate(PFN(pfn), from: self)
                if !ok { break }
                done += 1
            }
            return .ok(done)
        case nil:
            return .error(.ENOSYS)
        }
    }

    /// Domains whose RAM memfd holds more host memory than their reservation (they wrote pages
    /// they never populated or gave back): domid, bytes held, bytes allowed.
    func overReservation(among domids: some Sequence<DomID>) -> [(domid: DomID, held: Int, allowed: Int)] {
        domids.compactMap { domid in
            guard let mem = domains[domid] else { return nil }
            let held = mem.hostBytes, allowed = Int(mem.currentPages) * 4096
            return held > allowed ? (domid, held, allowed) : nil
        }
    }
}

/// A domain's RAM: a memfd of `maxmem` the domain maps as its pseudo-physical memory, and its
/// P2M (pfn → mfn), a memfd the domain maps read-only.
final class DomainMemory {
    let ramFD: FileDescriptor
    let p2mFD: FileDescriptor
    let p2mReadOnlyFD: FileDescriptor
    let p2m: SharedMapping
    /// Pages the memfd spans (maxmem at creation): no pfn at or above this exists.
    let spanPages: UInt64
    /// `xl mem-max`: the most pages the domain may hold.
    @exclusivity(unchecked) var maxPages: UInt64
    @exclusivity(unchecked) private(set) var currentPages: UInt64 = 0
    var cgroup: MemoryCgroup?
    /// While a live migration logs the domain's writes: pfns populated or given back since the
    /// last collection (the write log does not see a page go, nor one come back as zeros).
    @exclusivity(unchecked) var changeLog: [UInt64]?

    init(domid: DomID, spanPages: UInt64) throws {
        self.spanPages = spanPages
        maxPages = spanPages
        // RAM is sealed against resizing only: decrease_reservation punches holes in it, which
        // F_SEAL_SHRINK/GROW allow (only the write seals refuse FALLOC_FL_PUNCH_HOLE).
        let ram = try MemFD.create(name: "pv-ram-\(domid)", size: Int(spanPages) * 4096)
        ramFD = ram
        // The P2M: written through this mapping only, read-only for the domain by seal.
        do {
            (p2mFD, p2mReadOnlyFD, p2m) = try MemFD.createReadOnlyShared(name: "pv-p2m-\(domid)", size: max(4096, Int(spanPages) * 8))
        } catch {
            ram.close()
            throw error
        }
        for i in 0..<Int(spanPages) { p2m.base.storeBytes(of: PhysMap.invalidEntry, toByteOffset: i * 8, as: UInt64.self) }
    }

    /// A domain's RAM as a live update handed it over.
    init(adopting i: DomainMemoryImage) throws {
        ramFD = FileDescriptor(rawValue: i.ramFD)
        p2mFD = FileDescriptor(rawValue: i.p2mFD)
        p2mReadOnlyFD = FileDescriptor(rawValue: i.p2mReadOnlyFD)
        spanPages = i.spanPages
        maxPages = i.maxPages
        currentPages = i.currentPages
        p2m = try SharedMapping(p2mFD, length: max(4096, Int(spanPages) * 8))
        cgroup = try i.cgroup.map { MemoryCgroup(adopting: $0.path, version: try LiveUpdateError.cgroupVersion($0.version)) }
    }

    deinit {
        p2mFD.close()
        p2mReadOnlyFD.close()
        cgroup?.remove()
        // Closing the last descriptor of a RAM memfd frees its pages: tens of milliseconds for a
        // few hundred MiB, which would hold up every other domain's hypercalls on the supervisor's
        // one thread (a migration's copy connecting its devices while its source goes). A thread
        // of its own closes it; it touches nothing else.
        let fd = ramFD
        if (try? PosixThread.startDetached({ fd.close() })) == nil { fd.close() }
    }

    func mfn(of pfn: PFN) -> MFN? {
        guard pfn.rawValue < spanPages else { return nil }
        let v = p2m.base.load(fromByteOffset: Int(pfn.rawValue) * 8, as: UInt64.self)
        return v == PhysMap.invalidEntry ? nil : MFN(v)
    }

    /// Backs `pfn` with a machine frame. False when it already is, is out of range, or no frame/reservation is left.
    func populate(_ pfn: PFN, from machine: MachineMemory) -> Bool {
        guard pfn.rawValue < spanPages, mfn(of: pfn) == nil, currentPages < maxPages, let mfn = machine.allocate() else { return false }
        p2m.base.storeBytes(of: mfn.rawValue, toByteOffset: Int(pfn.rawValue) * 8, as: UInt64.self)
        machine.setM2P(mfn, pfn)
        currentPages += 1
        changeLog?.append(pfn.rawValue)
        return true
    }

    /// Gives `pfn` back: its frame returns to the machine, its memory to the host (hole punched).
    func decrease(_ pfn: PFN, to machine: MachineMemory) -> Bool {
        guard let mfn = mfn(of: pfn) else { return false }
        guard (try? MemFD.punchHole(ramFD, offset: Int(pfn.rawValue) * 4096, length: 4096)) != nil else { return false }
        p2m.base.storeBytes(of: PhysMap.invalidEntry, toByteOffset: Int(pfn.rawValue) * 8, as: UInt64.self)
        machine.free(mfn)
        currentPages -= 1
        changeLog?.append(pfn.rawValue)
        return true
    }

    /// Returns every frame (the domain is gone).
    func releaseAll(to machine: MachineMemory) {
        for i in 0..<spanPages {
            if let mfn = mfn(of: PFN(i)) {
                machine.free(mfn)
                p2m.base.storeBytes(of: PhysMap.invalidEntry, toByteOffset: Int(i) * 8, as: UInt64.self)
            }
        }
        currentPages = 0
    }

    /// Bytes of RAM the host really backs for this domain (st_blocks of the memfd).
    var hostBytes: Int { (try? MemFD.allocatedBytes(ramFD)) ?? 0 }
}

import LinuxHost
import ProcvisorABI

/// The domain's pseudo-physical memory: its RAM mapped contiguously at `base`, and the P2M and
/// M2P the supervisor shares read-only, so translating pfn ↔ mfn needs no hypercall (as in a Xen
/// PV guest). Pages not populated read as zero; writing one without `populate` first gets the
/// domain crashed (it would hold more host memory than its reservation).
public final class PhysicalMemory {
    /// Start of pseudo-physical page 0.
    public let base: UnsafeMutableRawPointer
    /// Pages of pseudo-physical space (maxmem at creation).
    public let spanPages: UInt64
    /// Pages populated at boot (`memory=`): pfns 0 ..< bootPages.
    public let bootPages: UInt64
    let ramFD: FileDescriptor
    let p2m: SharedMapping
    let m2p: SharedMapping
    let machineFrames: UInt64
    let hypercalls: HypercallChannel
    private let heapLock = Lock()
    private var openedHeap: RAMHeap?

    init(ramFD: FileDescriptor, p2mFD: FileDescriptor, m2pFD: FileDescriptor, spanPages: UInt64, bootPages: UInt64, machineFrames: UInt64,
         hypercalls: HypercallChannel) throws {
        self.ramFD = ramFD
        self.spanPages = spanPages
        self.bootPages = min(bootPages, spanPages)
        self.machineFrames = machineFrames
        self.hypercalls = hypercalls
        // Mapped with no owner: the RAM stays mapped for the life of the process.
        switch SharedMapping.map(ramFD, length: Int(spanPages) * 4096) {
        case let .success(p): base = p
        case let .failure(e): throw SystemError("mmap", "domain RAM (\(spanPages) pages)", errno: e)
        }
        p2m = try SharedMapping(p2mFD, length: max(4096, Int(spanPages) * 8), writable: false)
        m2p = try SharedMapping(m2pFD, length: Int(max(machineFrames, 1)) * 8, writable: false)
        p2mFD.close()
        m2pFD.close()
    }

    /// The address of pseudo-physical page `pfn`.
    public func address(of pfn: PFN) -> UnsafeMutableRawPointer? {
        pfn.rawValue < spanPages ? base + Int(pfn.rawValue) * 4096 : nil
    }

    /// pfn → mfn from the read-only P2M; nil when the page is not populated.
    public func mfn(of pfn: PFN) -> MFN? {
        guard pfn.rawValue < spanPages else { return nil }
        let v = p2m.base.load(fromByteOffset: Int(pfn.rawValue) * 8, as: UInt64.self)
        return v == PhysMap.invalidEntry ? nil : MFN(v)
    }

    /// mfn → pfn from the global M2P; nil for a frame nobody holds.
    public func pfn(of mfn: MFN) -> PFN? {
        guard mfn.rawValue < machineFrames else { return nil }
        return PhysMap.m2pDecode(m2p.base.load(fromByteOffset: Int(mfn.rawValue) * 8, as: UInt64.self))
    }

    private func extents(_ op: XenMemOp, _ pfns: [PFN]) -> Int {
        var done = 0
        var i = 0
        while i < pfns.count {
            let chunk = pfns[i..<min(pfns.count, i + XenMemOp.maxExtents)]
            var w = WireWriter(capacity: chunk.count * 8)
            for p in chunk { w.u64(p.rawValue) }
            let r = hypercalls.call(.memoryOp, [op.rawValue, UInt64(DOMID_SELF.rawValue)], payload: w.bytes)
            if r.rc < 0 { break }
            done += Int(r.rc)
            if Int(r.rc) < chunk.count { break }
            i += chunk.count
        }
        return done
    }

    /// `XENMEM_populate_physmap`: backs these pages with machine frames; returns how many it did
    /// (it stops at the first it cannot: out of range, already populated, over the reservation maximum).
    @discardableResult
    public func populate(_ pfns: [PFN]) -> Int { extents(.populatePhysmap, pfns) }

    /// `XENMEM_decrease_reservation`: gives the pages back; their memory returns to the host.
    @discardableResult
    public func decreaseReservation(_ pfns: [PFN]) -> Int { extents(.decreaseReservation, pfns) }

    /// `XENMEM_current_reservation`, in pages.
    public var currentReservation: UInt64 {
        UInt64(max(0, hypercalls.call(.memoryOp, [XenMemOp.currentReservation.rawValue, UInt64(DOMID_SELF.rawValue)]).rc))
    }

    /// `XENMEM_maximum_reservation`, in pages (`xl mem-max`).
    public var maximumReservation: UInt64 {
        UInt64(max(0, hypercalls.call(.memoryOp, [XenMemOp.maximumReservation.rawValue, UInt64(DOMID_SELF.rawValue)]).rc))
    }

    // MARK: the RAM heap

    /// The persistent heap at pfn 0 (`RAMHeap`), opened on first use with its default size: the
    /// size in its header when RAM holds one (a restore), else half the boot memory
    /// (`defaultHeapPages`). Use `openHeap(pages:)` first to choose the size of a new heap.
    public var heap: RAMHeap {
        get throws { try openHeap() }
    }

    /// Half the pages populated at boot (`memory=` / 2), at least `RAMHeap.minimumPages`.
    public var defaultHeapPages: Int { max(RAMHeap.minimumPages, Int(bootPages / 2)) }

    /// Opens the heap at pfn 0 (once per process; later calls return the same heap). `pages`:
    /// the size of a new heap, and the size an existing one must have (nil: an existing heap's own
    /// size, `defaultHeapPages` for a new one). The heap must lie in the boot memory, every page of
    /// it populated. Throws `RAMHeapError`: an invalid header (another version, a bad checksum,
    /// another size), a page not populated, a size beyond the boot memory.
    public func openHeap(pages: Int? = nil) throws -> RAMHeap {
        try heapLock.withLock {
            if let h = openedHeap {
                if let pages, pages != h.pages { throw RAMHeapError.sizeMismatch(found: h.pages, expected: pages) }
                return h
            }
            let size: Int
            if let pages {
                size = pages
            } else {
                size = try RAMHeap.existingPages(at: UnsafeRawPointer(base)) ?? defaultHeapPages
            }
            guard size <= Int(bootPages) else {
                throw RAMHeapError.invalidArgument("a heap of \(size) pages reaches past the boot memory (\(bootPages) pages)")
            }
            let h = try RAMHeap(base: base, pages: size, regionPages: Int(bootPages)) { mfn(of: PFN(UInt64($0))) != nil }
            openedHeap = h
            return h
        }
    }

    /// Runs `body` with the pages at the bottom of RAM the balloon must keep: the open heap's, or
    /// those a heap header in pfn 0 claims (a restored domain that has not opened its heap yet).
    /// No heap is opened while `body` runs, so pages it gives away cannot become the heap's.
    func withHeapFloor<R>(_ body: (UInt64) -> R) -> R {
        heapLock.withLock {
            var floor: UInt64 = 0
            if let h = openedHeap {
                floor = UInt64(h.pages)
            } else if mfn(of: PFN(0)) != nil, let claimed = RAMHeap.claimedPages(at: UnsafeRawPointer(base)) {
                floor = min(claimed, spanPages)
            }
            return body(floor)
        }
    }

    /// Host memory really backing this domain's RAM, in bytes (what the host sees).
    public var hostBytes: Int { (try? MemFD.allocatedBytes(ramFD)) ?? 0 }
}

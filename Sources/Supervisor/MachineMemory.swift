import LinuxHost
import ProcvisorABI

/// The machine: `totalFrames` 4 KiB frames. Frames are handed out in a scattered order on
/// purpose (a stride coprime to the total), so no guest can rely on machine contiguity. The
/// global M2P (mfn → pfn) lives in a memfd every domain maps read-only.
final class MachineMemory {
    let totalFrames: UInt64
    private(set) var freeFrames: UInt64
    private var returned: [UInt64] = []
    private var cursor: UInt64 = 0
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
        // Sealed read-only for everyone but this mapping (F_SEAL_FUTURE_WRITE after it is made).
        (m2pFD, m2pReadOnlyFD, m2p) = try MemFD.createReadOnlyShared(name: "pv-m2p", size: bytes)
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
    var maxPages: UInt64
    private(set) var currentPages: UInt64 = 0
    var cgroup: MemoryCgroup?

    init(domid: UInt16, spanPages: UInt64) throws {
        self.spanPages = spanPages
        maxPages = spanPages
        // RAM is sealed against resizing only: decrease_reservation punches holes in it, which
        // F_SEAL_SHRINK/GROW allow (only the write seals refuse FALLOC_FL_PUNCH_HOLE).
        ramFD = try MemFD.create(name: "pv-ram-\(domid)", size: Int(spanPages) * 4096)
        // The P2M: written through this mapping only, read-only for the domain by seal.
        (p2mFD, p2mReadOnlyFD, p2m) = try MemFD.createReadOnlyShared(name: "pv-p2m-\(domid)", size: max(4096, Int(spanPages) * 8))
        for i in 0..<Int(spanPages) { p2m.base.storeBytes(of: PhysMap.invalidEntry, toByteOffset: i * 8, as: UInt64.self) }
    }

    deinit {
        ramFD.close()
        p2mFD.close()
        p2mReadOnlyFD.close()
        cgroup?.remove()
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
        return true
    }

    /// Gives `pfn` back: its frame returns to the machine, its memory to the host (hole punched).
    func decrease(_ pfn: PFN, to machine: MachineMemory) -> Bool {
        guard let mfn = mfn(of: pfn) else { return false }
        guard (try? MemFD.punchHole(ramFD, offset: Int(pfn.rawValue) * 4096, length: 4096)) != nil else { return false }
        p2m.base.storeBytes(of: PhysMap.invalidEntry, toByteOffset: Int(pfn.rawValue) * 8, as: UInt64.self)
        machine.free(mfn)
        currentPages -= 1
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

import LinuxHost
import ProcvisorABI

/// The balloon driver: follows `memory/target` (KiB, written by `xl mem-set`) with the
/// reservation hypercalls, as Linux's xen-balloon does. Giving memory back releases the highest
/// populated pages first (their host memory is returned); taking it again populates the lowest
/// unpopulated ones. Guests that keep data in pseudo-physical RAM should use low pages: the pages
/// of the `RAMHeap` (pfns 0 ..< its size, open or found in RAM) are never given away, so a target
/// below them leaves the reservation at the lowest it can reach.
public final class Balloon {
    let memory: PhysicalMemory
    let store: XenStoreClient
    private let mutex = Lock()
    /// The last target seen, in pages (the domain's memory at boot until the toolstack sets one).
    public private(set) var targetPages: UInt64

    init(memory: PhysicalMemory, store: XenStoreClient, bootPages: UInt64) {
        self.memory = memory
        self.store = store
        targetPages = bootPages
    }

    func start() {
        do {
            try store.watch("memory/target", token: "procvisor:balloon") { [unowned self] _ in
                guard let text = try? store.read("memory/target"), let kb = UInt64(text) else { return }
                // The watch fires once when set: nothing to do while the target is unchanged.
                if kb / 4 != targetPages { adjust(toPages: kb / 4) }
            }
        } catch {
            let msg = "procvisor: balloon: cannot watch memory/target: \(error)\n"
            FileDescriptor.standardError.writeUnchecked(msg)
        }
    }

    /// Up to `count` populated pages to give back, highest first, none below `floor`.
    static func pagesToGive(_ count: UInt64, spanPages: UInt64, floor: UInt64, isPopulated: (PFN) -> Bool) -> [PFN] {
        var give: [PFN] = []
        var pfn = spanPages
        while pfn > floor && UInt64(give.count) < count {
            pfn -= 1
            if isPopulated(PFN(pfn)) { give.append(PFN(pfn)) }
        }
        return give
    }

    /// Moves the reservation toward `target` pages; returns the reservation reached.
    @discardableResult
    public func adjust(toPages target: UInt64) -> UInt64 {
        mutex.lock()
        defer { mutex.unlock() }
        targetPages = target
        var current = memory.currentReservation
        if target < current {
            let reservation = current
            current -= memory.withHeapFloor { floor in
                let give = Balloon.pagesToGive(reservation - target, spanPages: memory.spanPages, floor: floor) {
                    memory.mfn(of: $0) != nil
                }
                return UInt64(memory.decreaseReservation(give))
            }
        } else if target > current {
            let limit = min(target, memory.maximumReservation)
            var take: [PFN] = []
            var pfn: UInt64 = 0
            while pfn < memory.spanPages && current + UInt64(take.count) < limit {
                if memory.mfn(of: PFN(pfn)) == nil { take.append(PFN(pfn)) }
                pfn += 1
            }
            current += UInt64(memory.populate(take))
        }
        return current
    }
}

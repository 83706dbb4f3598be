import LinuxHost
import ProcvisorABI

extension Supervisor {
    /// `__HYPERVISOR_memory_op`: reservations, one page per extent.
    func memoryOp(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let mem = dom.memory else { return .error(.ESRCH) }
        func selfDomid(_ v: UInt64) -> Bool { v == UInt64(DOMID_SELF) || v == UInt64(dom.domid) }
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
                let ok = decrease ? mem.decrease(PFN(pfn), to: machine) : mem.populate(PFN(pfn), from: machine)
                if !ok { break }
                done += 1
            }
            return .ok(done)
        case nil:
            return .error(.ENOSYS)
        }
    }

    /// Every second: a domain whose RAM memfd holds more host memory than its reservation (it
    /// wrote pages it never populated or gave back) is crashed with the figures.
    func scheduleReservationCheck() {
        loop.after(ms: 1000) { [weak self] in
            guard let self else { return }
            for dom in self.domains.values where dom.hasProcess && dom.phase == .running {
                guard let mem = dom.memory else { continue }
                let held = mem.hostBytes
                let allowed = Int(mem.currentPages) * 4096
                if held > allowed {
                    self.crash(dom, "holds \(held / 1024) KiB of RAM but its reservation is \(allowed / 1024) KiB (pages written without populate_physmap)")
                }
            }
            self.xenstore.disconnectStalledRings(now: MonotonicClock.nanoseconds(), timeoutNs: self.options.xenstoreEventTimeoutMs * 1_000_000)
            self.scheduleReservationCheck()
        }
    }
}

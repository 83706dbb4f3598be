import LinuxHost
import ProcvisorABI

extension Supervisor {
    /// Every second: a domain whose RAM memfd holds more host memory than its reservation (it
    /// wrote pages it never populated or gave back) is crashed with the figures.
    func scheduleReservationCheck() {
        loop.after(ms: 1000) { [weak self] in
            guard let self else { return }
            let running = self.domains.values.filter { $0.hasProcess && $0.phase == .running }.map(\.domid)
            for (domid, held, allowed) in self.machine.overReservation(among: running) {
                guard let dom = self.domains[domid] else { continue }
                self.crash(dom, "holds \(held / 1024) KiB of RAM but its reservation is \(allowed / 1024) KiB (pages written without populate_physmap)")
            }
            self.xenstore.disconnectStalledRings(now: MonotonicClock.nanoseconds(), timeoutNs: self.options.xenstoreEventTimeoutMs * 1_000_000)
            self.scheduleReservationCheck()
        }
    }
}

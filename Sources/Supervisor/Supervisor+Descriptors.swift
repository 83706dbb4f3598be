import LinuxHost
import ProcvisorABI

/// The supervisor's descriptor budget. Every grantable page is a memfd the supervisor holds
/// (it must: grant copy, map and re-backing use it), so without a budget one domain allocating
/// pages could use up the supervisor's descriptors and leave `accept` on the control socket
/// failing for everybody.
enum DescriptorBudget {
    /// RLIMIT_NOFILE (soft) after `Supervisor.raiseDescriptorLimit()`.
    static var limit = 1024
    /// Kept for everything but grantable pages: listeners, signalfd, epoll, the log, control and
    /// XenStore clients, descriptors made for one reply (read-only reopens, devices).
    static let baseReserve = 512
    /// Kept per domain: hypercall and event sockets, console pipes, RAM, P2M, grant table,
    /// exposure map, XenStore page and kick, doorbell, and pair pages with up to ~40 peers.
    static let perDomainReserve = 64
    /// Grantable pages one domain may hold at most, whatever the budget allows
    /// (`PROCVISOR_MAX_GRANT_PAGES`, 16…4096, default 4096: the exposure map's size). Read
    /// from the supervisor's environment, as every PROCVISOR_* tunable.
    static var maxPagesPerDomain = DomainGrants.maxPages

    /// Descriptors grantable pages of all domains together may use.
    static func grantPagesSpare(domains: Int) -> Int {
        max(0, limit - baseReserve - perDomainReserve * max(1, domains))
    }

    /// One domain's share: an equal part of the spare, at most `cap`.
    static func perDomain(domains: Int, cap: Int) -> Int {
        min(cap, grantPagesSpare(domains: domains) / max(1, domains))
    }
}

extension Supervisor {
    /// At start: the soft descriptor limit up to the hard one, and the hard one up to
    /// /proc/sys/fs/nr_open when root; the grant page budget follows from what we got.
    func raiseDescriptorLimit() {
        let soft = ResourceLimits.raiseDescriptorLimit(raiseHard: Process.effectiveUserID == 0)
        DescriptorBudget.limit = Int(min(soft, UInt64(Int32.max)))
        if let v = Process.environment("PROCVISOR_MAX_GRANT_PAGES").flatMap({ Int($0) }) {
            DescriptorBudget.maxPagesPerDomain = max(16, min(v, DomainGrants.maxPages))
        }
        logger.info("descriptor limit", metadata: ["nofile": "\(DescriptorBudget.limit)",
                                                   "grant_pages_per_domain": "\(DescriptorBudget.maxPagesPerDomain)",
                                                   "grant_pages_spare": "\(DescriptorBudget.grantPagesSpare(domains: 1))"])
    }

    /// How many more grantable pages `dom` may have now, and the line `xl dmesg` shows when
    /// that is none.
    func grantPageRoom(_ domid: DomID, _ g: DomainGrants) -> (room: Int, refusal: String) {
        let label = domains[domid]?.label ?? "dom\(domid)"
        let n = domains.count
        let mine = DescriptorBudget.perDomain(domains: n, cap: DescriptorBudget.maxPagesPerDomain)
        let spare = DescriptorBudget.grantPagesSpare(domains: n)
        let room = max(0, min(mine - g.pages.count, spare - GrantPage.live))
        if mine - g.pages.count <= spare - GrantPage.live {
            return (room, "\(label): grantable pages refused: it holds \(g.pages.count), its budget is \(mine)"
                + " (supervisor descriptor limit \(DescriptorBudget.limit), \(n) domains)")
        }
        return (room, "\(label): grantable pages refused: it holds \(g.pages.count), all domains hold"
            + " \(GrantPage.live) of the \(spare) descriptors the supervisor can spare for them (limit \(DescriptorBudget.limit))")
    }

    /// `accept` failed with EMFILE/ENFILE: the connection stays queued and the listener stays
    /// readable, so a level-triggered watch would spin. Stop watching it for `ms`, then watch
    /// again; domains and connected clients are served meanwhile.
    static func isDescriptorShortage(_ error: Error) -> Bool {
        guard let e = error as? SystemError else { return false }
        return e.errno == .tooManyOpenFiles || e.errno == .tooManyOpenFilesInSystem
    }
}

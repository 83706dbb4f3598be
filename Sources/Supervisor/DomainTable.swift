import ProcvisorABI

/// Every domain the supervisor knows (Xen's domain list): by domid and by process, the domid
/// rover, and how recently gone domains ended.
final class DomainTable {
    /// Xen hands out domids from a rover that wraps below DOMID_FIRST_RESERVED.
    static let domidFirstReserved: DomID = .firstReserved

    private var byDomid: [DomID: DomainRecord] = [:]
    private var byPid: [Int32: DomID] = [:]
    private var rover: DomID = 0
    /// How recently gone domains ended, for `waitShutdown` callers that ask too late.
    private(set) var recentShutdowns: [DomID: ShutdownReason] = [:]

    subscript(domid: DomID) -> DomainRecord? { byDomid[domid] }

    var values: Dictionary<DomID, DomainRecord>.Values { byDomid.values }
    var count: Int { byDomid.count }
    /// Domids in order.
    var domids: [DomID] { byDomid.keys.sorted() }

    /// The next free domid after the rover (1 … DOMID_FIRST_RESERVED-1), nil when all are taken.
    func allocateDomid() -> DomID? {
        for _ in 0..<Int(Self.domidFirstReserved.rawValue) {
            rover = rover.rawValue + 1 >= Self.domidFirstReserved.rawValue ? 1 : DomID(rover.rawValue + 1)
            if byDomid[rover] == nil { return rover }
        }
        return nil
    }

    /// Why `name` cannot be given to a new domain now, if it cannot.
    func nameTaken(_ name: String) -> String? {
        named(name).map { "domain name \"\(name)\" already exists (dom\($0.domid))" }
    }

    func insert(_ dom: DomainRecord) {
        byDomid[dom.domid] = dom
        if dom.hasProcess { byPid[dom.pid] = dom.domid }
    }

    /// Drops `dom` if it is the one recorded under its domid.
    func remove(_ dom: DomainRecord) {
        guard byDomid[dom.domid] === dom else { return }
        byDomid[dom.domid] = nil
    }

    func removeAll() {
        byDomid.removeAll()
        byPid.removeAll()
    }

    /// The domain whose process `pid` was, forgetting the pid (it has been reaped).
    func reaped(_ pid: Int32) -> DomainRecord? {
        byPid.removeValue(forKey: pid).flatMap { byDomid[$0] }
    }

    /// Takes over how recently gone domains ended (a live update).
    func restoreShutdowns(_ s: [DomID: ShutdownReason]) { recentShutdowns = s }

    /// The domid rover, for a live update.
    var roverValue: UInt16 {
        get { rover.rawValue }
        set { rover = DomID(newValue) }
    }

    /// Resolves a DOMAIN argument as xl does: a domid if it is all digits, else a name.
    func find(_ spec: String) -> DomainRecord? {
        if let id = DomID(spec), !spec.isEmpty, spec.allSatisfy(\.isNumber) { return byDomid[id] }
        return byDomid.values.first { $0.name == spec }
    }

    /// The domain called `name`, if any.
    func named(_ name: String) -> DomainRecord? { byDomid.values.first { $0.name == name } }

    func recordShutdown(_ domid: DomID, _ reason: ShutdownReason) {
        if recentShutdowns.count >= 1024 { recentShutdowns.removeAll() }
        recentShutdowns[domid] = reason
    }
}

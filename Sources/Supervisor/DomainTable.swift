import ProcvisorABI

/// Every domain the supervisor knows (Xen's domain list): by domid and by process, the domid
/// rover, and how recently gone domains ended.
final class DomainTable {
    /// Xen hands out domids from a rover that wraps below DOMID_FIRST_RESERVED.
    static let domidFirstReserved: UInt16 = 0x7FF0

    private var byDomid: [UInt16: DomainRecord] = [:]
    private var byPid: [Int32: UInt16] = [:]
    private var rover: UInt16 = 0
    /// How recently gone domains ended, for `waitShutdown` callers that ask too late.
    private(set) var recentShutdowns: [UInt16: ShutdownReason] = [:]

    subscript(domid: UInt16) -> DomainRecord? { byDomid[domid] }

    var values: Dictionary<UInt16, DomainRecord>.Values { byDomid.values }
    var count: Int { byDomid.count }
    /// Domids in order.
    var domids: [UInt16] { byDomid.keys.sorted() }

    /// The next free domid after the rover (1 … DOMID_FIRST_RESERVED-1), nil when all are taken.
    func allocateDomid() -> UInt16? {
        for _ in 0..<Int(Self.domidFirstReserved) {
            rover = rover + 1 >= Self.domidFirstReserved ? 1 : rover + 1
            if byDomid[rover] == nil { return rover }
        }
        return nil
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

    /// Resolves a DOMAIN argument as xl does: a domid if it is all digits, else a name.
    func find(_ spec: String) -> DomainRecord? {
        if let id = UInt16(spec), !spec.isEmpty, spec.allSatisfy(\.isNumber) { return byDomid[id] }
        return byDomid.values.first { $0.name == spec }
    }

    /// The domain called `name`, if any.
    func named(_ name: String) -> DomainRecord? { byDomid.values.first { $0.name == name } }

    func recordShutdown(_ domid: UInt16, _ reason: ShutdownReason) {
        if recentShutdowns.count >= 1024 { recentShutdowns.removeAll() }
        recentShutdowns[domid] = reason
    }
}

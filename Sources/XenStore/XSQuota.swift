/// xenstored's per-domain quotas (`hard_quotas` in domain.c), with its default values. Privileged
/// connections (dom0) are exempt from all of them.
public struct XSQuota: Equatable, Sendable, Codable {
    /// "nodes": nodes a domain may own.
    public var nodes = 1000
    /// "watches": watches per domain.
    public var watches = 128
    /// "outstanding": requests a domain may have outstanding. Enforced by the server, not the engine.
    public var outstanding = 20
    /// "memory": total bytes per domain (error level). Reported, not enforced by the engine.
    public var memory = 2 * 1024 * 1024 + 512 * 1024
    /// "transactions": open transactions per domain.
    public var transactions = 10
    /// "transaction-nodes": nodes one transaction may access.
    public var transactionNodes = 1024
    /// "node-permissions": entries in one permission list (quota-max-perms).
    public var nodePermissions = 5
    /// "path-max": path length below `/local/domain/<domid>/` (or of the whole path elsewhere).
    public var pathMax = 2048
    /// "node-size": a node's header (16) + 8 per permission + value + children names.
    public var nodeSize = 2048
    /// Soft "memory" quota (warning level), shown by `quota-soft`.
    public var softMemory = 2 * 1024 * 1024

    public init() {}

    subscript(item: AccItem) -> Int {
        get {
            switch item {
            case .nodes: return nodes
            case .watches: return watches
            case .outstanding: return outstanding
            case .memory: return memory
            case .transactions: return transactions
            case .transactionNodes: return transactionNodes
            case .nodePermissions: return nodePermissions
            case .pathMax: return pathMax
            case .nodeSize: return nodeSize
            }
        }
        set {
            switch item {
            case .nodes: nodes = newValue
            case .watches: watches = newValue
            case .outstanding: outstanding = newValue
            case .memory: memory = newValue
            case .transactions: transactions = newValue
            case .transactionNodes: transactionNodes = newValue
            case .nodePermissions: nodePermissions = newValue
            case .pathMax: pathMax = newValue
            case .nodeSize: nodeSize = newValue
            }
        }
    }
}

/// xenstored's accounting items (`enum accitem`), in its order, with its names and descriptions.
enum AccItem: Int, CaseIterable {
    case nodes, watches, outstanding, memory, transactions, transactionNodes, nodePermissions, pathMax, nodeSize

    var name: String {
        switch self {
        case .nodes: return "nodes"
        case .watches: return "watches"
        case .outstanding: return "outstanding"
        case .memory: return "memory"
        case .transactions: return "transactions"
        case .transactionNodes: return "transaction-nodes"
        case .nodePermissions: return "node-permissions"
        case .pathMax: return "path-max"
        case .nodeSize: return "node-size"
        }
    }

    var descr: String {
        switch self {
        case .nodes: return "Nodes per domain"
        case .watches: return "Watches per domain"
        case .outstanding: return "Outstanding requests per domain"
        case .memory: return "Total Xenstore memory per domain (error level)"
        case .transactions: return "Active transactions per domain"
        case .transactionNodes: return "Max. number of accessed nodes per transaction"
        case .nodePermissions: return "Max. number of permissions per node"
        case .pathMax: return "Max. length of a node path"
        case .nodeSize: return "Max. size of a node"
        }
    }
}

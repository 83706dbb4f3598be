import ProcvisorABI

/// A port of a bridge: a vif or the uplink.
protocol NetBridgePortProtocol: AnyObject {
    var id: Int { get }
    func deliver(_ frame: UnsafeRawBufferPointer, info: FrameInfo)
}

/// A learning L2 bridge.
final class NetBridge {
    static let uplinkPort = 0
    let name: String
    let macs = MACTable()
    @exclusivity(unchecked) var filter = NetFilterRuleSet()
    @exclusivity(unchecked) var filterDropped = 0
    @exclusivity(unchecked) private(set) var ports: [NetBridgePortProtocol] = []
    @exclusivity(unchecked) private var byID: [Int: NetBridgePortProtocol] = [:]
    @exclusivity(unchecked) var uplink: NetUplink?
    @exclusivity(unchecked) var uplinkRequested = false
    @exclusivity(unchecked) var uplinkStatus = "pending"

    init(name: String) { self.name = name }

    func addPort(_ p: NetBridgePortProtocol) {
        ports.append(p)
        byID[p.id] = p
    }

    func removePort(_ id: Int) {
        ports.removeAll { $0.id == id }
        byID[id] = nil
        macs.forget(port: id)
    }

    func port(_ id: Int) -> NetBridgePortProtocol? { byID[id] }
}

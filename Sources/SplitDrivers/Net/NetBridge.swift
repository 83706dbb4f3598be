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
    var filter = NetFilterRuleSet()
    var filterDropped = 0
    private(set) var ports: [NetBridgePortProtocol] = []
    private var byID: [Int: NetBridgePortProtocol] = [:]
    var uplink: NetUplink?
    var uplinkRequested = false
    var uplinkStatus = "pending"

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

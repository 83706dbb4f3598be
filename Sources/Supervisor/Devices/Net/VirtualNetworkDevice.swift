import Toolstack

/// A virtual network interface: one `vif=` entry of a frontend, served by a netback domain.
typealias VirtualNetworkDevice = Device<NetworkDeviceSettings>

/// What a vif is beyond its ends: its MAC, its bridge and its `vif=` entry.
struct NetworkDeviceSettings: DeviceSettings, Codable {
    static var type: SplitDeviceType { .network }
    /// `aa:bb:cc:dd:ee:ff`, given or generated.
    let mac: String
    let bridge: String
    let spec: VifSpec
    /// A migration's copy on this same supervisor: its MAC is still the suspended source's, whose
    /// vif the backend must let it share until the source goes (`mac-takeover`, Procvisor).
    var takeover = false

    var mtu: Int { spec.mtu ?? VifSpec.defaultMTU }

    func what(devid: UInt32) -> String { "vif \(devid) (\(mac))" }
    func attachSummary(devid: UInt32) -> String { "vif \(devid) mac \(mac) bridge \(bridge)\(spec.ip.map { " ip \($0)" } ?? "")" }

    /// libxl__set_xenstore_nic's nodes. Backend: script, mac, bridge, handle, type, mtu, and
    /// ip, rate, vifname, gatewaydev and (Procvisor) gateway when given. Frontend: handle, mac,
    /// trusted; and, read-only for the guest (as libxl writes mtu), mtu and the Procvisor keys
    /// ip and gateway its network stack configures itself from.
    func nodes(devid: UInt32) -> DeviceNodes {
        let s = spec
        var back: [(String, String)] = [
            ("script", s.script ?? VifSpec.defaultScript), ("mac", mac), ("bridge", bridge),
            ("handle", "\(devid)"), ("type", "vif"), ("mtu", "\(mtu)"),
        ]
        if let ip = s.ip { back.append(("ip", ip)) }
        if let rate = s.rate { back.append(("rate", VifSpec.rateNode(rate))) }
        if let name = s.vifname { back.append(("vifname", name)) }
        if let dev = s.gatewaydev { back.append(("gatewaydev", dev)) }
        if let gw = s.gateway { back.append(("gateway", gw)) }
        if takeover { back.append(("mac-takeover", "1")) }
        var readOnly: [(String, String)] = [("mtu", "\(mtu)")]
        if let ip = s.ip { readOnly.append(("ip", ip)) }
        if let gw = s.gateway { readOnly.append(("gateway", gw)) }
        return DeviceNodes(backend: back,
                           frontend: [("handle", "\(devid)"), ("mac", mac), ("trusted", s.trusted == false ? "0" : "1")],
                           frontendReadOnly: readOnly)
    }
}

/// A vif checked at `xl create` (before the domain exists) or `xl network-attach`.
struct PlannedVif {
    let spec: VifSpec
    let devid: UInt32
    /// Nil until resolved: the vif has no `backend=` and goes to the default netback.
    var backend: DomainRecord?
    var mac: String
    let bridge: String
    /// How errors name it.
    let what: String
    /// Its MAC is the suspended source's of the migration this vif's domain is the copy of.
    var takeover = false

    var device: PlannedDevice {
        var settings = NetworkDeviceSettings(mac: mac, bridge: bridge, spec: spec), devid = devid
        settings.takeover = takeover
        return PlannedDevice(type: .network, devid: devid, what: what, backend: backend) { frontend, backend in
            VirtualNetworkDevice(frontend: frontend, devid: devid, backend: backend, settings: settings)
        }
    }
}

import ArgumentParser
import Toolstack

struct NetworkAttach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: SplitDeviceType.network.attachCommand,
        abstract: "Create a new virtual network device.",
        discussion: "The vif is given as for vif= in xl.cfg (xl-network-configuration(5)), one KEY=VALUE per argument: 'xl network-attach guest mac=00:16:3e:00:00:01 bridge=br1 ip=10.0.0.2/24 gateway=10.0.0.1'. Without backend= the default netback driver domain serves it.")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(parsing: .captureForPassthrough, help: "[type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] [gateway=<ip>] [script=<script>] [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [mtu=<mtu>] [devid=<devid>] [model=<model>]")
    var spec: [String] = []

    func run() throws {
        let vif: VifSpec
        do {
            vif = try VifSpec.parse(components: spec)
        } catch {
            fail("\(error)")
        }
        var client = ControlClient.connect()
        switch client.request(.networkAttach(domain: domain, vif: vif)) {
        case .ok:
            return
        case let .error(msg):
            if msg.hasSuffix("is an invalid domain identifier (rc=-6)") { fail(msg) }
            fail(msg + "\nlibxl_device_\(SplitDeviceType.network.libxlName)_add failed.")
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}

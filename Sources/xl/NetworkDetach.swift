import ArgumentParser
import Toolstack

struct NetworkDetach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: SplitDeviceType.network.detachCommand,
        abstract: "Destroy a domain's virtual network device.",
        discussion: "Waits for the guest to release the vif. If it does not within the removal timeout (10 s), the removal is forced, as libxl does: the guest's nodes are removed and the backend asked once more; if that also times out the nodes are removed anyway and the command fails.")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(help: "The device: its devid or its MAC address, as xl network-list shows them.") var device: String

    func run() throws {
        var client = ControlClient.connect()
        switch client.request(.networkDetach(domain: domain, device: device)) {
        case .ok:
            return
        case let .error(msg):
            if msg.hasPrefix("Unknown device") || msg.hasSuffix("is an invalid domain identifier (rc=-6)") { fail(msg) }
            fail(msg + "\nlibxl_device_\(SplitDeviceType.network.libxlName)_del failed.")
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}

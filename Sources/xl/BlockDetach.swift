import ArgumentParser
import Toolstack

struct BlockDetach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: SplitDeviceType.block.detachCommand,
        abstract: "Detach a virtual block device from a domain.",
        discussion: "Needs the guest's cooperation: if it does not release the device within the removal timeout (10 s), the detach fails and the device stays. --force removes it regardless, which may cause I/O errors in the guest.")
    @Flag(name: [.short, .customLong("force")], help: "Detach forcefully, without waiting for the guest.") var force = false
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(help: "The device: its vdev name (xvdb) or number (51728), as xl block-list shows it.") var device: String

    func run() throws {
        var client = ControlClient.connect()
        switch client.request(.blockDetach(domain: domain, device: device, force: force)) {
        case .ok:
            return
        case let .error(msg):
            if msg.hasPrefix("Error: Device") || msg.contains("is an invalid domain identifier") { fail(msg) }
            fail(msg + "\nlibxl_device_\(SplitDeviceType.block.libxlName)_\(force ? "destroy" : "safe_remove") failed.")
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}

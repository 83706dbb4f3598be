import ArgumentParser
import LinuxHost
import Toolstack

struct NetworkList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: SplitDeviceType.network.listCommand, abstract: "List virtual network interfaces for a domain.")
    @Argument(help: "Domain names or ids.") var domains: [String] = []

    func run() throws {
        guard !domains.isEmpty else { throw ValidationError("'xl network-list' requires at least 1 argument: DOMAIN...") }
        var client = ControlClient.connect()
        print(XLFormat.networkListHeader)
        for domain in domains {
            switch client.request(.networkList(domain: domain)) {
            case let .networkDevices(rows):
                for row in rows { print(XLFormat.networkListRow(row)) }
            case let .error(msg):
                // As xl's find_domain: an unknown name ends the command.
                Process.flushStandardOutput()
                fail(msg)
            case let other:
                fail("xl: unexpected reply \(other)")
            }
        }
    }
}

import ArgumentParser
import Toolstack

struct BlockList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: SplitDeviceType.block.listCommand, abstract: "List the virtual block devices of domains.")
    @Argument(help: "Domain names or ids.") var domains: [String] = []

    func run() throws {
        guard !domains.isEmpty else { throw ValidationError("'xl block-list' requires at least 1 argument: DOMAIN...") }
        var client = ControlClient.connect()
        print(XLFormat.blockListHeader)
        // As xl: a domain that does not exist is reported and skipped; the status stays 0.
        for domain in domains {
            switch client.request(.blockList(domain: domain)) {
            case let .blockDevices(rows):
                for row in rows { print(XLFormat.blockListRow(row)) }
            case let .error(msg):
                printErr(msg)
            case let other:
                fail("xl: unexpected reply \(other)")
            }
        }
    }
}

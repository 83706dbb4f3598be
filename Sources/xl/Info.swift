import ArgumentParser
import Toolstack

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print information about the host and the supervisor.")
    @Argument(help: "Print only this field's value.") var field: String?

    func run() throws {
        var client = ControlClient.connect()
        guard case let .info(info) = client.request(.info) else { fail("xl: info failed") }
        if let field { print(XLFormat.infoField(info, field), terminator: "") } else { print(XLFormat.info(info), terminator: "") }
    }
}

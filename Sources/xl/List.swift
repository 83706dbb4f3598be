import ArgumentParser
import Toolstack

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List domains.")
    @Flag(name: [.short, .customLong("long")], help: "Print each domain's configuration as JSON.") var l = false
    @Flag(name: [.short, .customLong("verbose")], help: "Also print UUID and shutdown reason code.") var v = false
    @Argument(help: "Domains to list (all when none).") var domains: [String] = []

    func run() throws {
        var client = ControlClient.connect()
        let list = client.domains(domains)
        if l {
            print(XLFormat.listLong(list.filter { $0.domid != 0 }), terminator: "")
        } else {
            print(XLFormat.list(list, verbose: v), terminator: "")
        }
    }
}

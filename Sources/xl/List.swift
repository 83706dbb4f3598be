import ArgumentParser
import Toolstack

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List domains.")
    @Flag(name: [.short, .customLong("long")], help: "Print each domain's configuration as JSON.") var l = false
    @Flag(name: [.short, .customLong("verbose")], help: "Also print UUID and shutdown reason code.") var v = false
    @Argument(help: "Domains to list (all when none).") var domains: [String] = []

    func run() throws {
        var client = ControlClient.connect()
        // One request: the supervisor fills in the names from its XenStore, where libxl reads
        // them. Only a XENSTORED_PATH naming another xenstored is read here, once per domain.
        var list = client.domains(domains, withConfig: l)
        if let xs = client.otherXenstore() {
            for i in list.indices where list[i].domid != 0 {
                if let name = try? xs.read("/local/domain/\(list[i].domid)/name"), !name.isEmpty { list[i].name = name }
            }
        }
        if l {
            print(XLFormat.listLong(list.filter { $0.domid != 0 }), terminator: "")
        } else {
            print(XLFormat.list(list, verbose: v), terminator: "")
        }
    }
}

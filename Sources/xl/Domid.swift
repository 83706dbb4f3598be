import ArgumentParser

struct Domid: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the domid of a named domain.")
    @Argument(help: "Domain name.") var name: String

    func run() throws {
        var client = ControlClient.connect()
        guard case let .domains(list) = client.request(.list(domains: [])),
              let d = list.first(where: { $0.name == name }) else {
            fail("Can't get domid of domain name '\(name)', maybe this domain does not exist.")
        }
        print(d.domid)
    }
}

import ArgumentParser

struct Domname: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the name of a domain given its id.")
    @Argument(help: "Domain id.") var domid: String

    func run() throws {
        guard let id = UInt16(domid) else { fail("Invalid domain id.\n") }
        var client = ControlClient.connect()
        guard case let .domains(list) = client.request(.list(domains: [])),
              let d = list.first(where: { $0.domid == id }) else {
            fail("Can't get domain name of domain id '\(id)', maybe this domain does not exist.")
        }
        print(d.name)
    }
}

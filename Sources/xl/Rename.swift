import ArgumentParser

struct Rename: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Rename a domain.")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(help: "The new name.") var newName: String

    func run() throws {
        var client = ControlClient.connect()
        client.expectOK(.rename(domain: domain, newName: newName))
    }
}

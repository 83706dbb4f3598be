import ArgumentParser

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Terminate a domain immediately.")
    @Argument(help: "Domain name or id.") var domain: String

    func run() throws {
        var client = ControlClient.connect()
        client.expectOK(.destroy(domain: domain))
    }
}

import ArgumentParser

struct Unpause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Resume a paused domain.")
    @Argument(help: "Domain name or id.") var domain: String

    func run() throws {
        var client = ControlClient.connect()
        client.expectOK(.unpause(domain: domain))
    }
}

import ArgumentParser

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Pause every vCPU of a domain.")
    @Argument(help: "Domain name or id.") var domain: String

    func run() throws {
        var client = ControlClient.connect()
        client.expectOK(.pause(domain: domain))
    }
}

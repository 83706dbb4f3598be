import ArgumentParser

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Terminate a domain immediately.")
    @Flag(name: .short, help: "Allow domain 0 to be destroyed (refused here: domain 0 is the supervisor).") var force = false
    @Argument(help: "Domain name or id.") var domain: String

    func run() throws {
        // As xl's destroy_domain: domain 0 only with -f. Here domain 0 is procvisord itself,
        // which no command can destroy: stopping it (SIGTERM) powers every domain off.
        if domain == "0" || domain == "Domain-0" {
            if !force { fail("Not destroying domain 0; use -f to force.") }
            fail("destroy failed: domain 0 is procvisord itself; stop it (SIGTERM) to power every domain off")
        }
        var client = ControlClient.connect()
        client.expectOK(.destroy(domain: domain))
    }
}

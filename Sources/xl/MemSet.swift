import ArgumentParser

struct MemSet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mem-set", abstract: "Set the current memory usage for a domain (its balloon target).")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(help: "Memory: MiB, or a number with a b/k/m/g suffix (as xl).") var memory: String

    func run() throws {
        guard let kb = MemMax.parseKB(memory) else { fail("invalid memory size: \(memory)") }
        var client = ControlClient.connect()
        client.expectOK(.memSet(domain: domain, kb: kb))
    }
}

import ArgumentParser

struct Dmesg: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the supervisor's message buffer.")
    @Flag(name: [.short, .customLong("clear")], help: "Clear the buffer after printing it.") var c = false

    func run() throws {
        var client = ControlClient.connect()
        guard case let .dmesg(text) = client.request(.dmesg(clear: c)) else { fail("xl: dmesg failed") }
        print(text, terminator: "")
    }
}

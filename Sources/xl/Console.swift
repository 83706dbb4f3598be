import ArgumentParser
import LinuxHost
import Toolstack

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach to a domain's console (Ctrl-] detaches).")
    @Option(name: .short, help: "Console type (pv only).") var t: String?
    @Argument(help: "Domain name or id.") var domain: String

    func run() throws {
        if let t, t != "pv" { fail("xl: console type '\(t)' is not supported (only pv)") }
        var client = ControlClient.connect()
        Console.attach(client: &client, domain: domain)
    }

    /// Streams the console until the domain goes away or the user types Ctrl-] (0x1d).
    /// `attached` runs once the supervisor has the connection attached (and before anything
    /// is streamed): `xl create -c` unpauses the new domain there, so that none of its output
    /// can come and go before the console is connected.
    /// `refused` runs when the supervisor refuses the attach, before xl exits.
    static func attach(client: inout ControlClient, domain: String, attached: () -> Void = {}, refused: () -> Void = {}) {
        switch client.request(.consoleAttach(domain: domain)) {
        case .consoleAttached: break
        case let .error(msg): refused(); fail(msg)
        case let other: refused(); fail("xl: unexpected reply \(other)")
        }
        attached()
        let saved = TerminalMode.makeRaw(.standardInput)
        defer { saved?.restore(.standardInput) }
        // Bytes that arrived with the attach reply are console output already.
        if !client.buffer.isEmpty { _ = try? FileDescriptor.standardOutput.writeAll(client.buffer) }
        var stdinOpen = true
        var poll = Poll([(client.fd, .readable), (.standardInput, .readable)])
        loop: while true {
            guard (try? poll.wait(timeoutMs: -1)) != nil else { break }
            if poll.isReady(0) {
                guard let out = try? client.fd.read(upTo: 65536), !out.isEmpty else { break }
                try? FileDescriptor.standardOutput.writeAll(out)
            }
            if stdinOpen && poll.isReady(1) {
                let input = (try? FileDescriptor.standardInput.read(upTo: 4096)) ?? []
                if input.isEmpty { stdinOpen = false; poll.ignore(1); continue }
                if let i = input.firstIndex(of: 0x1d) {
                    if i > 0 { try? client.fd.writeAll(Array(input[..<i])) }
                    break loop
                }
                try? client.fd.writeAll(input)
            }
        }
    }
}

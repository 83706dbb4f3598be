import ArgumentParser
import ProcvisorABI
import Toolstack

/// Shared by `xl shutdown` and `xl reboot`: ask, then optionally wait.
enum ShutdownCommand {
    static func run(reason: ShutdownReason, domain: String?, all: Bool, wait: Bool) throws {
        var client = ControlClient.connect()
        var targets: [DomainInfo]
        if all {
            if domain != nil { throw ValidationError("-a takes no domain argument") }
            targets = client.domains([]).filter { $0.domid != 0 && !$0.shutdown }
        } else {
            guard let domain else { throw ValidationError("a domain is required (or -a for all)") }
            targets = client.domains([domain])
            if targets.contains(where: { $0.domid == 0 }) { fail("xl: cannot \(reason == .reboot ? "reboot" : "shut down") Domain-0") }
        }
        for d in targets {
            printErr("\(reason == .reboot ? "Rebooting" : "Shutting down") domain \(d.domid)")
            client.expectOK(.shutdown(domain: String(d.domid), reason: reason))
        }
        guard wait, !targets.isEmpty else { return }
        printErr("Waiting for \(targets.count) domains")
        for d in targets {
            switch client.request(.waitShutdown(domid: d.domid)) {
            case let .shutdownDone(domid, r):
                printErr("Domain \(domid) has been shut down, reason code \(r.rawValue)")
            case let .error(msg): fail(msg)
            case let other: fail("xl: unexpected reply \(other)")
            }
        }
        printErr("All domains have been shut down")
    }
}

struct Shutdown: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask a domain to shut down (power off).")
    @Flag(name: .short, help: "Shut down all guest domains.") var a = false
    @Flag(name: .short, help: "Wait for the domains to finish shutting down.") var w = false
    @Argument(help: "Domain name or id.") var domain: String?

    func run() throws { try ShutdownCommand.run(reason: .poweroff, domain: domain, all: a, wait: w) }
}

struct Reboot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask a domain to reboot.")
    @Flag(name: .short, help: "Reboot all guest domains.") var a = false
    @Flag(name: .short, help: "Wait for the domains to finish shutting down for the reboot.") var w = false
    @Argument(help: "Domain name or id.") var domain: String?

    func run() throws { try ShutdownCommand.run(reason: .reboot, domain: domain, all: a, wait: w) }
}

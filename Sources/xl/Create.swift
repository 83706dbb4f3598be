import ArgumentParser
import LinuxHost
import Toolstack

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a domain from a config file.")

    @Flag(name: .short, help: "Leave the domain paused after it is created.") var p = false
    @Flag(name: .short, help: "Connect to the console after the domain is created.") var c = false
    @Flag(name: .short, help: "Dry run: print the resulting configuration as JSON; create nothing.") var n = false
    @Flag(name: .short, help: "Quiet.") var q = false
    @Option(name: .short, help: "Use the given configuration file.") var f: String?
    @Argument(help: "CONFIG [KEY=VALUE ...]: config file, then extra settings in xl.cfg syntax.")
    var arguments: [String] = []

    func run() throws {
        var args = arguments
        let path: String
        if let f { path = f } else if !args.isEmpty { path = args.removeFirst() } else {
            throw ValidationError("'xl create' requires at least 1 argument")
        }
        if !q { printErr("Parsing config from \(path)") }
        var warnings: [String] = []
        var config: DomainConfig
        do {
            config = try DomainConfig.load(path: path, extraSettings: args, warnings: &warnings)
        } catch {
            warnings.forEach(printErr)
            fail("\(error)")
        }
        warnings.forEach(printErr)
        if let k = config.kernel, !k.isEmpty, !k.hasPrefix("/") {
            // As xl does: a relative kernel path is relative to the current directory.
            if let cwd = Process.currentDirectory { config.kernel = cwd + "/" + k }
        }
        if n {
            print(XLFormat.dryRun(config), terminator: "")
            return
        }
        var client = ControlClient.connect()
        // As libxl does for `-c`: the domain is created paused, the console connected, and only
        // then is it unpaused, so a guest that writes and exits at once is still seen whole.
        switch client.request(.create(config: config, paused: p || c)) {
        case let .created(domid):
            guard c else { return }
            // Without a console the domain still runs, as it would have without -c.
            func unpause() {
                guard !p else { return }
                var other = ControlClient.connect()
                other.expectOK(.unpause(domain: "\(domid)"))
                other.fd.close()
            }
            Console.attach(client: &client, domain: "\(domid)", attached: unpause, refused: unpause)
        case let .error(msg):
            fail("xl: \(msg)")
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}

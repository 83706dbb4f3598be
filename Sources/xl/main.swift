// xl: Procvisor's toolstack command line. Each subcommand lives in its own file.
import ArgumentParser
import LinuxHost

// As xl's main: no subcommand lists them all (exit 1); `help [CMD]` prints help (exit 0); a
// subcommand it does not have (`xl top`, `xl vcpu-list` here, or a typo) is "command not
// implemented", exit 1; a usage error shows that command's own help (XLHelp).
var arguments = Array(CommandLine.arguments.dropFirst())
// xl's global options, before the subcommand: -v (more messages) and -t (progress with CR) and
// -f (force) are taken and change nothing here; -N (dry run) only `create` implements.
var dryRun = false
while let first = arguments.first, first.hasPrefix("-"), first.count > 1, first != "-h", first != "--help" {
    for c in first.dropFirst() {
        switch c {
        case "v", "t", "f": break
        case "N": dryRun = true
        default:
            FileDescriptor.standardError.writeUnchecked("unknown global option\n")
            Process.exit(1)
        }
    }
    arguments.removeFirst()
}
guard let name = arguments.first else {
    FileDescriptor.standardOutput.writeUnchecked(XLHelp.list())
    Process.exit(1)
}
if name == "help" || name == "-h" || name == "--help" {
    let topic = name == "help" ? arguments.dropFirst().first : nil
    FileDescriptor.standardOutput.writeUnchecked(topic.map(XLHelp.help) ?? XLHelp.list())
    Process.exit(0)
}
guard XLHelp.command(named: name) != nil else {
    FileDescriptor.standardError.writeUnchecked("command not implemented\n")
    Process.exit(1)
}
if dryRun {
    guard name == "create" else {
        FileDescriptor.standardError.writeUnchecked("command does not implement -N (dryrun) option\n")
        Process.exit(1)
    }
    arguments.insert("-n", at: 1)
}
// `-h` anywhere among the options, as xl's getopt finds it.
if arguments.dropFirst().prefix(while: { $0 != "--" }).contains(where: { $0 == "-h" || $0 == "--help" }) {
    FileDescriptor.standardOutput.writeUnchecked(XLHelp.help(name))
    Process.exit(0)
}
var command: ParsableCommand
do {
    command = try XL.parseAsRoot(arguments)
} catch {
    XLHelp.usageError(name, error)
}
do {
    try command.run()
} catch let error as ValidationError {
    XLHelp.usageError(name, error)  // what a command finds wrong with its arguments
} catch {
    XL.exit(withError: error)
}

// xl: Procvisor's toolstack command line. Each subcommand lives in its own file.
import LinuxHost

// As xl's main: a subcommand it does not have (`xl top`, `xl vcpu-list` here, or a typo) is
// "command not implemented", exit 1, not a usage error about an unexpected argument.
if let command = CommandLine.arguments.dropFirst().first, !command.hasPrefix("-"), command != "help",
   !XL.configuration.subcommands.contains(where: { $0._commandName == command }) {
    FileDescriptor.standardError.writeUnchecked("command not implemented\n")
    Process.exit(1)
}
XL.main()

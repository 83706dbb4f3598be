import ArgumentParser
import LinuxHost
import Toolstack

/// `xl`, with Xen's subcommands and output.
struct XL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xl",
        abstract: "Procvisor toolstack: manage domains as Xen's xl does.",
        subcommands: [
            Create.self, Destroy.self, Shutdown.self, Reboot.self, Pause.self, Unpause.self, Rename.self,
            List.self, Info.self, Console.self, Dmesg.self, Domid.self, Domname.self, Uptime.self, MemMax.self, MemSet.self,
            BlockAttach.self, BlockDetach.self, BlockList.self, NetworkAttach.self, NetworkDetach.self, NetworkList.self,
            NetworkFilter.self, SchedCredit.self, SchedCredit2.self, Top.self, Save.self, Restore.self, Migrate.self, MigrateReceive.self, LiveUpdate.self,
        ])
}

/// Prints to stderr and exits 1: how xl reports a failed command.
func fail(_ message: String) -> Never {
    let text = message.hasSuffix("\n") ? message : message + "\n"
    FileDescriptor.standardError.writeUnchecked(text)
    Process.exit(1)
}

func printErr(_ message: String) {
    FileDescriptor.standardError.writeUnchecked(message + "\n")
}

/// An xl.cfg given to save, restore or migrate in place of the domain's own: its warnings on
/// stderr, and an error ends the command.
func loadConfigOrFail(_ path: String) -> DomainConfig {
    var warnings: [String] = []
    let config: DomainConfig
    do {
        config = try DomainConfig.load(path: path, extraSettings: [], warnings: &warnings)
    } catch {
        warnings.forEach(printErr)
        fail("xl: \(error)")
    }
    warnings.forEach(printErr)
    return config
}

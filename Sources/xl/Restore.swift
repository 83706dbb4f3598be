import ArgumentParser
import LinuxHost
import ProcvisorABI
import Toolstack

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a domain from a saved state.",
        usage: "xl restore [options] [<ConfigFile>] <CheckpointFile>")

    @Flag(name: .short, help: "Do not unpause domain after restoring it.") var p = false
    @Flag(name: .short, help: "Do not wait in the background for the death of the domain (xl never does here).") var e = false
    @Flag(name: .short, help: "Enable debug messages.") var d = false
    @Argument(help: "[ConfigFile] CheckpointFile") var files: [String] = []

    func run() throws {
        guard !files.isEmpty else { throw ValidationError("'xl restore' requires at least 1 argument") }
        guard files.count <= 2 else { throw ValidationError("'xl restore' takes a config file and a checkpoint file, not \(files.count) files") }
        let file = files.last!
        var override: DomainConfig?
        if files.count == 2 {
            printErr("Parsing config from \(files[0])")
            override = loadConfigOrFail(files[0])
        }
        let input: FileDescriptor
        do {
            input = try FileDescriptor.open(file, .readOnly)
        } catch {
            fail("xl: cannot open \(file): \(error)")
        }
        defer { input.close() }
        var client = ControlClient.connect()
        printErr("Loading new save file \(file) (new xl fmt info 0x\(String(SaveFormat.mandatoryJSON | SaveFormat.mandatoryStreamV2, radix: 16))/0x0)")
        do {
            let r = try SaveStreamIO.restore(from: DescriptorSource(input), client: &client, configOverride: override, paused: p) { _ in
                if override == nil { printErr(" Savefile contains xl domain config in JSON format") }
            }
            if d { printErr("xl: restored \(r.name) as domain \(r.domid)") }
        } catch let e as RestoreRefused {
            fail("xl: restore \(file): \(e.message)")
        } catch {
            fail("xl: restore \(file): \(error)")
        }
    }
}

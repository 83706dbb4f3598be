import ArgumentParser
import FoundationEssentials
import LinuxHost
import ProcvisorABI
import Toolstack

struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save a domain state to restore later.",
        usage: "xl save [options] <Domain> <CheckpointFile> [<ConfigFile>]")

    @Flag(name: .short, help: "Leave domain running after creating the snapshot.") var c = false
    @Flag(name: .short, help: "Leave domain paused after creating the snapshot.") var p = false
    @Argument(help: "The domain (name or id).") var domain: String
    @Argument(help: "The file to write.") var file: String
    @Argument(help: "A config file to save instead of the domain's own.") var configFile: String?

    func run() throws {
        var override: DomainConfig?
        if let configFile {
            override = loadConfigOrFail(configFile)
        }
        let out: FileDescriptor
        do {
            out = try FileDescriptor.open(file, [.writeOnly, .create, .truncate], mode: 0o644)
        } catch {
            fail("xl: cannot open \(file) for writing: \(error)")
        }
        var client = ControlClient.connect()
        let written = SaveCommand.suspendAndWrite(client: &client, domain: domain, override: override,
                                                  sink: DescriptorSink(out, what: file), what: file)
        out.close()
        guard let saved = written else {
            FileIO.unlink(file)  // nothing half-written is left to be mistaken for a save
            Process.exit(1)
        }
        if c || p {
            client.expectOK(.resume(domain: String(saved.info.domid), paused: p))
        } else {
            client.expectOK(.destroy(domain: String(saved.info.domid)))
        }
    }
}

enum SaveCommand {
    /// Suspends `domain` and writes its image into `sink`; on failure says why, resumes the
    /// domain and returns nil.
    static func suspendAndWrite(client: inout ControlClient, domain: String, override: DomainConfig?,
                                sink: SaveStreamSink, what: String, quiet: Bool = false) -> SuspendedDomain? {
        let saved: SuspendedDomain
        switch client.request(.suspend(domain: domain)) {
        case let .suspended(s):
            saved = s
        case let .error(msg):
            printErr("xl: \(msg)")
            return nil
        case let other:
            printErr("xl: unexpected reply \(other)")
            return nil
        }
        guard let ram = client.receivedFDs.popLast() else {
            printErr("xl: the supervisor sent no RAM descriptor")
            client.expectOK(.resume(domain: String(saved.info.domid), paused: false))
            return nil
        }
        defer { ram.close() }
        var config = override ?? saved.config
        config.name = saved.info.name
        let configBytes = (try? JSONEncoder().encode(config)).map { Array($0) } ?? []
        if !quiet { printErr("Saving to \(what) new xl format (info 0x\(String(SaveFormat.mandatoryJSON | SaveFormat.mandatoryStreamV2, radix: 16))/0x0/\(configBytes.count + 8))") }
        do {
            try SaveStreamIO.write(saved, ram: ram, config: config, to: sink)
        } catch {
            printErr("xl: saving dom\(saved.info.domid) (\(saved.info.name)) to \(what) failed: \(error); the domain is resumed")
            client.expectOK(.resume(domain: String(saved.info.domid), paused: false))
            return nil
        }
        return saved
    }
}

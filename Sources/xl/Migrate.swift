import ArgumentParser
import LinuxHost
import ProcvisorABI
import Toolstack

/// xl's migration handshake (xl_migrate.c): the receiver's banner (without its NUL), then the
/// stream; the other messages travel with their NUL, the report with one status byte after it.
enum MigrationHandshake {
    static let receiverBanner = Array("xl migration receiver ready, send binary domain data.\n".utf8)
    static let receiverReady = Array("domain received, ready to unpause".utf8) + [0]
    static let permissionToGo = Array("domain is yours, you are cleared to unpause".utf8) + [0]
    static let report = Array("my copy unpause results are as follows".utf8) + [0]

    /// Reads exactly `message` from `fd`; false (with xl's message) when something else came.
    static func expect(_ message: [UInt8], on fd: FileDescriptor, what: String, rune: String?) -> Bool {
        let stream = rune != nil ? "migration receiver stream" : "migration stream"
        var got: [UInt8] = []
        while got.count < message.count {
            guard let chunk = try? fd.read(upTo: message.count - got.count), !chunk.isEmpty else {
                printErr("\(stream): unexpected end of stream reading \(what)")
                if let rune { printErr("(command run was: \(rune) )") }
                return false
            }
            got += chunk
        }
        if got != message {
            printErr("\(stream) contained unexpected data instead of \(what)")
            if let rune { printErr("(command run was: \(rune) )") }
            return false
        }
        return true
    }

    static func send(_ message: [UInt8], on fd: FileDescriptor) -> Bool {
        (try? fd.writeAll(message)) != nil
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Migrate a domain to another host.",
        usage: "xl migrate [options] <Domain> <host>",
        discussion: """
        The stream goes to `<sshcommand> <host> xl migrate-receive` run through sh -c. With -s "" the \
        host argument is the whole command instead, e.g. to migrate between two supervisors on one \
        machine: xl migrate -s "" DOMAIN "PROCVISOR_RUNDIR=/run/procvisor-b xl migrate-receive".
        """)

    @Option(name: .customShort("C"), help: "Send <config> instead of config file from creation.") var config: String?
    @Option(name: .short, help: "Use <sshcommand> instead of ssh. String will be passed to sh. If empty, run <host> instead of ssh <host> xl migrate-receive [-d -e].")
    var s = "ssh"
    @Flag(name: .short, help: "Do not wait in the background (on <host>) for the death of the domain.") var e = false
    @Flag(name: .short, help: "Do not unpause domain after migrating it.") var p = false
    @Flag(name: .customShort("F"), help: "Run in the foreground (xl never daemonizes here).") var foreground = false
    @Flag(name: .customLong("debug"), help: "Print huge (!) amount of debug during the migration process.") var debug = false
    @Flag(name: .customLong("live"), help: "Ignored, for compatibility with xm.") var live = false
    @Argument(help: "The domain (name or id).") var domain: String
    @Argument(help: "The host (or, with -s \"\", the command to run).") var host: String

    func run() throws {
        var override: DomainConfig?
        if let config {
            var warnings: [String] = []
            do {
                override = try DomainConfig.load(path: config, extraSettings: [], warnings: &warnings)
            } catch {
                warnings.forEach(printErr)
                fail("xl: \(error)")
            }
            warnings.forEach(printErr)
        }
        let rune = s.isEmpty ? host : "exec \(s) \(host) xl migrate-receive\(e ? " -e" : "")\(debug ? " -d" : "")\(p ? " -p" : "")"
        // If the receiver dies we get an error and clean up rather than just dying.
        Signals.ignore(Signals.brokenPipe)
        let (toChildRead, toChild) = try FileDescriptor.pipe()
        let (fromChild, fromChildWrite) = try FileDescriptor.pipe()
        let env = Process.environment().map { "\($0.key)=\($0.value)" }
        let child: Int32
        do {
            child = try Spawner.spawn(path: "/bin/sh", argv: ["sh", "-c", rune], env: env,
                                      fds: [(toChildRead, 0), (fromChildWrite, 1), (.standardError, 2)], limits: [], filter: nil)
        } catch {
            fail("xl: cannot start the migration transport (\(rune)): \(error)")
        }
        toChildRead.close()
        fromChildWrite.close()
        // A bigger pipe: fewer wake-ups of the transport per megabyte (ssh reads in large chunks).
        toChild.setPipeSize(1 << 20)
        var client = ControlClient.connect()
        let outcome = migrate(client: &client, override: override, rune: rune, to: toChild, from: fromChild)
        toChild.close()
        fromChild.close()
        _ = try? ChildReaper.wait(child)
        if !outcome { Process.exit(1) }
    }

    /// Xen's migrate_domain: true when the domain now runs at the target.
    func migrate(client: inout ControlClient, override: DomainConfig?, rune: String, to: FileDescriptor, from: FileDescriptor) -> Bool {
        guard MigrationHandshake.expect(MigrationHandshake.receiverBanner, on: from, what: "banner", rune: rune) else { return false }
        let sink = DescriptorSink(to, what: "the migration stream")
        let start = MonotonicClock.nanoseconds()
        guard let saved = SaveCommand.suspendAndWrite(client: &client, domain: domain, override: override, sink: sink, what: "migration stream",
                                                      quiet: true) else {
            printErr("Migration failed, resuming at sender.")
            return false
        }
        let id = String(saved.info.domid)
        if debug {
            printErr("migration sender: stream sent in \((MonotonicClock.nanoseconds() - start) / 1_000_000) ms (stop and copy: the domain was suspended for the whole transfer)")
        }
        guard MigrationHandshake.expect(MigrationHandshake.receiverReady, on: from, what: "ready message", rune: rune) else {
            printErr("Migration failed, resuming at sender.")
            client.expectOK(.resume(domain: id, paused: false))
            return false
        }
        printErr("migration sender: Target has acknowledged transfer.")
        let name = saved.info.name
        let away = name + "--migratedaway"
        switch client.request(.rename(domain: id, newName: away)) {
        case .ok: break
        case let other:
            printErr("xl: cannot rename \(name) to \(away): \(other)")
            printErr("Migration failed, resuming at sender.")
            client.expectOK(.resume(domain: id, paused: false))
            return false
        }
        printErr("migration sender: Giving target permission to start.")
        guard MigrationHandshake.send(MigrationHandshake.permissionToGo, on: to),
              MigrationHandshake.expect(MigrationHandshake.report, on: from, what: "success/failure report message", rune: rune),
              let status = try? from.read(upTo: 1), status.count == 1 else {
            printErr("""
            ** Migration failed during final handshake **
            Domain state is now undefined !
            Please CHECK AT BOTH ENDS for running instances, before renaming and
             resuming at most one instance.  Two simultaneous instances of the domain
             would probably result in SEVERE DATA LOSS and it is now your
             responsibility to avoid that.  Sorry.
            """)
            return false
        }
        if status[0] != 0 {
            printErr("migration sender: Target reports startup failure (status code \(Int8(bitPattern: status[0]))).")
            guard MigrationHandshake.expect(MigrationHandshake.permissionToGo, on: from, what: "permission for sender to resume", rune: rune) else {
                return false
            }
            printErr("migration sender: Trying to resume at our end.")
            _ = client.request(.rename(domain: id, newName: name))
            if case .ok = client.request(.resume(domain: id, paused: false)) { printErr("migration sender: Resumed OK.") }
            printErr("Migration failed due to problems at target.")
            return false
        }
        printErr("migration sender: Target reports successful startup.")
        client.expectOK(.destroy(domain: id))
        printErr("Migration successful.")
        return true
    }
}

struct MigrateReceive: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-receive",
        abstract: "Restore a domain from a migration stream on standard input (run by xl migrate).",
        usage: "xl migrate-receive [-e] [-d] [-p]")

    @Flag(name: .short, help: "Do not wait in the background for the death of the domain.") var e = false
    @Flag(name: .short, help: "Debug.") var d = false
    @Flag(name: .short, help: "Do not unpause the domain after migrating it.") var p = false
    @Flag(name: .customShort("F"), help: "Run in the foreground.") var foreground = false

    func run() throws {
        Signals.ignore(Signals.brokenPipe)
        let input = FileDescriptor.standardInput, output = FileDescriptor.standardOutput
        input.setPipeSize(1 << 20)
        printErr("migration target: Ready to receive domain.")
        guard MigrationHandshake.send(MigrationHandshake.receiverBanner, on: output) else { Process.exit(1) }
        var client = ControlClient.connect()
        let restored: SaveStreamIO.Restored
        var originalName = ""
        do {
            restored = try SaveStreamIO.restore(from: DescriptorSource(input), client: &client, configOverride: nil,
                                                rename: { originalName = $0; return $0 + "--incoming" }, paused: true)
        } catch {
            printErr("migration target: Domain creation failed (\(error)).")
            Process.exit(1)
        }
        let id = String(restored.domid)
        printErr("migration target: Transfer complete, requesting permission to start domain.")
        guard MigrationHandshake.send(MigrationHandshake.receiverReady, on: output) else {
            _ = client.request(.destroy(domain: id))
            Process.exit(1)
        }
        var failure: String?
        if !MigrationHandshake.expect(MigrationHandshake.permissionToGo, on: input, what: "GO message", rune: nil) {
            failure = "no permission to start"
        } else {
            printErr("migration target: Got permission, starting domain.")
            if case let .error(msg) = client.request(.rename(domain: id, newName: originalName)) {
                failure = msg
            } else if !p, case let .error(msg) = client.request(.unpause(domain: id)) {
                failure = msg
            }
        }
        if failure == nil { printErr("migration target: Domain started successfully.") }
        // ERROR_FAIL (-3) as the status byte, as libxl's rc.
        guard MigrationHandshake.send(MigrationHandshake.report + [failure == nil ? 0 : 3], on: output) else { Process.exit(1) }
        if let failure {
            printErr("migration target: Failure (\(failure)), destroying our copy.")
            _ = client.request(.destroy(domain: id))
            printErr("migration target: Cleanup OK, granting sender permission to resume.")
            _ = MigrationHandshake.send(MigrationHandshake.permissionToGo, on: output)
            Process.exit(1)
        }
    }
}

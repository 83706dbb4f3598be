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
            override = loadConfigOrFail(config)
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
        guard let saved = sendLive(client: &client, override: override, sink: sink) else {
            printErr("Migration failed, resuming at sender.")
            return false
        }
        let id = String(saved.info.domid)
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

extension Migrate {
    /// libxc's pre-copy limits: at most this many rounds while the domain runs, and stop early
    /// once a round leaves no more than this many pages dirty.
    static let maxRounds = 5
    static let dirtyThreshold: UInt64 = 50

    /// The pages written since the last call (and the log cleared).
    static func dirtyPages(_ client: inout ControlClient, _ domid: UInt16) throws -> DirtyPages {
        switch client.request(.dirtyPages(domain: String(domid))) {
        case let .dirtyPages(d): return d
        case let other: throw CreateFailure("the write log failed: \(other)")
        }
    }

    func debugLine(_ s: @autoclosure () -> String) { if debug { printErr("migration sender: " + s()) } }

    /// The live pre-copy (libxc's send_memory_live, then its stop-and-copy): every populated
    /// page while the domain runs, then rounds of the pages written meanwhile, until few remain,
    /// the rounds stop shrinking or the limit is reached; then the domain is suspended and what
    /// is left goes with the records. Returns the suspended domain (nil: failed, said why, the
    /// domain runs on).
    func sendLive(client: inout ControlClient, override: DomainConfig?, sink: SaveStreamSink) -> SuspendedDomain? {
        let t0 = MonotonicClock.nanoseconds()
        func ms(_ from: UInt64) -> String {
            let tenths = (MonotonicClock.nanoseconds() - from) / 100_000
            return "\(tenths / 10).\(tenths % 10)"
        }
        let start: DirtyLogStart
        switch client.request(.dirtyLogStart(domain: domain)) {
        case let .dirtyLogStarted(s): start = s
        case let .error(msg):
            printErr("xl: \(msg)")
            return nil
        case let other:
            printErr("xl: unexpected reply \(other)")
            return nil
        }
        guard let ram = client.receivedFDs.popLast() else {
            printErr("xl: the supervisor sent no RAM descriptor")
            return nil
        }
        defer { ram.close() }
        var config = override ?? start.config
        config.name = start.info.name
        if let how = start.tracking {
            debugLine("dirty pages tracked by \(how)")
        } else {
            debugLine("cannot track dirty pages (\(start.unavailable ?? "unknown reason")): the domain is stopped for the whole copy")
        }
        let sender: ImageSender
        var sentPopulated = start.populated
        var carry: [PFNRun] = []
        do {
            sender = try ImageSender(sink: sink, ram: ram, info: start.info, memory: start.memory, config: config)
            if start.tracking != nil {
                let r0 = MonotonicClock.nanoseconds()
                try sender.send(start.populated, skipHoles: true)
                debugLine("round 1: \(PFNRun.total(start.populated)) pages (\(sender.bytesSent >> 20) MiB of data) in \(ms(r0)) ms, the domain running")
                var last = UInt64.max
                for round in 2...Self.maxRounds {
                    let dirty = try Self.dirtyPages(&client, start.info.domid)
                    let toSend = PFNRun.intersect(dirty.dirty, dirty.populated)
                    let gone = PFNRun.subtract(sentPopulated, dirty.populated)
                    let n = PFNRun.total(toSend)
                    if n <= Self.dirtyThreshold || n >= last {
                        carry = toSend
                        debugLine("round \(round): \(n) pages dirty, \(n <= Self.dirtyThreshold ? "few enough" : "no fewer than the round before"): stop and copy")
                        break
                    }
                    let r = MonotonicClock.nanoseconds()
                    try sender.send(toSend, skipHoles: false)
                    try sender.sendAbsent(gone)
                    sentPopulated = dirty.populated
                    debugLine("round \(round): \(n) dirty pages in \(ms(r)) ms, the domain running")
                    last = n
                    if round == Self.maxRounds { debugLine("\(Self.maxRounds) rounds: stop and copy") }
                }
            }
        } catch {
            printErr("xl: sending dom\(start.info.domid) (\(start.info.name)) failed: \(error); the domain runs on")
            return nil
        }
        let stop = MonotonicClock.nanoseconds()
        let saved: SuspendedDomain
        switch client.request(.suspend(domain: String(start.info.domid))) {
        case let .suspended(s): saved = s
        case let .error(msg):
            printErr("xl: \(msg)")
            return nil
        case let other:
            printErr("xl: unexpected reply \(other)")
            return nil
        }
        client.receivedFDs.popLast()?.close()  // the same RAM
        do {
            if start.tracking != nil {
                let final = try Self.dirtyPages(&client, start.info.domid)
                var pfns: [UInt64] = []
                for r in carry + final.dirty { pfns += Array(r.start..<(r.start + r.count)) }
                let last = PFNRun.intersect(PFNRun.runs(of: pfns), saved.populated)
                try sender.send(last, skipHoles: false)
                try sender.sendAbsent(PFNRun.subtract(sentPopulated, saved.populated))
                debugLine("stop and copy: \(PFNRun.total(last)) pages")
            } else {
                try sender.send(saved.populated, skipHoles: true)
            }
            try sender.finish(saved)
        } catch {
            printErr("xl: sending dom\(saved.info.domid) (\(saved.info.name)) failed: \(error)")
            client.expectOK(.resume(domain: String(saved.info.domid), paused: false))
            return nil
        }
        debugLine("stream sent in \(ms(t0)) ms, \(sender.pagesSent) pages, the domain stopped for the last \(ms(stop)) ms of it")
        return saved
    }
}

/// A failure to report with its reason.
struct CreateFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
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

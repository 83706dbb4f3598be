import LinuxHost
import ProcvisorABI
import Toolstack
import XenStoreSocket

/// xl's connection to the supervisor. Starts the supervisor on first use when none is running.
struct ControlClient {
    let fd: FileDescriptor
    let runDirectory: RunDirectory
    var buffer: [UInt8] = []
    /// Descriptors that came with replies (`.suspended`, `.restoring`), oldest first.
    var receivedFDs: [FileDescriptor] = []

    static func connect() -> ControlClient {
        let env = Process.environment()
        let dir = RunDirectory.resolve(environment: env, uid: Process.userID)
        let path = dir.controlSocket
        if let fd = try? UnixSocket.connect(path: path) { return ControlClient(fd: fd, runDirectory: dir) }
        let others = otherSupervisors(than: dir)
        if env["PROCVISOR_NO_AUTOSTART"] == "1" {
            fail("xl: cannot reach the Procvisor supervisor at \(path) (not running; autostart disabled by PROCVISOR_NO_AUTOSTART)"
                 + (others.first.map { "; one runs in \($0.directory) (pid \($0.pid)): set PROCVISOR_RUNDIR=\($0.directory) to use it" } ?? ""))
        }
        // Starting one is what a first xl does; a second supervisor beside a running one, or one
        // in a PROCVISOR_RUNDIR that names nothing yet, is said, so it is not a surprise.
        if let other = others.first {
            printErr("xl: no supervisor runs in \(dir.path); starting one there. Another runs in \(other.directory) (pid \(other.pid)): "
                     + "set PROCVISOR_RUNDIR=\(other.directory) to use it")
        } else if let explicit = env["PROCVISOR_RUNDIR"], !explicit.isEmpty {
            printErr("xl: no supervisor runs in PROCVISOR_RUNDIR=\(explicit); starting one there")
        }
        startSupervisor(env: env, dir: dir)
        do {
            return ControlClient(fd: try UnixSocket.connect(path: path), runDirectory: dir)
        } catch {
            fail("xl: cannot reach the Procvisor supervisor at \(path): \(error)")
        }
    }

    /// A dom0 XenStore other than the supervisor's own, when `XENSTORED_PATH` names one; nil
    /// when it names the supervisor's (whose contents the supervisor's replies already carry)
    /// or nothing. A `XENSTORED_PATH` that reaches nothing is said.
    func otherXenstore() -> XSSocketClient? {
        let own = runDirectory.xenstoreSocket
        let path = XSSocketClient.socketPath(environment: Process.environment(), runDirectory: runDirectory.path)
        guard path != own else { return nil }
        do { return try XSSocketClient(path: path) } catch {
            printErr("xl: XENSTORED_PATH=\(path) reaches no xenstored (\(error)); using the supervisor's, \(own)")
            return nil
        }
    }

    /// Other supervisors of this user that are running (each holds its run directory's lock
    /// file open), but not the one in `dir`.
    static func otherSupervisors(than dir: RunDirectory) -> [(pid: Int32, directory: String)] {
        ProcFS.processes(named: "procvisord", uid: Process.userID).compactMap { pid in
            guard let lock = ProcFS.openFilePaths(of: pid).first(where: { $0.hasSuffix("/procvisord.lock") }) else { return nil }
            let directory = String(lock.dropLast("/procvisord.lock".count))
            return directory == (DynamicLoader.realPath(dir.path) ?? dir.path) ? nil : (pid, directory)
        }
    }

    /// Runs `procvisord --daemonize`, which returns once its control socket is listening.
    static func startSupervisor(env: [String: String], dir: RunDirectory) {
        let exe = env["PROCVISOR_SUPERVISOR"] ?? {
            let me = Process.executablePath() ?? "/usr/local/bin/xl"
            return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/procvisord"
        }()
        guard FileIO.isExecutable(exe) else {
            fail("xl: the supervisor is not running and \(exe) cannot be started (not found or not executable); set PROCVISOR_SUPERVISOR")
        }
        let envList = env.map { "\($0.key)=\($0.value)" }
        do {
            let pid = try Spawner.spawnPlain(path: exe, argv: [exe, "--daemonize"], env: envList)
            switch try ChildReaper.wait(pid) {
            case .exited(0), .exited(3):  // 3: another xl started one at the same moment
                return
            case let status:
                fail("xl: could not start the supervisor \(exe) (\(status)); see \(dir.supervisorLog)")
            }
        } catch {
            fail("xl: could not start the supervisor \(exe): \(error)")
        }
    }

    mutating func request(_ r: ControlRequest) -> ControlResponse {
        do {
            try fd.writeAll(try ControlFraming.encode(r))
            return try readResponse()
        } catch {
            fail("xl: lost the connection to the supervisor: \(error)")
        }
    }

    mutating func readResponse() throws -> ControlResponse {
        while true {
            if let response = try ControlFraming.decode(ControlResponse.self, from: &buffer) { return response }
            guard let message = try UnixSocket.receive(fd, maxSize: 65536), !message.bytes.isEmpty || !message.fds.isEmpty else {
                throw SystemError("read", "control socket closed by the supervisor", errno: .connectionReset)
            }
            receivedFDs += message.fds
            buffer += message.bytes
        }
    }

    /// Sends a request that must succeed with `.ok`; exits with the supervisor's error otherwise.
    mutating func expectOK(_ r: ControlRequest) {
        switch request(r) {
        case .ok: return
        case let .error(msg): fail(msg)
        case let other: fail("xl: unexpected reply \(other)")
        }
    }

    mutating func domains(_ specs: [String], withConfig: Bool = true) -> [DomainInfo] {
        switch request(.list(domains: specs, withConfig: withConfig)) {
        case let .domains(list): return list
        case let .error(msg): fail(msg)
        case let other: fail("xl: unexpected reply \(other)")
        }
    }
}

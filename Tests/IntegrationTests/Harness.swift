import Foundation
import Glibc
import LinuxHost
import Testing

/// Where `swift build` put the binaries: next to the test bundle.
enum Products {
    static let directory: String = {
        let exe = Process.executablePath() ?? CommandLine.arguments[0]
        var dir = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)])
        // On some layouts the test runner lives inside a bundle directory.
        while !dir.isEmpty, !FileIO.exists(dir + "/procvisord") {
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
        return dir
    }()

    static func path(_ name: String) -> String { directory + "/" + name }
}

/// The output of one command.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var ok: Bool { status == 0 }
}

/// Runs a command to completion with optional stdin; kills it after `timeout` seconds.
func runCommand(_ path: String, _ args: [String], env: [String: String], stdin: String? = nil, timeout: Double = 30) throws -> CommandResult {
    let p = Foundation.Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    p.environment = env
    let out = Pipe(), err = Pipe(), input = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try? input.fileHandleForWriting.close()
    final class Collected: @unchecked Sendable { var out = Data(), err = Data() }
    let collected = Collected()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async { collected.out = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter()
    DispatchQueue.global().async { collected.err = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    if group.wait(timeout: .now() + timeout) == .timedOut {
        kill(p.processIdentifier, SIGKILL)
        group.wait()
    }
    p.waitUntilExit()
    return CommandResult(status: p.terminationStatus, stdout: String(decoding: collected.out, as: UTF8.self),
                         stderr: String(decoding: collected.err, as: UTF8.self))
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Double = 10, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}

/// A real supervisor in a private run directory, and `xl` pointed at it. `stop()` shuts it down
/// and checks that no process it started is left.
final class SupervisorHarness {
    let runDirectory: String
    let supervisor: Foundation.Process
    let env: [String: String]
    private(set) var stopped = false

    /// `supervisor`: the procvisord executable to run (a copy elsewhere shows what it does
    /// without the products next to it).
    init(extraEnv: [String: String] = [:], supervisor supervisorPath: String = Products.path("procvisord")) throws {
        var template = Array("/tmp/pvt.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        runDirectory = String(cString: template)
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = runDirectory
        env["PROCVISOR_NO_AUTOSTART"] = "1"
        env["PROCVISOR_SHUTDOWN_TIMEOUT_MS"] = "2000"
        for (k, v) in extraEnv { env[k] = v }
        self.env = env
        supervisor = Foundation.Process()
        supervisor.executableURL = URL(fileURLWithPath: supervisorPath)
        supervisor.environment = env
        try supervisor.run()
        let socket = runDirectory + "/control"
        let up = eventually(timeout: 10) {
            guard let fd = try? UnixSocket.connect(path: socket) else { return false }
            fd.close()
            return true
        }
        if !up {
            kill(supervisor.processIdentifier, SIGKILL)
            supervisor.waitUntilExit()
            throw HarnessError("supervisor did not start listening on \(socket)")
        }
    }

    struct HarnessError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    var pid: pid_t { supervisor.processIdentifier }

    @discardableResult
    func xl(_ args: String..., stdin: String? = nil, timeout: Double = 30) throws -> CommandResult {
        try runCommand(Products.path("xl"), args, env: env, stdin: stdin, timeout: timeout)
    }

    func xl(args: [String], stdin: String? = nil, timeout: Double = 30) throws -> CommandResult {
        try runCommand(Products.path("xl"), args, env: env, stdin: stdin, timeout: timeout)
    }

    /// The dom0 XenStore socket.
    var xenstoreSocket: String { runDirectory + "/xenstored/socket" }

    /// Runs one of Debian's xenstore-utils (`xenstore-read` …) against this supervisor's store.
    @discardableResult
    func xs(_ tool: String, _ args: String..., timeout: Double = 30) throws -> CommandResult {
        var e = env
        e["XENSTORED_PATH"] = xenstoreSocket
        return try runCommand("/usr/bin/xenstore-" + tool, args, env: e, timeout: timeout)
    }

    /// Writes an xl.cfg for the test guest (or another kernel) and returns its path.
    func config(_ name: String, mode: String? = nil, kernel: String = Products.path("testguest"), _ extra: String = "") -> String {
        let path = runDirectory + "/\(name).cfg"
        var text = "name = \"\(name)\"\nkernel = \"\(kernel)\"\nmemory = 16\n"
        if let mode { text += "extra = \"mode=\(mode)\"\n" }
        text += extra
        try! text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `xl create` that must succeed.
    func create(_ name: String, mode: String? = nil, _ extra: String = "", flags: [String] = []) throws {
        let r = try xl(args: ["create", "-q"] + flags + [config(name, mode: mode, extra)])
        #expect(r.ok, "xl create \(name) failed: \(r.stderr)")
        if !r.ok { throw HarnessError("xl create \(name): \(r.stderr)") }
    }

    /// Parsed `xl list` rows: name -> (domid, state letters).
    func list() throws -> [String: (domid: Int, state: String, mem: Int, vcpus: Int)] {
        let r = try xl("list")
        var out: [String: (Int, String, Int, Int)] = [:]
        for line in r.stdout.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6 else { continue }
            out[String(f[0])] = (Int(f[1]) ?? -1, String(f[4]), Int(f[2]) ?? -1, Int(f[3]) ?? -1)
        }
        return out
    }

    func dmesg() throws -> String { try xl("dmesg").stdout }

    /// Sockets bound to the control socket's path: the listener plus every control connection the
    /// supervisor has accepted and not yet closed (accepted sockets carry the listener's path in
    /// /proc/net/unix; the client ends do not).
    func controlSocketCount() -> Int {
        let path = runDirectory + "/control"
        return ((try? FileIO.readString("/proc/net/unix")) ?? "").split(separator: "\n").filter {
            $0.hasSuffix(" " + path)
        }.count
    }

    /// The supervisor's open descriptor count once it has closed every control connection, so a
    /// baseline taken right after an xl command is not off by the connection still being torn down.
    func settledFDCount(sourceLocation: SourceLocation = #_sourceLocation) -> Int {
        #expect(eventually(timeout: 30) { controlSocketCount() == 1 },
                "control connections still open: \(controlSocketCount() - 1)", sourceLocation: sourceLocation)
        return ProcFS.openFDCount(of: pid)
    }

    func consoleLog(_ name: String) -> String {
        (try? String(contentsOfFile: runDirectory + "/console/guest-\(name).log", encoding: .utf8)) ?? ""
    }

    /// Host pids of the supervisor's children right now (domain processes).
    var children: [pid_t] { ProcFS.children(of: pid) }

    /// SIGTERM, wait for a clean exit, then check no domain process survived.
    func stop(keepDirectory: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
        guard !stopped else { return }
        stopped = true
        let kids = children
        kill(pid, SIGTERM)
        let exited = eventually(timeout: 15) { !supervisor.isRunning }
        if !exited {
            kill(pid, SIGKILL)
            Issue.record("supervisor did not exit after SIGTERM", sourceLocation: sourceLocation)
        }
        supervisor.waitUntilExit()
        #expect(supervisor.terminationStatus == 0, "supervisor exit status", sourceLocation: sourceLocation)
        let orphans = kids.filter { ProcFS.isAlive($0) && ProcFS.state(of: $0) != "Z" }
        #expect(orphans.isEmpty, "domain processes survived the supervisor: \(orphans)", sourceLocation: sourceLocation)
        #expect(!FileIO.exists(runDirectory + "/control"), "control socket left behind", sourceLocation: sourceLocation)
        if !keepDirectory { try? FileManager.default.removeItem(atPath: runDirectory) }
    }

    /// SIGKILL to the supervisor, as a crash would end it (no cleanup of its own); returns once
    /// it is gone, with the run directory removed.
    func killSupervisor() {
        guard !stopped else { return }
        stopped = true
        kill(pid, SIGKILL)
        supervisor.waitUntilExit()
        try? FileManager.default.removeItem(atPath: runDirectory)
    }

    deinit {
        if !stopped {
            kill(pid, SIGKILL)
            supervisor.waitUntilExit()
            try? FileManager.default.removeItem(atPath: runDirectory)
        }
    }
}

/// Sends `message` from the host to UDP `address`:`port` and waits for its echo, ten tries of
/// a second each; the number of bytes that came back (-1: none).
func hostUDPEcho(to address: String, port: UInt16 = 7, _ message: [UInt8]) -> (count: Int, bytes: [UInt8]) {
    let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(s) }
    var tv = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    inet_pton(AF_INET, address, &addr.sin_addr)
    var answer = [UInt8](repeating: 0, count: max(100, message.count + 1))
    var got = -1
    for _ in 0..<10 where got < 0 {
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(s, message, message.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        got = recv(s, &answer, answer.count, 0)
    }
    return (got, Array(answer[..<max(0, got)]))
}

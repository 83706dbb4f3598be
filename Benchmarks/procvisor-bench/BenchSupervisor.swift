import Foundation
import Glibc
import LinuxHost
import Toolstack

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Release binaries next to this one.
func sibling(_ name: String) throws -> String {
    let me = Process.executablePath() ?? CommandLine.arguments[0]
    let path = String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
    guard FileIO.isExecutable(path) else {
        throw BenchError("\(path) is missing: build everything first (swift build -c release, or scripts/bench.sh)")
    }
    return path
}

/// A private supervisor for one suite, driven over its control socket.
final class BenchSupervisor {
    let dir: String
    let pid: pid_t
    let fd: FileDescriptor
    var buffer: [UInt8] = []
    let guest: String

    init(environment extra: [String: String] = [:]) throws {
        guest = try sibling("bench-guest")
        let supervisorPath = try sibling("procvisord")
        var template = Array("/tmp/pvb.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        dir = String(cString: template)
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = dir
        for (k, v) in extra { env[k] = v }
        pid = try Spawner.spawnPlain(path: supervisorPath, argv: [supervisorPath], env: env.map { "\($0.key)=\($0.value)" })
        var control: FileDescriptor?
        for _ in 0..<500 where control == nil {
            control = try? UnixSocket.connect(path: dir + "/control")
            if control == nil { usleep(10_000) }
        }
        guard let control else {
            kill(pid, SIGKILL)
            _ = try? ChildReaper.wait(pid)
            throw BenchError("the supervisor did not start")
        }
        fd = control
    }

    func stop() {
        fd.close()
        kill(pid, SIGTERM)
        _ = try? ChildReaper.wait(pid)
        try? FileManager.default.removeItem(atPath: dir)
    }

    func call(_ r: ControlRequest) throws -> ControlResponse {
        try fd.writeAll(try ControlFraming.encode(r))
        while true {
            if let resp = try ControlFraming.decode(ControlResponse.self, from: &buffer) { return resp }
            let chunk = try fd.read(upTo: 65536)
            if chunk.isEmpty { throw BenchError("supervisor closed the connection") }
            buffer += chunk
        }
    }

    func create(_ name: String, extra: String = "") throws {
        var config = DomainConfig(name: name, kernel: guest)
        config.memory = 16
        config.maxmem = 16
        config.extra = extra.isEmpty ? nil : extra
        guard case .created = try call(.create(config: config, paused: false)) else { throw BenchError("create \(name) failed") }
    }

    func consoleLog(_ name: String) -> String {
        (try? String(contentsOfFile: dir + "/console/guest-\(name).log", encoding: .utf8)) ?? ""
    }

    /// Waits for a line containing `text` in a domain's console.
    func awaitLine(_ name: String, _ text: String, timeout: Double = 60) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = consoleLog(name).split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
            usleep(20_000)
        }
        throw BenchError("\(name) did not print \(text); console: \(consoleLog(name).suffix(300))")
    }

    /// Waits for `key=NUMBER` in a domain's console.
    func awaitValue(_ name: String, key: String, timeout: Double = 60) throws -> Double {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            for line in consoleLog(name).split(separator: "\n") {
                if let r = line.range(of: key + "=") , let v = Double(line[r.upperBound...].prefix { $0.isNumber || $0 == "." }) { return v }
                if line.contains("failed") { throw BenchError("\(name): \(line)") }
            }
            usleep(20_000)
        }
        throw BenchError("\(name) did not report \(key); console: \(consoleLog(name).suffix(300)); dmesg: \((try? call(.dmesg(clear: false))).map { "\($0)" } ?? "")")
    }
}

/// Runs `bench-guest ARGS` as a plain process with extra descriptors from fd 3 on; returns its stdout.
func runPeer(_ args: [String], fds: [FileDescriptor]) throws -> (pid: pid_t, output: FileDescriptor) {
    let guest = try sibling("bench-guest")
    let null = try FileDescriptor.open("/dev/null", O_RDWR)
    defer { null.close() }
    let (r, w) = try FileDescriptor.pipe()
    defer { w.close() }
    var map: [(FileDescriptor, Int32)] = [(null, 0), (w, 1), (null, 2)]
    for (i, fd) in fds.enumerated() { map.append((fd, Int32(3 + i))) }
    let pid = try Spawner.spawn(path: guest, argv: [guest] + args, env: [], fds: map, limits: [], filter: nil)
    return (pid, r)
}

/// Reads a peer's whole output and reaps it.
func peerOutput(_ p: (pid: pid_t, output: FileDescriptor)) throws -> String {
    var text = ""
    while true {
        let chunk = try p.output.read(upTo: 4096)
        if chunk.isEmpty { break }
        text += String(decoding: chunk, as: UTF8.self)
    }
    p.output.close()
    _ = try ChildReaper.wait(p.pid)
    return text
}

/// Reads `key=NUMBER` from a peer's output and reaps it.
func peerValue(_ p: (pid: pid_t, output: FileDescriptor), key: String) throws -> Double {
    let text = try peerOutput(p)
    guard let r = text.range(of: key + "="), let v = Double(text[r.upperBound...].prefix { $0.isNumber }) else {
        throw BenchError("peer printed no \(key): \(text)")
    }
    return v
}

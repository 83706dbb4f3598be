import ArgumentParser
import LinuxHost
import Toolstack

struct Uptime: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the uptime of domains.")
    @Flag(name: .short, help: "Short, uptime(1)-like output.") var s = false
    @Argument(help: "Domains (all when none).") var domains: [String] = []

    func run() throws {
        var client = ControlClient.connect()
        let list = client.domains(domains)
        let now = UInt64(WallClock.now().seconds)
        if !s { print(XLFormat.uptimeHeader) }
        for d in list {
            // Domain-0's uptime is the host's, as in xl.
            var up = now > d.startTime ? now - d.startTime : 0
            if d.domid == 0, let text = try? FileIO.readString("/proc/uptime"), let first = text.split(separator: " ").first,
               let secs = Double(first) { up = UInt64(secs) }
            if s {
                let clock = WallClock.format(Int(now), "%H:%M:%S", utc: false)
                print(" \(clock) up \(XLFormat.uptime(up, short: true)), \(d.name) (\(d.domid))")
            } else {
                print(XLFormat.uptimeRow(name: d.name, domid: d.domid, seconds: up))
            }
        }
    }
}

import ArgumentParser
import LinuxHost
import Toolstack

/// `xl top`: xentop. Batch mode (`-b`) prints the header and one row per domain every DELAY
/// seconds, ITERATIONS times (for ever without `-i`); the interactive screen adds xentop's
/// summary lines and redraws in place until `q`.
struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Monitor a host and the domains in real time.")
    @Flag(name: [.customShort("b"), .customLong("batch")], help: "Output in batch mode, no user input accepted.") var batch = false
    @Option(name: [.customShort("d"), .customLong("delay")], help: "Seconds between updates (default 3).") var delay: String?
    @Option(name: [.customShort("i"), .customLong("iterations")], help: "Number of iterations before exiting.") var iterations: String?
    @Flag(name: [.customShort("f"), .customLong("full-name")], help: "Output the full domain name (not truncated).") var fullName = false
    @Flag(name: [.customShort("r"), .customLong("repeat-header")], help: "Repeat table header before each domain.") var repeatHeader = false
    @Flag(name: [.customShort("n"), .customLong("networks")], help: "Output vif network data (not available here).") var networks = false
    @Flag(name: [.customShort("x"), .customLong("vbds")], help: "Output vbd block device data (not available here).") var vbds = false
    @Flag(name: [.customShort("v"), .customLong("vcpus")], help: "Output vcpu data (not available here).") var vcpus = false

    func run() throws {
        if networks || vbds || vcpus {
            fail("xl top: the per-device and per-vCPU rows (-n, -x, -v) are not available here; the totals are in the domain rows")
        }
        // xentop reads these with atoi(); a number is required here, and a delay of at least 1.
        let seconds = delay.map { Int($0) ?? -1 } ?? 3
        guard seconds >= 1, seconds <= 86_400 else {
            fail("xl top: invalid delay '\(delay ?? "")' (expected a whole number of seconds, 1 to 86400)")
        }
        let rounds = iterations.map { Int($0) ?? -1 }
        if let rounds, rounds < 1 { fail("xl top: invalid iterations '\(iterations ?? "")' (expected a number, at least 1)") }
        var client = ControlClient.connect()
        let interactive = !batch && TerminalMode.isTerminal(.standardOutput)
        let saved = interactive ? TerminalMode.makeRaw(.standardInput) : nil
        defer { saved?.restore(.standardInput) }
        var previous: TopSample?
        var done = 0
        while true {
            guard case let .topSample(sample) = client.request(.topSample) else {
                saved?.restore(.standardInput)  // fail() exits without running the defer
                fail("xl top: unexpected reply from the supervisor")
            }
            var screen = XenTop.table(sample, previous: previous, fullName: fullName)
            if repeatHeader {
                // With no per-device rows, a repeated header is one before each domain.
                let lines = screen.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                if let header = lines.first {
                    screen = lines.dropFirst().map { header + "\n" + $0 + "\n" }.joined()
                }
            }
            if interactive {
                let time = WallClock.format(Int(WallClock.now().seconds), "%H:%M:%S", utc: false)
                screen = "\u{1b}[H\u{1b}[2J" + XenTop.summary(sample, time: time) + screen + "\n  Delay  Networks  vBds  VCPUs  Repeat header  Sort order  Quit  (q quits)\n"
                // The terminal is raw (keys come one by one): lines need their carriage return.
                screen = screen.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
            }
            FileDescriptor.standardOutput.writeUnchecked(screen)
            previous = sample
            done += 1
            if let rounds, done >= rounds { return }
            if interactive {
                // Wait the delay, or less when a key comes: q quits, another key redraws at once.
                var poll = Poll([(.standardInput, .readable)])
                if (try? poll.wait(timeoutMs: Int32(seconds * 1000))) ?? 0 > 0 {
                    let keys = (try? FileDescriptor.standardInput.read(upTo: 64)) ?? []
                    if keys.isEmpty || keys.contains(UInt8(ascii: "q")) || keys.contains(UInt8(ascii: "Q")) || keys.contains(3) { return }
                }
            } else {
                for _ in 0..<seconds { PosixThread.sleep(microseconds: 1_000_000) }
            }
        }
    }
}

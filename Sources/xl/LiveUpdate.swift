import ArgumentParser
import LinuxHost

/// `xl live-update [BINARY]`: Procvisor's own command (Xen updates xenstored with
/// `xenstore-control live-update`, which works here too). The supervisor checks the new
/// binary against its state, then executes it in its place; every domain keeps running.
struct LiveUpdate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "live-update",
        abstract: "Replace the running supervisor with a new procvisord binary, keeping every domain.",
        discussion: """
            Without BINARY the supervisor re-executes the file it was started from (a rebuilt \
            procvisord at the same path). A binary that cannot take the state over is refused \
            and the running supervisor goes on.
            """)
    @Argument(help: "The new procvisord (an absolute path).") var binary: String?

    func run() throws {
        var path = binary
        if let b = binary, !b.hasPrefix("/") {
            guard let real = DynamicLoader.realPath(b) else { fail("xl: live-update: \(b): no such file") }
            path = real
        }
        var client = ControlClient.connect()
        switch client.request(.liveUpdate(binary: path)) {
        case let .liveUpdated(binary, pauseMs):
            let ms = (pauseMs * 10).rounded() / 10
            print("live update done: \(binary) took over, domains paused \(ms) ms")
        case let .error(message):
            fail("xl: \(message)")
        default:
            fail("xl: live-update: unexpected reply")
        }
    }
}

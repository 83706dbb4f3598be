import Glibc

/// A terminal's settings (termios), kept so they can be put back: `makeRaw` switches a terminal
/// to raw mode (no echo, no line editing, no signals from keys: cfmakeraw(3)) and returns the
/// settings it had; `restore` puts them back.
public struct TerminalMode {
    private var saved: termios

    /// Whether `fd` is a terminal (isatty(3)).
    public static func isTerminal(_ fd: FileDescriptor) -> Bool { isatty(fd.rawValue) == 1 }

    /// Switches the terminal `fd` to raw mode at once (TCSANOW) and returns how it was; nil, with
    /// nothing changed, when `fd` is not a terminal.
    public static func makeRaw(_ fd: FileDescriptor) -> TerminalMode? {
        guard isTerminal(fd) else { return nil }
        var saved = termios()
        guard tcgetattr(fd.rawValue, &saved) == 0 else { return nil }
        var raw = saved
        cfmakeraw(&raw)
        tcsetattr(fd.rawValue, TCSANOW, &raw)
        return TerminalMode(saved: saved)
    }

    /// Puts these settings back on `fd` at once (TCSANOW).
    public func restore(_ fd: FileDescriptor) {
        var s = saved
        tcsetattr(fd.rawValue, TCSANOW, &s)
    }
}

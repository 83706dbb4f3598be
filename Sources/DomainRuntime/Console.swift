import LinuxHost
import ProcvisorABI

/// The domain's console. Output written here, and anything the process prints to stdout or stderr,
/// is captured by the supervisor into the domain's console log and `xl console`; input typed into
/// `xl console` arrives on `read`.
public struct Console {
    let hypercalls: HypercallChannel

    /// Writes text with `CONSOLEIO_write`. stdout is flushed first so the two stay in order.
    public func write(_ text: String) {
        write(Array(text.utf8))
    }

    public func write(_ bytes: [UInt8]) {
        Process.flushStandardOutput()
        var offset = 0
        while offset < bytes.count {
            let chunk = Array(bytes[offset..<min(bytes.count, offset + HypercallRequest.maxPayload)])
            _ = hypercalls.call(.consoleIO, [ConsoleIOCmd.write.rawValue, UInt64(chunk.count)], payload: chunk)
            offset += chunk.count
        }
    }

    /// Reads console input (blocking); [] when the console input is closed.
    public func read(upTo count: Int = 4096) -> [UInt8] {
        (try? FileDescriptor(rawValue: BootstrapFD.consoleIn).read(upTo: count)) ?? []
    }

    /// Reads one line of console input without its newline; nil at end of input.
    public func readLine() -> String? {
        Swift.readLine(strippingNewline: true)
    }
}

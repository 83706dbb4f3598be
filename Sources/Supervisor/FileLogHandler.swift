import LinuxHost
import Logging

/// swift-log handler writing one line per record to the supervisor's log file:
/// `2026-11-20T23:59:01.123Z info procvisord: message key=value ...`.
struct FileLogHandler: LogHandler {
    final class Sink {
        let fd: FileDescriptor
        init(fd: FileDescriptor) { self.fd = fd }
    }

    let label: String
    let sink: Sink
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(label: String, sink: Sink) {
        self.label = label
        self.sink = sink
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let meta = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text = "\(Self.timestamp()) \(event.level) \(label): \(event.message)\(meta.isEmpty ? "" : " " + meta)\n"
        try? sink.fd.writeAll(text)
    }

    static func timestamp() -> String {
        let now = WallClock.now()
        let c = WallClock.calendar(now.seconds, utc: true)
        func p(_ v: Int, _ w: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(c.year)-\(p(c.month))-\(p(c.day))T\(p(c.hour)):\(p(c.minute)):\(p(c.second)).\(p(now.nanoseconds / 1_000_000, 3))Z"
    }
}

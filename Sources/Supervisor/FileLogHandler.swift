import Glibc
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
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tm = tm()
        gmtime_r(&t, &tm)
        func p(_ v: Int32, _ w: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(tm.tm_year + 1900)-\(p(tm.tm_mon + 1))-\(p(tm.tm_mday))T\(p(tm.tm_hour)):\(p(tm.tm_min)):\(p(tm.tm_sec)).\(p(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}

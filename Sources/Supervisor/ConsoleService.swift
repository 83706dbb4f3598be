import LinuxHost
import Logging
import ProcvisorABI

/// Domains' consoles (xenconsoled's part): what a guest writes is kept in its state's history
/// (`DomainState.console`, replayed when `xl console` attaches), appended to its log file
/// under the run directory, and sent to every attached `xl console`; what those type goes to
/// the guest's input pipe, with VIRQ_CONSOLE raised.
final class ConsoleService {
    private let loop: EventLoop
    private let logger: Logger
    /// Attached `xl console` connections by domain.
    private var clients: [DomID: [ControlConnection]] = [:]
    private var logs: [DomID: (fd: FileDescriptor, path: String, size: Int)] = [:]
    /// Raises VIRQ_CONSOLE in a domain (input is waiting).
    var raiseVirq: (DomID) -> Void = { _ in }
    /// A log is rotated when it would grow past this (see `SupervisorOptions.consoleLogMaxBytes`).
    var maxLogBytes = 32 << 20

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    /// A new domain's console log, appended to (a restarted domain continues its file).
    func open(_ dom: DomainRecord, logPath: String) {
        guard let fd = try? FileDescriptor.open(logPath, [.writeOnly, .create, .append], mode: 0o600) else { return }
        logs[dom.domid] = (fd, logPath, Int((try? FileStatus(fd))?.size ?? 0))
    }

    /// Appends to a domain's log, first moving a full log to `PATH.1` (replacing the older one).
    private func appendToLog(_ domid: DomID, _ bytes: ArraySlice<UInt8>) {
        guard var log = logs[domid] else { return }
        if log.size > 0 && log.size + bytes.count > maxLogBytes {
            log.fd.close()
            do {
                try FileIO.rename(log.path, to: log.path + ".1")
                log.fd = try FileDescriptor.open(log.path, [.writeOnly, .create, .append], mode: 0o600)
                log.size = 0
                logger.notice("console log rotated", metadata: ["domid": "\(domid)", "path": "\(log.path)", "bytes": "\(maxLogBytes)"])
            } catch {
                logger.warning("console log not rotated; no longer written", metadata: ["domid": "\(domid)", "path": "\(log.path)", "error": "\(error)"])
                logs[domid] = nil
                return
            }
        }
        try? log.fd.writeAll(Array(bytes))
        log.size += bytes.count
        logs[domid] = log
    }

    /// The domain's process is gone: attached clients get what is buffered and are closed; the
    /// log is closed. The history stays with the domain's state.
    func close(_ dom: DomainRecord) {
        for c in clients.removeValue(forKey: dom.domid) ?? [] {
            c.closeAfterFlush = true
            c.flush()
        }
        logs.removeValue(forKey: dom.domid)?.fd.close()
    }

    /// `xl console`: the connection switches to console mode, gets the history, and what it
    /// sent after its request is the guest's input.
    func attach(_ c: ControlConnection, to dom: DomainRecord) {
        c.send(.consoleAttached(domid: dom.domid.rawValue))
        c.mode = .console(domid: dom.domid)
        clients[dom.domid, default: []].append(c)
        readable(dom)
        c.sendRaw(dom.console.contents)
        if !c.input.isEmpty {
            input(dom, c.input)
            c.input.removeAll()
        }
    }

    /// A connection closed: it is no longer attached anywhere.
    func detach(_ c: ControlConnection) {
        guard case let .console(domid) = c.mode else { return }
        clients[domid]?.removeAll { $0 === c }
        if clients[domid]?.isEmpty == true { clients[domid] = nil }
    }

    /// The guest's console pipe is readable: take what is there (a bounded amount per call).
    func readable(_ dom: DomainRecord) {
        guard !dom.released else { return }
        for _ in 0..<16 {
            let chunk: [UInt8]
            do {
                chunk = try dom.consoleOutFD.read(upTo: 65536)
            } catch {
                return
            }
            if chunk.isEmpty {
                // Writer closed (process gone): stop watching.
                dom.watchTokens.removeAll { fd, token in
                    if fd == dom.consoleOutFD { loop.unwatch(fd, token: token); return true }
                    return false
                }
                return
            }
            output(dom, chunk[...])
        }
    }

    /// Bytes the guest wrote (its pipe or `console_io`).
    func output(_ dom: DomainRecord, _ bytes: ArraySlice<UInt8>) {
        dom.console.append(bytes)
        appendToLog(dom.domid, bytes)
        for c in clients[dom.domid] ?? [] { c.sendRaw(Array(bytes)) }
    }

    /// Console input from `xl console`: best effort into the guest's stdin pipe.
    func input(_ dom: DomainRecord, _ bytes: [UInt8]) {
        guard dom.hasProcess, !dom.released else { return }
        let n = bytes.withUnsafeBytes { (try? dom.consoleInFD.write($0)) ?? -1 }
        if n > 0 { raiseVirq(dom.domid) }
        if n < bytes.count {
            logger.warning("console input dropped: guest is not reading", metadata: ["domid": "\(dom.domid)", "bytes": "\(bytes.count - max(n, 0))"])
        }
    }
}

extension ConsoleService {
    /// Domains with an `xl console` attached (a live update cannot carry those sessions).
    var attachedDomains: [DomID] { clients.filter { !$0.value.isEmpty }.map(\.key).sorted() }

    /// The open logs, for a live update; their descriptors go into `keep`.
    func image(keep: inout [FileDescriptor]) -> [ConsoleLogImage] {
        logs.sorted { $0.key < $1.key }.map { domid, l in
            keep.append(l.fd)
            return ConsoleLogImage(domid: domid.rawValue, fd: l.fd.rawValue, path: l.path, size: l.size)
        }
    }

    func adopt(_ images: [ConsoleLogImage]) {
        for l in images { logs[DomID(l.domid)] = (FileDescriptor(rawValue: l.fd), l.path, l.size) }
    }
}

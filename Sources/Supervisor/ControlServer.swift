import LinuxHost
import Logging
import ProcvisorABI
import Toolstack

/// The control socket `xl` talks to: its connections, the framing of their requests, and
/// console mode (after `xl console` attaches, a connection carries raw console bytes). What a
/// request means is the supervisor's business (`onRequest`).
final class ControlServer {
    private let loop: EventLoop
    private let logger: Logger
    private var listener: SocketListener?
    private var connections: [ObjectIdentifier: ControlConnection] = [:]

    /// A complete request from a connection in request mode.
    var onRequest: (ControlRequest, ControlConnection) -> Void = { _, _ in }
    /// Bytes from a connection in console mode, for domain `domid`.
    var onConsoleInput: (DomID, [UInt8], ControlConnection) -> Void = { _, _, _ in }
    /// A connection closed (its waits end with it).
    var onClose: (ControlConnection) -> Void = { _ in }

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    func listen(path: String) throws {
        listener = try SocketListener(path: path, what: "control socket", loop: loop, logger: logger) { [unowned self] fd in
            accept(fd)
        }
    }

    /// No new connections (the supervisor is stopping); those open are served to the end.
    func stopAccepting() { listener?.stopAccepting() }

    /// Closes the listener and every connection.
    func close() {
        for c in Array(connections.values) { c.close() }
        listener?.close()
        listener = nil
    }

    func connection(_ id: ObjectIdentifier) -> ControlConnection? { connections[id] }

    private func accept(_ fd: FileDescriptor) {
        _ = adoptConnection(fd)
    }

    /// Serves `fd` as a connection (closing it when it cannot be watched).
    private func adoptConnection(_ fd: FileDescriptor) -> ControlConnection {
        let c = ControlConnection(fd: fd)
        c.loop = loop
        c.onClose = { [unowned self] c in
            connections[ObjectIdentifier(c)] = nil
            onClose(c)
        }
        do {
            c.token = try loop.watch(fd) { [unowned self, unowned c] events in event(c, events) }
        } catch {
            c.close()
            return c
        }
        connections[ObjectIdentifier(c)] = c
        return c
    }

    private func event(_ c: ControlConnection, _ events: Epoll.Events) {
        if events.contains(.writable) { c.flush() }
        guard !c.closed, events.contains(.readable) || events.contains(.hangup) || events.contains(.error) else { return }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n: Int
        switch buf.withUnsafeMutableBytes({ c.fd.receive(into: $0, dontWait: true) }) {
        case let .success(k) where k > 0: n = k
        case .failure(.wouldBlock): return
        case .success, .failure:  // end of stream, or a failure
            c.close()
            return
        }
        let bytes = Array(buf[0..<n])
        switch c.mode {
        case let .console(domid):
            onConsoleInput(domid, bytes, c)
        case .requests:
            c.input += bytes
            if c.input.count > ControlConnection.maxBufferedInput {
                c.send(.error("request too large"))
                c.closeAfterFlush = true
                c.flush()
                return
            }
            processRequests(c)
        }
    }

    /// Handles the whole requests in a connection's input.
    private func processRequests(_ c: ControlConnection) {
        while c.mode == .requests, !c.closed {
            let request: ControlRequest?
            do {
                request = try ControlFraming.decode(ControlRequest.self, from: &c.input)
            } catch {
                c.send(.error("malformed control request: \(error)"))
                c.closeAfterFlush = true
                c.flush()
                return
            }
            guard let request else { break }
            onRequest(request, c)
        }
    }
}

extension ControlServer {
    var listenerDescriptor: FileDescriptor? { listener?.descriptor }

    /// Connections that cannot be carried across a live update: an attached `xl console`, or
    /// one still flushing what its domain wrote before it went.
    var consoleClients: Int { connections.values.filter { !$0.closed && $0.mode != .requests }.count }

    /// What a live update hands over: every open request-mode connection (the one that asked
    /// included). The descriptors go into `keep`.
    func image(keep: inout [FileDescriptor]) -> [ControlConnectionImage] {
        connections.values.filter { !$0.closed && $0.mode == .requests }.map { c in
            keep.append(c.fd)
            return ControlConnectionImage(fd: c.fd.rawValue, input: c.input, output: c.unsent, closing: c.closeAfterFlush)
        }
    }

    /// Takes over the listener and the connections a live update handed over; returns the
    /// connection `requester` names (nil when none).
    @discardableResult
    func adopt(listenFD: Int32, _ images: [ControlConnectionImage], requester: Int32?) throws -> ControlConnection? {
        listener = try SocketListener(adopting: FileDescriptor(rawValue: listenFD), what: "control socket", loop: loop, logger: logger) { [unowned self] fd in
            accept(fd)
        }
        var asked: ControlConnection?
        for i in images {
            let c = adoptConnection(FileDescriptor(rawValue: i.fd))
            c.input = i.input
            if i.fd == requester { asked = c }
            if !i.output.isEmpty { c.sendRaw(i.output) }
            if i.closing { c.closeAfterFlush = true; c.flush() }
        }
        // Requests that arrived whole before the exec and were not read yet are in the sockets;
        // those already read but not yet handled are in `input`: handle them now.
        for c in Array(connections.values) where !c.input.isEmpty { processRequests(c) }
        return asked
    }
}
import LinuxHost
import ProcvisorABI
import Toolstack

/// One `xl` connection on the control socket. Starts in request mode (framed JSON); after a
/// console attach it carries raw console bytes both ways.
final class ControlConnection {
    enum Mode: Equatable {
        case requests
        case console(domid: DomID)
    }

    /// A console client that falls this far behind is dropped rather than buffered without bound.
    static let maxBufferedOutput = 4 << 20
    static let maxBufferedInput = ControlFraming.maxFrame + 4

    let fd: FileDescriptor
    var token: UInt64 = 0
    var mode: Mode = .requests
    var input: [UInt8] = []
    private var output = OutputBuffer()
    private(set) var closed = false
    /// Close once the output buffer is flushed.
    var closeAfterFlush = false
    weak var loop: EventLoop?
    var onClose: ((ControlConnection) -> Void)?

    init(fd: FileDescriptor) {
        self.fd = fd
    }

    var pendingOutput: Int { output.pending }
    var unsent: [UInt8] { output.unsent }

    func send(_ response: ControlResponse) {
        guard let bytes = try? ControlFraming.encode(response) else { return }
        sendRaw(bytes)
    }

    /// A reply with descriptors (SCM_RIGHTS on its first byte): sent at once when nothing is
    /// queued before it, the rest of the frame buffered as usual. The caller keeps its own
    /// descriptors (the kernel duplicates them into the message).
    func send(_ response: ControlResponse, fds: [FileDescriptor]) {
        guard !closed, let bytes = try? ControlFraming.encode(response) else { return }
        guard pendingOutput == 0 else {
            send(.error("internal: a reply with descriptors queued behind other output"))
            return
        }
        do {
            let n = try UnixSocket.send(fd, bytes, fds: fds, nonBlocking: true)
            if n < bytes.count { sendRaw(Array(bytes[n...])) }
        } catch {
            close()
        }
    }

    func sendRaw(_ bytes: [UInt8]) {
        guard !closed else { return }
        output.append(bytes)
        if pendingOutput > Self.maxBufferedOutput {
            close()
            return
        }
        flush()
    }

    /// Writes what the socket takes now; asks for EPOLLOUT for the rest.
    func flush() {
        guard !closed else { return }
        switch output.flush(to: fd) {
        case .done:
            loop?.modify(fd, token: token, .readable)
            if closeAfterFlush { close() }
        case .wouldBlock:
            loop?.modify(fd, token: token, [.readable, .writable])
        case .failed:
            close()
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        loop?.unwatch(fd, token: token)
        fd.close()
        onClose?(self)
    }
}

import LinuxHost
import Logging

/// A listening Unix socket served from the event loop (the control socket, the XenStore
/// socket): each readable event accepts every queued connection; a peer that is neither this
/// user nor root is refused (the socket is 0600, checked anyway); out of descriptors, the
/// listener is unwatched for 50 ms (it stays readable, so a level-triggered watch would spin)
/// while domains and connected clients are served.
final class SocketListener {
    private let loop: EventLoop
    private let logger: Logger
    /// How logs name it: `control socket`.
    private let what: String
    private var fd: FileDescriptor?
    private var token: UInt64 = 0
    private var accepting = false
    /// `stopAccepting` was called: a pause does not end in a new watch.
    private var stopped = false
    private let onAccept: (FileDescriptor) -> Void

    /// Listens on `path` (replacing nothing: the caller removes a stale socket) and hands each
    /// accepted connection, non-blocking and close-on-exec, to `onAccept`.
    init(path: String, what: String, loop: EventLoop, logger: Logger, onAccept: @escaping (FileDescriptor) -> Void) throws {
        self.loop = loop
        self.logger = logger
        self.what = what
        self.onAccept = onAccept
        let l = try UnixSocket.listen(path: path, mode: 0o600)
        fd = l
        do {
            try watch(l)
        } catch {
            l.close()
            throw error
        }
    }

    /// A listening socket a live update handed over.
    init(adopting l: FileDescriptor, what: String, loop: EventLoop, logger: Logger, onAccept: @escaping (FileDescriptor) -> Void) throws {
        self.loop = loop
        self.logger = logger
        self.what = what
        self.onAccept = onAccept
        fd = l
        try watch(l)
    }

    var descriptor: FileDescriptor? { fd }

    deinit { close() }

    private func watch(_ l: FileDescriptor) throws {
        token = try loop.watch(l) { [unowned self] _ in acceptAll() }
        accepting = true
    }

    /// No more connections are taken (the socket stays bound until `close`).
    func stopAccepting() {
        stopped = true
        unwatch()
    }

    private func unwatch() {
        guard accepting, let l = fd else { return }
        loop.unwatch(l, token: token)
        accepting = false
    }

    func close() {
        stopAccepting()
        fd?.close()
        fd = nil
    }

    private func acceptAll() {
        guard let l = fd else { return }
        while true {
            let accepted: FileDescriptor?
            do {
                accepted = try UnixSocket.accept(l)
            } catch {
                if let e = error as? SystemError, e.errno == .tooManyOpenFiles || e.errno == .tooManyOpenFilesInSystem { pause(l) }
                return
            }
            guard let conn = accepted else { return }
            if let peer = try? UnixSocket.peer(conn), peer.uid != Process.userID && peer.uid != 0 {
                logger.warning("refused connection", metadata: ["socket": "\(what)", "uid": "\(peer.uid)"])
                conn.close()
                continue
            }
            onAccept(conn)
        }
    }

    private func pause(_ l: FileDescriptor) {
        unwatch()
        logger.warning("out of descriptors, accepting again in 50 ms", metadata: ["socket": "\(what)", "nofile": "\(DescriptorBudget.limit)"])
        loop.after(ms: 50) { [weak self] in
            guard let self, !self.stopped, !self.accepting, let current = self.fd, current.rawValue == l.rawValue else { return }
            try? self.watch(current)
        }
    }
}

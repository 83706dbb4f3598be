import LinuxHost
import ProcvisorABI

/// The thread that receives the supervisor's asynchronous messages (shutdown requests), the
/// counterpart of a PV kernel's event upcall plus its `control/shutdown` watch.
final class DomainEvents {
    let fd: FileDescriptor
    private let mutex = Lock()
    @exclusivity(unchecked) private var handler: ((ShutdownReason) -> Void)?
    @exclusivity(unchecked) private var pending: ShutdownReason?

    init(fd: FileDescriptor) {
        self.fd = fd
    }

    var requested: ShutdownReason? {
        mutex.lock()
        defer { mutex.unlock() }
        return pending
    }

    func setShutdownHandler(_ h: @escaping (ShutdownReason) -> Void) {
        mutex.lock()
        handler = h
        mutex.unlock()
    }

    func start(domain: Domain) {
        VCPUThread.start(index: -1) { [self] _ in run(domain) }
    }

    private func run(_ domain: Domain) {
        while true {
            let message: UnixSocket.Message?
            do {
                message = try UnixSocket.receive(fd, maxSize: 64)
            } catch {
                // Without this thread no binding or shutdown request arrives: say so on the console.
                let msg = "procvisor: event socket failed: \(error)\n"
                FileDescriptor.standardError.writeUnchecked(msg)
                return
            }
            guard let message else { return }  // supervisor gone: the hypercall channel will notice
            if let channelEvent = try? ChannelEvent.decode(message.bytes) {
                if case let .upcall(port) = channelEvent {
                    message.fds.forEach { $0.close() }
                    domain.upcall(port)
                } else {
                    domain.eventChannels.handle(channelEvent, fds: message.fds)
                }
                continue
            }
            message.fds.forEach { $0.close() }
            guard let event = try? DomainEvent.decode(message.bytes) else { continue }
            switch event {
            case let .shutdownRequest(reason):
                deliverShutdownRequest(reason, domain: domain)
            }
        }
    }

    /// A shutdown request from the toolstack (through `control/shutdown`, or the supervisor's
    /// fallback message): the guest's handler decides, or the domain shuts down at once.
    func deliverShutdownRequest(_ reason: ShutdownReason, domain: Domain) {
        mutex.lock()
        let repeated = pending == reason
        // A suspend is not a state the domain stays in: each one is a request of its own (a
        // checkpoint resumes the domain, and the next checkpoint asks again).
        if reason != .suspend { pending = reason }
        let h = handler
        mutex.unlock()
        if repeated && h != nil { return }  // the fallback after the store request already seen
        if let h {
            h(reason)
        } else if reason == .suspend {
            domain.suspend()
        } else {
            domain.shutdown(reason)
        }
    }
}

/// Starts threads with pthreads (no Foundation in guests).
enum VCPUThread {
    static func start(index: Int, body: @escaping (Int) -> Void) {
        do {
            try PosixThread.startDetached { body(index) }
        } catch {
            let rc = (error as? SystemError)?.errno.rawValue ?? -1
            let msg = "procvisor: cannot start vCPU thread \(index): errno \(rc)\n"
            FileDescriptor.standardError.writeUnchecked(msg)
            Process.exit(70)
        }
    }
}

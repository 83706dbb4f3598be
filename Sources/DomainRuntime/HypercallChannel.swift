import LinuxHost
import ProcvisorABI

/// The domain's end of its hypercall socket. Many threads (vCPUs) may call at once: requests carry
/// a sequence number, one caller at a time reads from the socket and hands replies to their owners,
/// so a blocked `SCHEDOP_block` never holds up another vCPU's hypercall.
final class HypercallChannel {
    let fd: FileDescriptor
    private let mutex = Lock()
    private let cond = Condition()
    @exclusivity(unchecked) private var nextSeq: UInt64 = 1
    @exclusivity(unchecked) private var replies: [UInt64: (HypercallReply, [FileDescriptor])] = [:]
    @exclusivity(unchecked) private var readerActive = false
    @exclusivity(unchecked) private var failure: String?

    init(fd: FileDescriptor) {
        self.fd = fd
    }

    /// Issues one hypercall and waits for its reply. A broken channel means the supervisor is gone
    /// or has disowned this domain: there is nothing sensible left to do but exit.
    func call(_ op: HypercallOp, _ args: [UInt64] = [], payload: [UInt8] = []) -> HypercallReply {
        let (reply, fds) = callWithFDs(op, args, payload: payload)
        fds.forEach { $0.close() }
        return reply
    }

    /// Like `call`, also returning descriptors the supervisor attached to the reply (the caller owns them).
    func callWithFDs(_ op: HypercallOp, _ args: [UInt64] = [], payload: [UInt8] = []) -> (HypercallReply, [FileDescriptor]) {
        mutex.lock()
        let seq = nextSeq
        nextSeq += 1
        let request = HypercallRequest(op, seq: seq, args: args, payload: payload).encode()
        do {
            try UnixSocket.send(fd, request)
        } catch {
            mutex.unlock()
            fatalChannel("sending hypercall \(op): \(error)")
        }
        while replies[seq] == nil {
            if let failure {
                mutex.unlock()
                fatalChannel(failure)
            }
            if readerActive {
                cond.wait(mutex)
                continue
            }
            readerActive = true
            mutex.unlock()
            let received: Result<UnixSocket.Message?, Error> = Result { try UnixSocket.receive(fd, maxSize: HypercallRequest.maxMessageSize) }
            mutex.lock()
            readerActive = false
            switch received {
            case let .success(message?):
                if let reply = try? HypercallReply.decode(message.bytes) {
                    replies[reply.seq] = (reply, message.fds)
                } else {
                    message.fds.forEach { $0.close() }
                    failure = "malformed hypercall reply from the supervisor"
                }
            case .success(nil):
                failure = "the supervisor closed the hypercall channel"
            case let .failure(error):
                failure = "receiving hypercall reply: \(error)"
            }
            cond.broadcast()
        }
        let reply = replies.removeValue(forKey: seq)!
        mutex.unlock()
        return reply
    }

    private func fatalChannel(_ why: String) -> Never {
        let msg = "procvisor: hypercall channel: \(why)\n"
        FileDescriptor.standardError.writeUnchecked(msg)
        Process.exit(70)
    }
}

import Glibc
import LinuxHost
import ProcvisorABI

/// The domain's end of its hypercall socket. Many threads (vCPUs) may call at once: requests carry
/// a sequence number, one caller at a time reads from the socket and hands replies to their owners,
/// so a blocked `SCHEDOP_block` never holds up another vCPU's hypercall.
final class HypercallChannel {
    let fd: FileDescriptor
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var nextSeq: UInt64 = 1
    private var replies: [UInt64: (HypercallReply, [FileDescriptor])] = [:]
    private var readerActive = false
    private var failure: String?

    init(fd: FileDescriptor) {
        self.fd = fd
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
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
        pthread_mutex_lock(&mutex)
        let seq = nextSeq
        nextSeq += 1
        let request = HypercallRequest(op, seq: seq, args: args, payload: payload).encode()
        do {
            try UnixSocket.send(fd, request)
        } catch {
            pthread_mutex_unlock(&mutex)
            fatalChannel("sending hypercall \(op): \(error)")
        }
        while replies[seq] == nil {
            if let failure {
                pthread_mutex_unlock(&mutex)
                fatalChannel(failure)
            }
            if readerActive {
                pthread_cond_wait(&cond, &mutex)
                continue
            }
            readerActive = true
            pthread_mutex_unlock(&mutex)
            let received: Result<UnixSocket.Message?, Error> = Result { try UnixSocket.receive(fd, maxSize: HypercallRequest.maxMessageSize) }
            pthread_mutex_lock(&mutex)
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
            pthread_cond_broadcast(&cond)
        }
        let reply = replies.removeValue(forKey: seq)!
        pthread_mutex_unlock(&mutex)
        return reply
    }

    private func fatalChannel(_ why: String) -> Never {
        let msg = "procvisor: hypercall channel: \(why)\n"
        _ = msg.withCString { Glibc.write(2, $0, strlen($0)) }
        exit(70)
    }
}

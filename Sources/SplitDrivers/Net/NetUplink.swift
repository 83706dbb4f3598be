import DomainRuntime
import LinuxHost
import ProcvisorABI

/// A bridge's uplink: the tap the supervisor created and handed over. Its thread moves frames
/// between the tap and the switch: reads land in `inbound` (the switch is woken through the
/// netback's wake port), frames the switch sends wait in `outbound` until the thread writes
/// them. With io_uring the thread keeps reads posted on the tap and a read on its kick eventfd,
/// and sleeps in one `io_uring_enter`; without it, it polls the two descriptors.
final class NetUplink: NetBridgePortProtocol {
    let id = NetBridge.uplinkPort
    unowned let owner: Netback
    unowned let bridge: NetBridge
    let tap: FileDescriptor
    private let kickEvent = Kick()
    /// Switch thread only (under the netback lock).
    @exclusivity(unchecked) var inboundPending = false
    private let mutex = Lock()
    @exclusivity(unchecked) private var inbound: [[UInt8]] = []
    @exclusivity(unchecked) private var outbound: [UnsafeMutableRawBufferPointer] = []
    @exclusivity(unchecked) private var ring: IOUring?
    @exclusivity(unchecked) private(set) var engineName = "threads"
    /// Frames waiting in either direction at most; beyond, frames are dropped (and logged).
    static let queueLimit = 1024
    /// Frames from the tap dropped since the last log line (uplink thread only).
    @exclusivity(unchecked) private var droppedIn = 0
    @exclusivity(unchecked) private var lastDropLog: UInt64 = 0
    static let bufferSize = 65536
    static let reads = 16

    init(owner: Netback, bridge: NetBridge, tap: FileDescriptor) {
        self.owner = owner
        self.bridge = bridge
        self.tap = tap
        // The ring acts on registered files only (IORingPolicy): the tap is file 0, the kick 1.
        // `PROCVISOR_FORCE_NO_IOURING=1` turns it off, as a setting or (`probe`) in the environment.
        if !owner.settings.forceNoIOUring, IOUring.probe() == nil,
           let r = try? IOUring(entries: 128), (try? r.registerFiles([tap, kickEvent.fd])) != nil {
            ring = r
            engineName = "io_uring"
        }
    }

    /// Switch thread: a frame for the tap (copied; the thread writes it).
    func deliver(_ frame: UnsafeRawBufferPointer, info: FrameInfo) {
        mutex.lock()
        if outbound.count >= Self.queueLimit {
            mutex.unlock()
            // The switch thread, under the netback lock: logLimited is safe here.
            owner.logLimited("uplink-out-\(bridge.name)", "netback: bridge \(bridge.name): tap \(bridge.name) is not keeping up; dropping frames for it")
            return
        }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 16)
        copy.copyMemory(from: frame)
        outbound.append(copy)
        mutex.unlock()
        owner.queueUplinkKick(self)
    }

    func kick() { kickEvent.raise() }

    /// Switch thread: frames that came in from the tap, oldest first.
    func takeInbound(max: Int) -> [[UInt8]] {
        mutex.lock()
        defer { mutex.unlock() }
        if inbound.count <= max {
            defer { inbound.removeAll(keepingCapacity: true) }
            return inbound
        }
        let out = Array(inbound[..<max])
        inbound.removeFirst(max)
        return out
    }

    private func received(_ p: UnsafeRawPointer, _ n: Int) {
        mutex.lock()
        if inbound.count >= Self.queueLimit {
            mutex.unlock()
            droppedIn += 1
            let now = MonotonicClock.nanoseconds()
            if now - lastDropLog >= 1_000_000_000 {
                lastDropLog = now
                owner.log("netback: bridge \(bridge.name): the switch is not keeping up with tap \(bridge.name); dropped \(droppedIn) frames from it")
                droppedIn = 0
            }
            return
        }
        let wasEmpty = inbound.isEmpty
        inbound.append(Array(UnsafeRawBufferPointer(start: p, count: n)))
        mutex.unlock()
        if wasEmpty { try? owner.domain.eventChannels.send(owner.wakePort) }
    }

    private func takeOutbound() -> [UnsafeMutableRawBufferPointer] {
        mutex.lock()
        defer { outbound.removeAll(keepingCapacity: true); mutex.unlock() }
        return outbound
    }

    func start() {
        owner.domain.startVCPU(-12) { [self] _ in
            if ring != nil { runRing() } else { runThreads() }
        }
    }

    /// Registered file slots of the ring.
    private static let tapFile: Int32 = 0
    private static let kickFile: Int32 = 1
    private static let kickTag: UInt64 = 1 << 40
    private static let writeTag: UInt64 = 1 << 41

    private func runRing() {
        guard let ring else { return }
        let buffers = UnsafeMutableRawPointer.allocate(byteCount: Self.bufferSize * Self.reads, alignment: 4096)
        let kickWord = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        var writes: [UInt64: UnsafeMutableRawBufferPointer] = [:]
        var nextWrite: UInt64 = 0
        func postRead(_ i: Int) {
            try? ring.read(.registered(Self.tapFile), into: UnsafeMutableRawBufferPointer(start: buffers + i * Self.bufferSize, count: Self.bufferSize),
                           offset: UInt64.max, userData: UInt64(i))
        }
        func postKick() {
            try? ring.read(.registered(Self.kickFile), into: UnsafeMutableRawBufferPointer(start: kickWord, count: 8), offset: UInt64.max,
                           userData: Self.kickTag)
        }
        for i in 0..<Self.reads { postRead(i) }
        postKick()
        var failures = 0
        while true {
            _ = try? ring.submit(waitingFor: 1)
            var rearm: [Int] = []
            var kicked = false
            _ = ring.harvest { tag, res in
                if tag == Self.kickTag {
                    kicked = true
                } else if tag & Self.writeTag != 0 {
                    writes.removeValue(forKey: tag)?.deallocate()
                    if res < 0 { owner.logLimited("uplink-w-\(bridge.name)", "netback: bridge \(bridge.name): write to tap: \(Errno(rawValue: -res))") }
                } else {
                    let i = Int(tag)
                    if res > 0 {
                        received(buffers + i * Self.bufferSize, Int(res))
                        failures = 0
                    } else if res < 0 {
                        failures += 1
                        owner.logLimited("uplink-r-\(bridge.name)", "netback: bridge \(bridge.name): read from tap: \(Errno(rawValue: -res))")
                    }
                    rearm.append(i)
                }
            }
            if failures > 100 { PosixThread.sleep(microseconds: 10_000) }
            for i in rearm { postRead(i) }
            if kicked {
                postKick()
                for frame in takeOutbound() {
                    nextWrite += 1
                    let tag = Self.writeTag | nextWrite
                    writes[tag] = frame
                    if ring.submissionSpace == 0 { _ = try? ring.submit() }
                    do {
                        try ring.write(.registered(Self.tapFile), from: UnsafeRawBufferPointer(frame), offset: UInt64.max, userData: tag)
                    } catch {
                        writes.removeValue(forKey: tag)?.deallocate()
                    }
                }
            }
        }
    }

    private func runThreads() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 4096)
        var poll = Poll([(tap, .readable), (kickEvent.fd, .readable)])
        while true {
            // A failed poll (EINTR) reports nothing ready: the loop polls again.
            _ = poll.waitOnce(timeoutMs: -1)
            if poll.ready(0).contains(.readable) {
                if let n = try? tap.read(into: buffer), n > 0 { received(buffer.baseAddress!, n) }
            }
            if poll.isReady(1) {
                kickEvent.drain()
                for frame in takeOutbound() {
                    _ = try? tap.write(UnsafeRawBufferPointer(frame))
                    frame.deallocate()
                }
            }
        }
    }
}

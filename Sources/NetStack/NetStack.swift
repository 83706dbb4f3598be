import DomainRuntime
import LinuxHost
import ProcvisorABI

// NetStack: a small IPv4 stack over a NetworkLink (netfront, or an in-memory pair in tests):
// Ethernet II, ARP with a cache (RFC 826), IPv4 without options on output and without
// fragmentation (RFC 791), ICMP echo (RFC 792), UDP sockets (RFC 768). docs/netstack.md.
//
// Threading: none. Every call on a NetStack and its sockets comes from one thread; the calls that
// wait (`poll`, `resolve`, `ping`, `UDPSocket.receive`, and `send` while resolving) pump the link
// themselves. Nothing here calls back into user code, so handling a frame never re-enters the stack.
//
// Buffers: frames the user's calls send (ARP requests, echo requests, datagrams) are built in
// `txBuffer`; frames sent while handling received ones (ARP replies, echo replies, port
// unreachable) in `replyBuffer`. A send whose link is full polls the link to reclaim room, which
// may answer requests: two buffers keep an answer from overwriting the frame being sent.
// Answers are sent inside the link's poll handler; they are dropped (counted) rather than retried
// there, since the handler cannot poll the link again.
//
// Receive path: frames are parsed in place; the only allocation is the copy of a datagram's
// payload delivered to a socket (and, rarely, an ARP cache entry for a new host).

/// A small IPv4 stack (ARP, IPv4, ICMP echo, UDP) on a `NetworkLink`. Single-threaded: every call
/// from one thread (see docs/netstack.md).
public final class NetStack {
    /// The link frames go over.
    public let link: NetworkLink
    /// This host's address, subnet and gateway.
    public let config: NetStackConfig
    /// The link's MTU when the stack was made (clamped to 68...65535): the largest IP packet sent.
    public let mtu: Int

    /// The largest UDP payload `UDPSocket.send` takes: `mtu - 28` (no fragmentation).
    public var maxUDPPayload: Int { mtu - NetStackWire.ipv4Header - NetStackWire.udpHeader }

    /// How long an ARP cache entry stays valid after it was last confirmed (an ARP packet from the
    /// host, or an IPv4 packet from it carrying the cached MAC). In the last twelfth of the
    /// lifetime a send refreshes it with a unicast ARP request (at most one per `arpRetryInterval`);
    /// an expired entry is resolved again with broadcast requests. Seconds; default 60.
    public var arpCacheLifetime: Double {
        get { Double(arpLifetimeNs) / 1e9 }
        set { arpLifetimeNs = NetStack.nanoseconds(max(newValue, 0.001)) }
    }

    /// Interval between ARP requests while resolving (and between refresh requests): 200 ms.
    public static let arpRetryInterval = 0.2
    /// The most ARP cache entries kept; a new host beyond it evicts expired entries, else the oldest.
    public static let arpCacheCapacity = 1024
    /// Times a send retries a full link before dropping the frame: the first half after a poll
    /// with timeout 0 and a yield, the second half after a poll waiting up to `transmitWaitNs`.
    public static let transmitRetries = 8
    /// The longest one retry waits for the link to return transmit space: 1 ms.
    public static let transmitWaitNs: Int64 = 1_000_000
    /// Port unreachable messages: at most this many in a burst, refilled at `unreachableRate` per second.
    public static let unreachableBurst = 10
    public static let unreachableRate = 10

    /// The counters (a copy).
    public var statistics: NetStackStatistics { stats }

    let mac: MACAddress
    let address: UInt32
    let subnetMask: UInt32
    /// The subnet's directed broadcast, or 0 for /31 and /32 (0 is never a packet's destination here).
    let subnetBroadcast: UInt32
    @exclusivity(unchecked) var stats = NetStackStatistics()

    private let bufferSize: Int
    private let txBuffer: UnsafeMutableRawPointer
    private let replyBuffer: UnsafeMutableRawPointer

    struct ARPEntry {
        var mac: MACAddress
        var confirmedNs: UInt64
        var probedNs: UInt64
    }
    @exclusivity(unchecked) private(set) var arpCache: [UInt32: ARPEntry] = [:]
    @exclusivity(unchecked) private var arpLifetimeNs: UInt64 = 60_000_000_000
    private let arpRetryNs = NetStack.nanoseconds(NetStack.arpRetryInterval)
    /// The last IPv4 source whose ARP entry received traffic refreshed, and when: keeps a stream
    /// from doing a cache write per frame.
    @exclusivity(unchecked) private var refreshedSource: UInt32 = 0
    @exclusivity(unchecked) private var refreshedAtNs: UInt64 = 0
    /// The clock when the current link poll began (for decisions that tolerate a stale clock).
    @exclusivity(unchecked) private var pollStartNs: UInt64 = 0

    /// Bound sockets, unretained so that dropping a socket closes it.
    /// SAFETY: a socket removes its entry in `close` and in `deinit`, before its memory goes;
    /// single-threaded, so no lookup runs in between.
    struct SocketRef { unowned(unsafe) let socket: UDPSocket }
    @exclusivity(unchecked) private var sockets: [UInt16: SocketRef] = [:]
    @exclusivity(unchecked) private var nextEphemeral: UInt16

    @exclusivity(unchecked) private var nextIPID: UInt16
    private let echoID: UInt16
    private struct EchoWait {
        var destination: UInt32
        var sequence: UInt16
        var length: Int
        var receivedNs: UInt64?
    }
    @exclusivity(unchecked) private var echoWait: EchoWait?

    @exclusivity(unchecked) private var unreachableTokens = NetStack.unreachableBurst
    @exclusivity(unchecked) private var unreachableRefillNs: UInt64 = 0

    @exclusivity(unchecked) private var batchDepth = 0
    @exclusivity(unchecked) private var flushPending = false

    /// A stack for `config` on `link`. Nothing is sent until the first call; call `announce()`
    /// once the link is connected.
    public init(link: NetworkLink, config: NetStackConfig) {
        self.link = link
        self.config = config
        mtu = min(max(link.mtu, 68), 65535)
        mac = link.mac
        address = config.address.value
        subnetMask = config.subnet.mask
        subnetBroadcast = config.subnetBroadcast?.value ?? 0
        bufferSize = max(mtu + NetStackWire.ethernetHeader, NetStackWire.minimumFrame)
        txBuffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 16)
        txBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: bufferSize)
        replyBuffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 16)
        replyBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: bufferSize)
        // Not secret, only different between stacks and runs (getrandom may be filtered in guests).
        let now = SystemTime.nanoseconds()
        let seed = now ^ (now >> 17) ^ mac.value ^ UInt64(config.address.value) << 7
        echoID = UInt16(truncatingIfNeeded: seed ^ (seed >> 32))
        nextIPID = UInt16(truncatingIfNeeded: seed >> 16)
        nextEphemeral = 49152 + UInt16(truncatingIfNeeded: seed >> 24) % 16384
        arpCache.reserveCapacity(16)
    }

    deinit {
        txBuffer.deallocate()
        replyBuffer.deallocate()
    }

    // MARK: Public calls

    /// Sends a gratuitous ARP (a broadcast request for this host's own address) so switches and
    /// neighbours learn this MAC; call after connecting.
    public func announce() {
        buildARP(txBuffer, operation: NetStackWire.arpRequest, to: .broadcast, targetMAC: MACAddress(value: 0), targetIP: address)
        if transmitUser(NetStackWire.ethernetHeader + NetStackWire.arpLength) { stats.arpRequestsOut += 1 }
        flushIfDone()
    }

    /// Takes every arrived frame through the stack (ARP answered and learned, ICMP echo requests
    /// answered, UDP delivered to bound sockets); sleeps up to `timeoutNs` when nothing is waiting
    /// (0: never; negative: until a frame arrives). Returns the number of frames processed.
    @discardableResult
    public func poll(timeoutNs: Int64) -> Int {
        if flushPending {
            link.flush()
            flushPending = false
        }
        let n = pollLink(timeoutNs: timeoutNs)
        if flushPending {
            link.flush()
            flushPending = false
        }
        return n
    }

    /// Runs `body` with link flushes deferred to its end: sends inside it reach the peer with one
    /// notification. (`poll` and the waiting calls still flush what is queued before they sleep.)
    public func batch<T>(_ body: () throws -> T) rethrows -> T {
        batchDepth += 1
        defer {
            batchDepth -= 1
            flushIfDone()
        }
        return try body()
    }

    /// Resolves the next hop for `dst` (the address itself on the subnet, else the gateway) to a
    /// MAC: from the ARP cache, else by broadcast ARP requests retried every 200 ms, pumping the
    /// link, until `timeout` seconds pass (negative: no limit). Broadcast addresses resolve to the
    /// broadcast MAC. Throws `unreachable(dst)` when no answer comes or there is no route.
    public func resolve(_ dst: IPv4Address, timeout: Double) throws -> MACAddress {
        try resolveNextHop(dst, deadline: Deadline(timeout))
    }

    /// The cached MAC for `ip` if its entry is valid now (sends nothing).
    public func cachedMAC(for ip: IPv4Address) -> MACAddress? {
        guard let e = arpCache[ip.value], SystemTime.nanoseconds() &- e.confirmedNs < arpLifetimeNs else { return nil }
        return e.mac
    }

    /// Forgets every ARP cache entry.
    public func flushARPCache() { arpCache.removeAll(keepingCapacity: true) }

    /// ICMP echo: sends one echo request (`payloadSize` bytes of pattern after the 8-byte header;
    /// this stack's identifier, `sequence`) and waits, pumping the link, for the matching reply from
    /// `dst`. Returns the round trip in seconds. `timeout` covers ARP resolution too. Throws
    /// `unreachable` (no route, no ARP answer), `timeout` (no reply), `messageTooLong`.
    public func ping(_ dst: IPv4Address, sequence: UInt16, payloadSize: Int = 56, timeout: Double) throws -> Double {
        guard payloadSize >= 0 else { throw NetStackError.invalidArgument("ping payload size \(payloadSize) is negative") }
        let max = mtu - NetStackWire.ipv4Header - NetStackWire.icmpHeader
        guard payloadSize <= max else { throw NetStackError.messageTooLong(size: payloadSize, max: max) }
        let deadline = Deadline(timeout)
        let dstMAC = try resolveNextHop(dst, deadline: deadline)

        let icmpLength = NetStackWire.icmpHeader + payloadSize
        let ip = txBuffer + NetStackWire.ethernetHeader
        let icmp = ip + NetStackWire.ipv4Header
        buildEthernet(txBuffer, to: dstMAC, type: NetStackWire.etherTypeIPv4)
        buildIPv4(ip, payloadLength: icmpLength, protocol: NetStackWire.protocolICMP, destination: dst.value)
        NetStackWire.put8(icmp, 0, NetStackWire.icmpEchoRequest)
        NetStackWire.put8(icmp, 1, 0)
        NetStackWire.put16(icmp, 2, 0)
        NetStackWire.put16(icmp, 4, echoID)
        NetStackWire.put16(icmp, 6, sequence)
        let payload = icmp + NetStackWire.icmpHeader
        for i in 0..<payloadSize { payload.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
        NetStackWire.put16(icmp, 2, NetStackWire.checksum(icmp, icmpLength))

        echoWait = EchoWait(destination: dst.value, sequence: sequence, length: icmpLength, receivedNs: nil)
        defer { echoWait = nil }
        let sentNs = SystemTime.nanoseconds()
        if transmitUser(NetStackWire.ethernetHeader + NetStackWire.ipv4Header + icmpLength) { stats.icmpEchoRequestsOut += 1 }
        flushIfDone()
        pump(until: deadline) { self.echoWait?.receivedNs != nil }
        guard let receivedNs = echoWait?.receivedNs else {
            throw NetStackError.timeout("no echo reply from \(dst) (icmp_seq \(sequence)) within \(timeout) s")
        }
        return Double(receivedNs &- sentNs) / 1e9
    }

    /// A UDP socket bound to `port` on this host's address (and its broadcasts); 0 picks a free
    /// ephemeral port in 49152...65535. Throws `portInUse`.
    public func udpSocket(port: UInt16 = 0) throws -> UDPSocket {
        if port != 0 {
            guard sockets[port] == nil else { throw NetStackError.portInUse(port) }
            let s = UDPSocket(stack: self, port: port)
            sockets[port] = SocketRef(socket: s)
            return s
        }
        for _ in 0..<16384 {
            let p = nextEphemeral
            nextEphemeral = p == 65535 ? 49152 : p + 1
            if sockets[p] == nil {
                let s = UDPSocket(stack: self, port: p)
                sockets[p] = SocketRef(socket: s)
                return s
            }
        }
        throw NetStackError.portInUse(0)
    }

    // MARK: Sending (user context)

    func unbind(_ port: UInt16) { sockets[port] = nil }

    /// Sends one datagram (the caller checked the size and the ports).
    func sendUDP(from sourcePort: UInt16, _ data: UnsafeRawBufferPointer, to dst: IPv4Address, port dstPort: UInt16, deadline: Deadline) throws {
        let dstMAC = try resolveNextHop(dst, deadline: deadline)
        let udpLength = NetStackWire.udpHeader + data.count
        let ip = txBuffer + NetStackWire.ethernetHeader
        let udp = ip + NetStackWire.ipv4Header
        buildEthernet(txBuffer, to: dstMAC, type: NetStackWire.etherTypeIPv4)
        buildIPv4(ip, payloadLength: udpLength, protocol: NetStackWire.protocolUDP, destination: dst.value)
        NetStackWire.put16(udp, 0, sourcePort)
        NetStackWire.put16(udp, 2, dstPort)
        NetStackWire.put16(udp, 4, UInt16(udpLength))
        NetStackWire.put16(udp, 6, 0)
        if let src = data.baseAddress, data.count > 0 {
            (udp + NetStackWire.udpHeader).copyMemory(from: src, byteCount: data.count)
        }
        var sum = NetStackWire.checksum(udp, udpLength, plus: NetStackWire.pseudoHeaderSum(
            source: address, destination: dst.value, protocol: NetStackWire.protocolUDP, length: udpLength))
        if sum == 0 { sum = 0xFFFF }  // 0 means "no checksum" (RFC 768)
        NetStackWire.put16(udp, 6, sum)
        if transmitUser(NetStackWire.ethernetHeader + NetStackWire.ipv4Header + udpLength) { stats.udpOut += 1 }
        flushIfDone()
    }

    /// The next hop for `dst`: nil for a broadcast address (no ARP), else the address to resolve.
    private func nextHop(_ dst: IPv4Address) throws -> UInt32? {
        let d = dst.value
        if d == 0xFFFF_FFFF || (subnetBroadcast != 0 && d == subnetBroadcast) { return nil }
        guard d != 0, d != address, !NetStackWire.isMulticastOrReserved(d), !NetStackWire.isLoopback(d) else {
            throw NetStackError.unreachable(dst)
        }
        if (d ^ address) & subnetMask == 0 { return d }
        guard let g = config.gateway else { throw NetStackError.unreachable(dst) }
        return g.value
    }

    private func resolveNextHop(_ dst: IPv4Address, deadline: Deadline) throws -> MACAddress {
        guard let hop = try nextHop(dst) else { return .broadcast }
        let now = SystemTime.nanoseconds()
        if var e = arpCache[hop] {
            let age = now &- e.confirmedNs
            if age < arpLifetimeNs {
                if age >= arpLifetimeNs - arpLifetimeNs / 12, now &- e.probedNs >= arpRetryNs {
                    e.probedNs = now
                    arpCache[hop] = e
                    buildARP(txBuffer, operation: NetStackWire.arpRequest, to: e.mac, targetMAC: MACAddress(value: 0), targetIP: hop)
                    if transmitUser(NetStackWire.ethernetHeader + NetStackWire.arpLength) { stats.arpRequestsOut += 1 }
                }
                return e.mac
            }
            arpCache[hop] = nil
        }
        while true {
            buildARP(txBuffer, operation: NetStackWire.arpRequest, to: .broadcast, targetMAC: MACAddress(value: 0), targetIP: hop)
            if transmitUser(NetStackWire.ethernetHeader + NetStackWire.arpLength) { stats.arpRequestsOut += 1 }
            let retry = deadline.earlier(than: SystemTime.nanoseconds() &+ arpRetryNs)
            var found: MACAddress?
            pump(until: retry) {
                if let e = self.arpCache[hop], SystemTime.nanoseconds() &- e.confirmedNs < self.arpLifetimeNs { found = e.mac }
                return found != nil
            }
            if let m = found { return m }
            if deadline.hasPassed() { throw NetStackError.unreachable(dst) }
        }
    }

    /// Polls the link (flushing first) until `done` or the deadline; at least one poll.
    func pump(until deadline: Deadline, _ done: () -> Bool) {
        if done() { return }
        while true {
            poll(timeoutNs: deadline.remainingNs())
            if done() { return }
            if deadline.hasPassed() { return }
        }
    }

    /// Sends the frame of `length` bytes in `txBuffer` (padded to 60), polling a full link to
    /// reclaim room up to `transmitRetries` times; false (counted) when it stays full.
    private func transmitUser(_ length: Int) -> Bool {
        let frame = UnsafeRawBufferPointer(start: txBuffer, count: pad(txBuffer, length))
        if link.transmit(frame) {
            stats.framesOut += 1
            flushPending = true
            return true
        }
        for attempt in 0..<NetStack.transmitRetries {
            // The room may be held by frames queued but not yet flushed: let the peer see them.
            link.flush()
            flushPending = false
            // First reclaim what is already back; then wait a little for the peer to return room
            // (a link's poll ends when transmit space comes back), so a sender is slowed, not dropped.
            _ = pollLink(timeoutNs: attempt < NetStack.transmitRetries / 2 ? 0 : NetStack.transmitWaitNs)
            if link.transmit(frame) {
                stats.framesOut += 1
                flushPending = true
                return true
            }
            if attempt < NetStack.transmitRetries / 2 { PosixThread.yield() }
        }
        stats.dropTransmitFull += 1
        return false
    }

    /// Sends a frame built in `replyBuffer` from inside the poll handler: no retry (the handler
    /// cannot poll the link); the flush happens when the poll returns.
    private func transmitReply(_ length: Int) -> Bool {
        if link.transmit(UnsafeRawBufferPointer(start: replyBuffer, count: pad(replyBuffer, length))) {
            stats.framesOut += 1
            flushPending = true
            return true
        }
        stats.dropTransmitFull += 1
        return false
    }

    private func flushIfDone() {
        if flushPending && batchDepth == 0 {
            link.flush()
            flushPending = false
        }
    }

    /// Zero-pads a frame to Ethernet's minimum; returns the length to send.
    @inline(__always) private func pad(_ p: UnsafeMutableRawPointer, _ length: Int) -> Int {
        if length >= NetStackWire.minimumFrame { return length }
        (p + length).initializeMemory(as: UInt8.self, repeating: 0, count: NetStackWire.minimumFrame - length)
        return NetStackWire.minimumFrame
    }

    // MARK: Frame building

    @inline(__always) private func buildEthernet(_ p: UnsafeMutableRawPointer, to dst: MACAddress, type: UInt16) {
        dst.store(to: p)
        mac.store(to: p + 6)
        NetStackWire.put16(p, 12, type)
    }

    /// A 20-byte IPv4 header from this host: DF set, TTL 64, the next identification.
    @inline(__always) private func buildIPv4(_ p: UnsafeMutableRawPointer, payloadLength: Int, protocol proto: UInt8, destination: UInt32) {
        NetStackWire.put8(p, 0, 0x45)
        NetStackWire.put8(p, 1, 0)
        NetStackWire.put16(p, 2, UInt16(NetStackWire.ipv4Header + payloadLength))
        NetStackWire.put16(p, 4, nextIPID)
        nextIPID &+= 1
        NetStackWire.put16(p, 6, NetStackWire.flagDontFragment)
        NetStackWire.put8(p, 8, NetStackWire.defaultTTL)
        NetStackWire.put8(p, 9, proto)
        NetStackWire.put16(p, 10, 0)
        NetStackWire.put32(p, 12, address)
        NetStackWire.put32(p, 16, destination)
        NetStackWire.put16(p, 10, NetStackWire.checksum(p, NetStackWire.ipv4Header))
    }

    /// An ARP packet from this host in an Ethernet frame.
    private func buildARP(_ p: UnsafeMutableRawPointer, operation: UInt16, to dst: MACAddress, targetMAC: MACAddress, targetIP: UInt32) {
        buildEthernet(p, to: dst, type: NetStackWire.etherTypeARP)
        let a = p + NetStackWire.ethernetHeader
        NetStackWire.put16(a, 0, 1)  // Ethernet
        NetStackWire.put16(a, 2, NetStackWire.etherTypeIPv4)
        NetStackWire.put8(a, 4, 6)
        NetStackWire.put8(a, 5, 4)
        NetStackWire.put16(a, 6, operation)
        mac.store(to: a + 8)
        NetStackWire.put32(a, 14, address)
        targetMAC.store(to: a + 18)
        NetStackWire.put32(a, 24, targetIP)
    }

    // MARK: Receiving (inside the link's poll handler)

    private func pollLink(timeoutNs: Int64) -> Int {
        pollStartNs = SystemTime.nanoseconds()
        return link.poll(timeoutNs: timeoutNs) { frame in self.input(frame) }
    }

    /// One received frame: hostile until proven otherwise. Every path ends in one counter.
    private func input(_ frame: UnsafeRawBufferPointer) {
        stats.framesIn += 1
        guard let p = frame.baseAddress, frame.count >= NetStackWire.ethernetHeader else {
            stats.dropTruncated += 1
            return
        }
        let dst = MACAddress(bytes: p)
        guard dst == mac || dst.isBroadcast else {
            stats.dropNotForUs += 1
            return
        }
        let src = MACAddress(bytes: p + 6)
        guard !src.isMulticast, !src.isZero else {
            stats.dropMartian += 1
            return
        }
        guard src != mac else {  // our own frame, reflected
            stats.dropNotForUs += 1
            return
        }
        let body = p + NetStackWire.ethernetHeader
        let length = frame.count - NetStackWire.ethernetHeader
        switch NetStackWire.u16(p, 12) {
        case NetStackWire.etherTypeIPv4: ipv4Input(body, length, from: src)
        case NetStackWire.etherTypeARP: arpInput(body, length)
        default: stats.dropUnknownProtocol += 1
        }
    }

    private func arpInput(_ a: UnsafeRawPointer, _ length: Int) {
        // Ethernet padding may follow the 28 bytes.
        guard length >= NetStackWire.arpLength else {
            stats.dropTruncated += 1
            return
        }
        guard NetStackWire.u16(a, 0) == 1, NetStackWire.u16(a, 2) == NetStackWire.etherTypeIPv4,
              NetStackWire.u8(a, 4) == 6, NetStackWire.u8(a, 5) == 4 else {
            stats.dropMalformed += 1
            return
        }
        let op = NetStackWire.u16(a, 6)
        guard op == NetStackWire.arpRequest || op == NetStackWire.arpReply else {
            stats.dropMalformed += 1
            return
        }
        let senderMAC = MACAddress(bytes: a + 8)
        let senderIP = NetStackWire.u32(a, 14)
        let targetIP = NetStackWire.u32(a, 24)
        guard !senderMAC.isMulticast, !senderMAC.isZero, senderMAC != mac,
              !NetStackWire.isMulticastOrReserved(senderIP), !NetStackWire.isLoopback(senderIP),
              senderIP != 0 || op == NetStackWire.arpRequest else {  // 0.0.0.0: an RFC 5227 probe
            stats.dropMartian += 1
            return
        }
        if op == NetStackWire.arpRequest { stats.arpRequestsIn += 1 } else { stats.arpRepliesIn += 1 }
        if senderIP == address {
            stats.arpAddressConflicts += 1
            return
        }
        let forUs = targetIP == address
        if senderIP != 0 {
            // RFC 826: update the sender if known; add it if the packet is for us (a request to
            // us, or the reply to one of ours). Linux does the same with arp_accept = 0.
            let now = SystemTime.nanoseconds()
            if var e = arpCache[senderIP] {
                e.mac = senderMAC
                e.confirmedNs = now
                arpCache[senderIP] = e
            } else if forUs {
                learn(senderIP, senderMAC, now: now)
            }
        }
        if op == NetStackWire.arpRequest && forUs {
            buildARP(replyBuffer, operation: NetStackWire.arpReply, to: senderMAC, targetMAC: senderMAC, targetIP: senderIP)
            if transmitReply(NetStackWire.ethernetHeader + NetStackWire.arpLength) { stats.arpRepliesOut += 1 }
        }
    }

    /// Adds an ARP entry, making room first when the cache is full.
    private func learn(_ ip: UInt32, _ mac: MACAddress, now: UInt64) {
        if arpCache.count >= NetStack.arpCacheCapacity {
            let lifetime = arpLifetimeNs
            arpCache = arpCache.filter { now &- $0.value.confirmedNs < lifetime }
            if arpCache.count >= NetStack.arpCacheCapacity,
               let oldest = arpCache.min(by: { $0.value.confirmedNs < $1.value.confirmedNs }) {
                arpCache[oldest.key] = nil
            }
        }
        arpCache[ip] = ARPEntry(mac: mac, confirmedNs: now, probedNs: 0)
    }

    private func ipv4Input(_ ip: UnsafeRawPointer, _ length: Int, from srcMAC: MACAddress) {
        guard length >= NetStackWire.ipv4Header else {
            stats.dropTruncated += 1
            return
        }
        let versionIHL = NetStackWire.u8(ip, 0)
        let headerLength = Int(versionIHL & 0x0F) * 4
        guard versionIHL >> 4 == 4, headerLength >= NetStackWire.ipv4Header else {
            stats.dropMalformed += 1
            return
        }
        guard headerLength <= length else {
            stats.dropTruncated += 1
            return
        }
        let totalLength = Int(NetStackWire.u16(ip, 2))
        guard totalLength >= headerLength else {
            stats.dropMalformed += 1
            return
        }
        guard totalLength <= length else {  // bytes past it are Ethernet padding
            stats.dropTruncated += 1
            return
        }
        guard NetStackWire.checksumIsValid(ip, headerLength) else {
            stats.dropBadChecksum += 1
            return
        }
        guard NetStackWire.u16(ip, 6) & NetStackWire.fragmentMask == 0 else {
            stats.dropFragment += 1
            return
        }
        let src = NetStackWire.u32(ip, 12)
        let dst = NetStackWire.u32(ip, 16)
        let broadcast = dst == 0xFFFF_FFFF || (subnetBroadcast != 0 && dst == subnetBroadcast)
        guard dst == address || broadcast else {
            stats.dropNotForUs += 1
            return
        }
        guard !NetStackWire.isMulticastOrReserved(src), !NetStackWire.isLoopback(src), src != address,
              subnetBroadcast == 0 || src != subnetBroadcast else {
            stats.dropMartian += 1
            return
        }
        if src != 0 { confirmNeighbour(src, srcMAC) }
        let payload = ip + headerLength
        let payloadLength = totalLength - headerLength
        switch NetStackWire.u8(ip, 9) {
        case NetStackWire.protocolUDP:
            udpInput(ip, headerLength, payload, payloadLength, source: src, destination: dst, broadcast: broadcast, from: srcMAC)
        case NetStackWire.protocolICMP:
            icmpInput(payload, payloadLength, source: src, broadcast: broadcast, from: srcMAC)
        default:
            stats.dropUnknownProtocol += 1
        }
    }

    /// Traffic from a neighbour (the source on the subnet, or the gateway for an off-link source)
    /// carrying its cached MAC refreshes its ARP entry; for a run of packets from one source, at
    /// most every sixteenth of the lifetime (and at least once a second).
    @inline(__always) private func confirmNeighbour(_ src: UInt32, _ srcMAC: MACAddress) {
        if src == refreshedSource && pollStartNs &- refreshedAtNs < min(arpLifetimeNs / 16, 1_000_000_000) { return }
        let hop: UInt32
        if (src ^ address) & subnetMask == 0 {
            hop = src
        } else if let g = config.gateway {
            hop = g.value
        } else {
            return
        }
        guard var e = arpCache[hop], e.mac == srcMAC else { return }
        let now = SystemTime.nanoseconds()
        e.confirmedNs = now
        arpCache[hop] = e
        refreshedSource = src
        refreshedAtNs = now
    }

    private func icmpInput(_ icmp: UnsafeRawPointer, _ length: Int, source: UInt32, broadcast: Bool, from srcMAC: MACAddress) {
        guard length >= NetStackWire.icmpHeader else {
            stats.dropTruncated += 1
            return
        }
        guard NetStackWire.checksumIsValid(icmp, length) else {
            stats.dropBadChecksum += 1
            return
        }
        switch NetStackWire.u8(icmp, 0) {
        case NetStackWire.icmpEchoRequest:
            guard !broadcast else {
                stats.dropBroadcastEcho += 1
                return
            }
            guard source != 0 else {
                stats.dropMartian += 1
                return
            }
            guard NetStackWire.ipv4Header + length <= mtu else {
                stats.dropOversize += 1
                return
            }
            stats.icmpEchoRequestsIn += 1
            // The reply goes back to the frame's source MAC: the sender on the subnet, or the
            // router it came through; no ARP lookup from inside the handler.
            let ip = replyBuffer + NetStackWire.ethernetHeader
            let reply = ip + NetStackWire.ipv4Header
            buildEthernet(replyBuffer, to: srcMAC, type: NetStackWire.etherTypeIPv4)
            buildIPv4(ip, payloadLength: length, protocol: NetStackWire.protocolICMP, destination: source)
            reply.copyMemory(from: icmp, byteCount: length)
            NetStackWire.put8(reply, 0, NetStackWire.icmpEchoReply)
            NetStackWire.put8(reply, 1, 0)
            NetStackWire.put16(reply, 2, 0)
            NetStackWire.put16(reply, 2, NetStackWire.checksum(reply, length))
            if transmitReply(NetStackWire.ethernetHeader + NetStackWire.ipv4Header + length) { stats.icmpEchoRepliesOut += 1 }
        case NetStackWire.icmpEchoReply:
            stats.icmpEchoRepliesIn += 1
            if let w = echoWait, w.receivedNs == nil, w.destination == source, w.length == length,
               NetStackWire.u16(icmp, 4) == echoID, NetStackWire.u16(icmp, 6) == w.sequence {
                echoWait?.receivedNs = SystemTime.nanoseconds()
            }
        default:
            stats.icmpOtherIn += 1
        }
    }

    private func udpInput(_ ip: UnsafeRawPointer, _ headerLength: Int, _ udp: UnsafeRawPointer, _ length: Int,
                          source: UInt32, destination: UInt32, broadcast: Bool, from srcMAC: MACAddress) {
        guard length >= NetStackWire.udpHeader else {
            stats.dropTruncated += 1
            return
        }
        let udpLength = Int(NetStackWire.u16(udp, 4))
        guard udpLength >= NetStackWire.udpHeader else {
            stats.dropMalformed += 1
            return
        }
        guard udpLength <= length else {  // shorter is allowed: the rest is ignored, as Linux trims it
            stats.dropTruncated += 1
            return
        }
        if NetStackWire.u16(udp, 6) != 0 {
            let pseudo = NetStackWire.pseudoHeaderSum(source: source, destination: destination,
                                                      protocol: NetStackWire.protocolUDP, length: udpLength)
            guard NetStackWire.checksumIsValid(udp, udpLength, plus: pseudo) else {
                stats.dropBadChecksum += 1
                return
            }
        }
        let dstPort = NetStackWire.u16(udp, 2)
        guard let socket = sockets[dstPort]?.socket else {
            stats.dropNoSocket += 1
            if !broadcast && source != 0 { sendPortUnreachable(ip, headerLength, udpLength, to: source, srcMAC) }
            return
        }
        let payload = UnsafeRawBufferPointer(start: udp + NetStackWire.udpHeader, count: udpLength - NetStackWire.udpHeader)
        if socket.enqueue(payload, from: IPv4Address(value: source), port: NetStackWire.u16(udp, 0)) {
            stats.udpIn += 1
        } else {
            stats.dropSocketQueueFull += 1
        }
    }

    /// ICMP port unreachable quoting the IP header and the first 8 bytes of the datagram (RFC 792),
    /// rate-limited by a token bucket (Linux limits these too).
    private func sendPortUnreachable(_ ip: UnsafeRawPointer, _ headerLength: Int, _ udpLength: Int, to source: UInt32, _ srcMAC: MACAddress) {
        let now = pollStartNs
        let refill = 1_000_000_000 / UInt64(NetStack.unreachableRate)
        if now &- unreachableRefillNs >= refill {
            let earned = min((now &- unreachableRefillNs) / refill, UInt64(NetStack.unreachableBurst))
            unreachableTokens = min(NetStack.unreachableBurst, unreachableTokens + Int(earned))
            unreachableRefillNs = now
        }
        guard unreachableTokens > 0 else { return }
        unreachableTokens -= 1

        let quoted = headerLength + min(8, udpLength)
        let icmpLength = NetStackWire.icmpHeader + quoted
        let out = replyBuffer + NetStackWire.ethernetHeader
        let icmp = out + NetStackWire.ipv4Header
        buildEthernet(replyBuffer, to: srcMAC, type: NetStackWire.etherTypeIPv4)
        buildIPv4(out, payloadLength: icmpLength, protocol: NetStackWire.protocolICMP, destination: source)
        NetStackWire.put8(icmp, 0, NetStackWire.icmpDestinationUnreachable)
        NetStackWire.put8(icmp, 1, NetStackWire.icmpPortUnreachable)
        NetStackWire.put16(icmp, 2, 0)
        NetStackWire.put32(icmp, 4, 0)
        (icmp + NetStackWire.icmpHeader).copyMemory(from: ip, byteCount: quoted)
        NetStackWire.put16(icmp, 2, NetStackWire.checksum(icmp, icmpLength))
        if transmitReply(NetStackWire.ethernetHeader + NetStackWire.ipv4Header + icmpLength) { stats.icmpUnreachableOut += 1 }
    }

    // MARK: Time

    static func nanoseconds(_ seconds: Double) -> UInt64 {
        guard seconds.isFinite, seconds > 0 else { return 0 }
        return seconds >= 1e9 ? UInt64(1e18) : UInt64(seconds * 1e9)
    }

    /// A point in time a wait ends, or none (a negative or infinite timeout).
    struct Deadline {
        let atNs: UInt64?

        init(_ timeout: Double) {
            if timeout < 0 || timeout == .infinity {
                atNs = nil
            } else {
                atNs = SystemTime.nanoseconds() &+ NetStack.nanoseconds(timeout)
            }
        }

        init(atNs: UInt64?) { self.atNs = atNs }

        /// This deadline or `ns`, whichever comes first.
        func earlier(than ns: UInt64) -> Deadline { Deadline(atNs: min(atNs ?? ns, ns)) }

        func hasPassed() -> Bool {
            guard let at = atNs else { return false }
            return SystemTime.nanoseconds() >= at
        }

        /// For `NetworkLink.poll`: 0 when passed, -1 when there is no deadline.
        func remainingNs() -> Int64 {
            guard let at = atNs else { return -1 }
            let now = SystemTime.nanoseconds()
            return now >= at ? 0 : Int64(clamping: at - now)
        }
    }
}

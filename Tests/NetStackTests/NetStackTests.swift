import DomainRuntime
import Foundation
import NetStack
import ProcvisorABI
import Testing
import TestSupport

// NetStack over an in-memory NetworkLink pair. Most tests are single-threaded: polling one end
// first lets the other end's stack handle what is waiting for it (as if it ran alongside), so the
// outcome does not depend on scheduling. One test runs the peer on its own thread.

/// One end of an in-memory Ethernet link. `transmit` queues, `flush` hands the queue to the peer
/// (through `outboundFilter`, which may change or drop frames), `poll` delivers the peer's frames.
final class MemoryLink: NetworkLink {
    let mac: MACAddress
    let mtu: Int
    weak var peer: MemoryLink?

    private let condition = NSCondition()
    private var inbox: [[UInt8]] = []  // guarded by condition
    private var queued: [[UInt8]] = []

    /// Every frame `transmit` accepted, in order (before the filter).
    var sent: [[UInt8]] = []
    /// Calls of `flush`.
    var flushes = 0
    /// `transmit` returns false this many times before accepting again.
    var rejectTransmits = 0
    /// Applied to each frame at `flush`; false drops it.
    var outboundFilter: ((inout [UInt8]) -> Bool)?
    /// Single-threaded pairs: lets the peer's stack run before this end delivers.
    var pumpPeer: (() -> Void)?
    private let pair: PairState

    final class PairState { var pumping = false }

    init(mac: MACAddress, mtu: Int = 1500, pair: PairState) {
        self.mac = mac
        self.mtu = mtu
        self.pair = pair
    }

    static func pair(_ a: MACAddress, _ b: MACAddress, mtu: Int = 1500) -> (MemoryLink, MemoryLink) {
        let state = PairState()
        let x = MemoryLink(mac: a, mtu: mtu, pair: state)
        let y = MemoryLink(mac: b, mtu: mtu, pair: state)
        x.peer = y
        y.peer = x
        return (x, y)
    }

    func transmit(_ frame: UnsafeRawBufferPointer) -> Bool {
        if rejectTransmits > 0 {
            rejectTransmits -= 1
            return false
        }
        let f = [UInt8](frame)
        queued.append(f)
        sent.append(f)
        return true
    }

    func flush() {
        flushes += 1
        var out: [[UInt8]] = []
        for var f in queued where outboundFilter?(&f) ?? true { out.append(f) }
        queued = []
        peer?.inject(out)
    }

    /// Puts frames in this end's inbox, as if the peer had sent them.
    func inject(_ frames: [[UInt8]]) {
        condition.lock()
        inbox += frames
        condition.signal()
        condition.unlock()
    }

    func poll(timeoutNs: Int64, _ handler: (UnsafeRawBufferPointer) -> Void) -> Int {
        if let pump = pumpPeer, !pair.pumping {
            pair.pumping = true
            pump()
            pair.pumping = false
        }
        condition.lock()
        if inbox.isEmpty && timeoutNs != 0 {
            if pumpPeer != nil {
                // Nobody else delivers: let a little time pass, as a real wait would.
                let ns = timeoutNs < 0 ? 1_000_000 : min(timeoutNs, 1_000_000)
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(ns) / 1e9))
            } else if timeoutNs < 0 {
                while inbox.isEmpty { condition.wait() }
            } else {
                let until = Date(timeIntervalSinceNow: Double(timeoutNs) / 1e9)
                while inbox.isEmpty && condition.wait(until: until) {}
            }
        }
        let frames = inbox
        inbox = []
        condition.unlock()
        for f in frames { f.withUnsafeBytes(handler) }
        return frames.count
    }
}

// MARK: - Frame building and checking, written independently of NetStack

/// The Internet checksum, the slow and obvious way.
func naiveChecksum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var i = 0
    while i < bytes.count {
        let hi = UInt32(bytes[i])
        let lo = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
        sum += hi << 8 | lo
        i += 2
    }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    return ~UInt16(sum)
}

func be16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) << 8 | UInt16(b[o + 1]) }
func be32(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(be16(b, o)) << 16 | UInt32(be16(b, o + 2)) }
func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) {
    b[o] = UInt8(v >> 8)
    b[o + 1] = UInt8(v & 0xFF)
}

func pseudoHeader(_ src: IPv4Address, _ dst: IPv4Address, _ proto: UInt8, _ length: Int) -> [UInt8] {
    src.octets + dst.octets + [0, proto, UInt8(length >> 8), UInt8(length & 0xFF)]
}

func ethernet(_ dst: MACAddress, _ src: MACAddress, _ type: UInt16) -> [UInt8] {
    dst.octets + src.octets + [UInt8(type >> 8), UInt8(type & 0xFF)]
}

/// An IPv4 packet in an Ethernet frame, with a correct header checksum unless told otherwise.
func ipv4Frame(to dstMAC: MACAddress, from srcMAC: MACAddress, src: IPv4Address, dst: IPv4Address, proto: UInt8,
               payload: [UInt8], flagsAndOffset: UInt16 = 0, options: [UInt8] = [], padTo: Int = 60) -> [UInt8] {
    precondition(options.count % 4 == 0)
    let headerLength = 20 + options.count
    var ip: [UInt8] = [UInt8(0x40 | headerLength / 4), 0, 0, 0, 0x12, 0x34, 0, 0, 64, proto, 0, 0]
    put16(&ip, 2, UInt16(headerLength + payload.count))
    put16(&ip, 6, flagsAndOffset)
    ip += src.octets + dst.octets + options
    put16(&ip, 10, naiveChecksum(ip))
    var frame = ethernet(dstMAC, srcMAC, 0x0800) + ip + payload
    while frame.count < padTo { frame.append(0) }
    return frame
}

func udpDatagram(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, payload: [UInt8], checksum: Bool = true) -> [UInt8] {
    var udp: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0] + payload
    put16(&udp, 0, srcPort)
    put16(&udp, 2, dstPort)
    put16(&udp, 4, UInt16(udp.count))
    if checksum {
        var c = naiveChecksum(pseudoHeader(src, dst, 17, udp.count) + udp)
        if c == 0 { c = 0xFFFF }
        put16(&udp, 6, c)
    }
    return udp
}

func icmpEcho(type: UInt8, id: UInt16, seq: UInt16, payload: [UInt8]) -> [UInt8] {
    var m: [UInt8] = [type, 0, 0, 0, 0, 0, 0, 0] + payload
    put16(&m, 4, id)
    put16(&m, 6, seq)
    put16(&m, 2, naiveChecksum(m))
    return m
}

func arpFrame(to dstMAC: MACAddress, op: UInt16, senderMAC: MACAddress, senderIP: IPv4Address,
              targetMAC: MACAddress, targetIP: IPv4Address) -> [UInt8] {
    var a: [UInt8] = [0, 1, 0x08, 0x00, 6, 4, 0, UInt8(op)]
    a += senderMAC.octets + senderIP.octets + targetMAC.octets + targetIP.octets
    var frame = ethernet(dstMAC, senderMAC, 0x0806) + a
    while frame.count < 60 { frame.append(0) }
    return frame
}

// MARK: - Tests

/// The stack against a peer stack or hand-built frames. Serialized, as XCTest ran them: several
/// tests measure timeouts, which a machine busy with the other tests would stretch.
@Suite(.serialized) struct NetStackTests {
    let macA = MACAddress(value: 0x00_16_3E_00_00_0A)
    let macB = MACAddress(value: 0x00_16_3E_00_00_0B)
    let ipA = IPv4Address(10, 0, 0, 2)
    let ipB = IPv4Address(10, 0, 0, 3)
    let stranger = MACAddress(value: 0x02_00_00_00_00_99)

    /// Two stacks on one in-memory link; polling either lets the other run first.
    func makePair(_ configA: NetStackConfig? = nil, _ configB: NetStackConfig? = nil, mtu: Int = 1500)
        -> (a: NetStack, b: NetStack, linkA: MemoryLink, linkB: MemoryLink) {
        let (la, lb) = MemoryLink.pair(macA, macB, mtu: mtu)
        let a = NetStack(link: la, config: configA ?? NetStackConfig(address: ipA))
        let b = NetStack(link: lb, config: configB ?? NetStackConfig(address: ipB))
        la.pumpPeer = { [weak b] in _ = b?.poll(timeoutNs: 0) }
        lb.pumpPeer = { [weak a] in _ = a?.poll(timeoutNs: 0) }
        return (a, b, la, lb)
    }

    func assertAccounted(_ s: NetStack, sourceLocation: SourceLocation = #_sourceLocation) {
        let st = s.statistics
        #expect(st.framesIn == st.framesAccounted, "every received frame ends in one counter: \(st)", sourceLocation: sourceLocation)
    }

    static func isInvalidArgument(_ error: any Error) -> Bool {
        if case NetStackError.invalidArgument = error { return true }
        return false
    }

    // MARK: Configuration

    @Test func configParse() throws {
        #expect(try NetStackConfig.parse(ip: "10.0.0.2", gateway: nil) == NetStackConfig(address: IPv4Address(10, 0, 0, 2), prefixLength: 24, gateway: nil))
        #expect(try NetStackConfig.parse(ip: "192.168.7.9/16 10.1.1.1/8", gateway: " 192.168.0.1 ") == NetStackConfig(address: IPv4Address(192, 168, 7, 9), prefixLength: 16, gateway: IPv4Address(192, 168, 0, 1)))
        #expect(try NetStackConfig.parse(ip: "  10.0.0.2/32", gateway: "").gateway == nil)
        #expect(try NetStackConfig.parse(ip: "10.0.0.2/32", gateway: "").prefixLength == 32)
        let cases: [(String, String?, String)] = [
            ("", nil, "no address"),
            ("10.0.0", nil, "10.0.0"),
            ("10.0.0.2/33", nil, "10.0.0.2/33"),
            ("10.0.0.2/", nil, "10.0.0.2/"),
            ("10.0.0.256", nil, "10.0.0.256"),
            ("224.0.0.1", nil, "224.0.0.1"),
            ("0.0.0.0", nil, "0.0.0.0"),
            ("10.0.0.255/24", nil, "broadcast"),
            ("10.0.0.2", "gw", "gw"),
            ("10.0.0.2", "10.0.0.2", "10.0.0.2"),
        ]
        for (ip, gw, named) in cases {
            let error = #expect(throws: (any Error).self, "ip=\(ip) gateway=\(gw ?? "nil")") {
                try NetStackConfig.parse(ip: ip, gateway: gw)
            }
            guard let error else { continue }
            guard case NetStackError.badConfig(let text) = error else {
                Issue.record("\(error)")
                continue
            }
            #expect(text.contains(named), "\(text) should name \(named)")
        }
        #expect(NetStackConfig(address: ipA, prefixLength: 24).subnetBroadcast == IPv4Address(10, 0, 0, 255))
        #expect(NetStackConfig(address: ipA, prefixLength: 31).subnetBroadcast == nil)
    }

    // MARK: ARP

    @Test func arpResolutionAndCache() throws {
        let (a, b, linkA, _) = makePair()
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        #expect(a.statistics.arpRequestsOut == 1)
        #expect(b.statistics.arpRequestsIn == 1)
        #expect(b.statistics.arpRepliesOut == 1)
        #expect(a.statistics.arpRepliesIn == 1)
        // The request went to broadcast, was padded to 60, and asked for ipB.
        let request = linkA.sent[0]
        #expect(request.count == 60)
        #expect(Array(request[0..<6]) == MACAddress.broadcast.octets)
        #expect(be16(request, 12) == 0x0806)
        #expect(be16(request, 20) == 1)
        #expect(be32(request, 38) == ipB.value)
        // B learned A from the request addressed to it.
        #expect(b.cachedMAC(for: ipA) == macA)
        #expect(a.cachedMAC(for: ipB) == macB)
        // Cached: no further request.
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        #expect(try a.resolve(ipB, timeout: 0) == macB)
        #expect(a.statistics.arpRequestsOut == 1)
        // Broadcast addresses need no ARP.
        #expect(try a.resolve(IPv4Address(10, 0, 0, 255), timeout: 0) == .broadcast)
        #expect(try a.resolve(.broadcast, timeout: 0) == .broadcast)
        #expect(a.statistics.arpRequestsOut == 1)
        assertAccounted(a)
        assertAccounted(b)
    }

    @Test func arpAnswersOnlyItsOwnAddress() throws {
        let (_, b, linkA, linkB) = makePair()
        linkB.pumpPeer = nil
        let asker = IPv4Address(10, 0, 0, 77)
        linkB.inject([arpFrame(to: .broadcast, op: 1, senderMAC: stranger, senderIP: asker,
                               targetMAC: MACAddress(value: 0), targetIP: IPv4Address(10, 0, 0, 50))])
        b.poll(timeoutNs: 0)
        #expect(b.statistics.arpRequestsIn == 1)
        #expect(b.statistics.arpRepliesOut == 0)
        #expect(b.cachedMAC(for: asker) == nil, "a request for another host teaches nothing new")

        linkB.inject([arpFrame(to: .broadcast, op: 1, senderMAC: stranger, senderIP: asker,
                               targetMAC: MACAddress(value: 0), targetIP: ipB)])
        b.poll(timeoutNs: 0)
        #expect(b.statistics.arpRepliesOut == 1)
        #expect(b.cachedMAC(for: asker) == stranger)
        let reply = try #require(linkB.sent.last)
        #expect(reply.count == 60)
        #expect(Array(reply[0..<6]) == stranger.octets)
        #expect(be16(reply, 20) == 2)
        #expect(Array(reply[22..<28]) == macB.octets)
        #expect(be32(reply, 28) == ipB.value)
        #expect(Array(reply[32..<38]) == stranger.octets)
        #expect(be32(reply, 38) == asker.value)

        // An RFC 5227 probe (sender 0.0.0.0) for B's address is answered, and teaches nothing.
        let prober = MACAddress(value: 0x02_00_00_00_00_55)
        linkB.inject([arpFrame(to: .broadcast, op: 1, senderMAC: prober, senderIP: .any,
                               targetMAC: MACAddress(value: 0), targetIP: ipB)])
        b.poll(timeoutNs: 0)
        #expect(b.statistics.arpRepliesOut == 2)
        #expect(Array(try #require(linkB.sent.last)[0..<6]) == prober.octets)
        #expect(be32(try #require(linkB.sent.last), 38) == 0)

        // A later gratuitous ARP from the known host moves its entry.
        let moved = MACAddress(value: 0x02_00_00_00_00_98)
        linkB.inject([arpFrame(to: .broadcast, op: 1, senderMAC: moved, senderIP: asker,
                               targetMAC: MACAddress(value: 0), targetIP: asker)])
        b.poll(timeoutNs: 0)
        #expect(b.cachedMAC(for: asker) == moved)
        // Someone claiming B's own address is counted, not learned or answered.
        linkB.inject([arpFrame(to: .broadcast, op: 2, senderMAC: stranger, senderIP: ipB,
                               targetMAC: .broadcast, targetIP: ipB)])
        b.poll(timeoutNs: 0)
        #expect(b.statistics.arpAddressConflicts == 1)
        #expect(b.statistics.arpRepliesOut == 2)
        _ = linkA
        assertAccounted(b)
    }

    @Test func announceSendsGratuitousARP() throws {
        let (a, b, linkA, _) = makePair()
        a.announce()
        let g = try #require(linkA.sent.last)
        #expect(Array(g[0..<6]) == MACAddress.broadcast.octets)
        #expect(be16(g, 20) == 1)
        #expect(be32(g, 28) == ipA.value)
        #expect(be32(g, 38) == ipA.value)
        b.poll(timeoutNs: 0)
        #expect(b.statistics.arpRequestsIn == 1)
        #expect(b.statistics.arpRepliesOut == 0)
    }

    @Test func arpCacheEntriesExpire() throws {
        let (a, b, _, _) = makePair()
        a.arpCacheLifetime = 0.15
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        #expect(a.statistics.arpRequestsOut == 1)
        usleep(250_000)
        #expect(a.cachedMAC(for: ipB) == nil)
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        #expect(a.statistics.arpRequestsOut == 2, "an expired entry is resolved again")
        #expect(b.statistics.arpRepliesOut == 2)
    }

    @Test func arpEntriesNearExpiryAreRefreshedByUnicast() throws {
        let (a, b, linkA, _) = makePair()
        a.arpCacheLifetime = 1.2  // the last twelfth: 0.1 s
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        usleep(1_130_000)
        #expect(try a.resolve(ipB, timeout: 0) == macB, "still valid: used while refreshing")
        #expect(a.statistics.arpRequestsOut == 2)
        let probe = try #require(linkA.sent.last)
        #expect(Array(probe[0..<6]) == macB.octets, "the refresh is unicast to the cached MAC")
        #expect(be32(probe, 38) == ipB.value)
        a.poll(timeoutNs: 0)
        #expect(b.statistics.arpRepliesOut == 2)
        usleep(200_000)
        #expect(a.cachedMAC(for: ipB) == macB, "the answer renewed the entry")
    }

    @Test func arpEntriesAreRefreshedByTraffic() throws {
        let (a, b, _, _) = makePair()
        a.arpCacheLifetime = 0.3
        let server = try b.udpSocket(port: 7)
        let client = try a.udpSocket()
        #expect(try a.resolve(ipB, timeout: 1) == macB)
        // B keeps talking to A for longer than the lifetime; A's entry for B stays confirmed.
        for _ in 0..<6 {
            usleep(100_000)
            try server.send([1], to: ipA, port: client.port)
            #expect(try client.receive(timeout: 1) != nil)
        }
        #expect(a.cachedMAC(for: ipB) == macB)
        #expect(a.statistics.arpRequestsOut == 1)
    }

    @Test func arpTimeoutIsUnreachable() throws {
        let (a, b, linkA, _) = makePair()
        linkA.outboundFilter = { _ in false }  // nothing A sends arrives
        let start = Date()
        #expect(throws: NetStackError.unreachable(ipB)) { try a.resolve(ipB, timeout: 0.7) }
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.69)
        #expect(elapsed < 1.5)
        // Retried every 200 ms: at 0, 0.2, 0.4, 0.6.
        #expect(a.statistics.arpRequestsOut >= 3)
        #expect(a.statistics.arpRequestsOut <= 5)
        // A send to the silent host fails the same way.
        let s = try a.udpSocket()
        #expect(throws: NetStackError.unreachable(ipB)) { try s.send([1, 2, 3], to: ipB, port: 9, timeout: 0.3) }
        #expect(a.statistics.udpOut == 0)
        #expect(b.statistics.framesIn == 0)
    }

    // MARK: ICMP

    @Test func pingBetweenTwoStacks() throws {
        let (a, b, linkA, _) = makePair()
        let rtt = try a.ping(ipB, sequence: 1, timeout: 2)
        #expect(rtt > 0)
        #expect(rtt < 2)
        #expect(a.statistics.icmpEchoRequestsOut == 1)
        #expect(b.statistics.icmpEchoRequestsIn == 1)
        #expect(b.statistics.icmpEchoRepliesOut == 1)
        #expect(a.statistics.icmpEchoRepliesIn == 1)
        // The request on the wire: 14 + 20 + 8 + 56, checksums right.
        let req = try #require(linkA.sent.last)
        #expect(req.count == 98)
        #expect(naiveChecksum(Array(req[14..<34])) == 0)
        #expect(naiveChecksum(Array(req[34...])) == 0)
        #expect(req[34] == 8)
        #expect(be16(req, 40) == 1)
        // Sizes from empty to the MTU, and B's echo of each.
        for (i, size) in [0, 1, 17, 1000, 1472].enumerated() {
            #expect(try a.ping(ipB, sequence: UInt16(2 + i), payloadSize: size, timeout: 2) > 0)
        }
        #expect(throws: NetStackError.messageTooLong(size: 1473, max: 1472)) { try a.ping(ipB, sequence: 9, payloadSize: 1473, timeout: 1) }
        assertAccounted(a)
        assertAccounted(b)
    }

    @Test func pingTimesOutWithoutAMatchingReply() throws {
        let (a, b, _, linkB) = makePair()
        _ = try a.resolve(ipB, timeout: 1)
        // B's replies come back with the wrong sequence number.
        linkB.outboundFilter = { frame in
            if frame.count > 41, frame[23] == 1, frame[34] == 0 {
                frame[41] ^= 0x01
                frame[37] ^= 0x01  // keep the ICMP checksum right: same word position, opposite byte
                let fixed = naiveChecksum(Array(frame[34...]).enumerated().map { $0.offset == 2 || $0.offset == 3 ? 0 : $0.element })
                frame[36] = UInt8(fixed >> 8)
                frame[37] = UInt8(fixed & 0xFF)
            }
            return true
        }
        let error = #expect(throws: (any Error).self) { try a.ping(ipB, sequence: 5, timeout: 0.3) }
        if let error {
            if case NetStackError.timeout(let what) = error {
                #expect(what.contains("\(ipB)"), "\(what)")
            } else {
                Issue.record("\(error)")
            }
        }
        #expect(a.statistics.icmpEchoRepliesIn == 1, "the reply arrived but did not match")
        #expect(b.statistics.icmpEchoRepliesOut == 1)
    }

    @Test func echoToBroadcastIsIgnored() {
        let (_, b, _, linkB) = makePair()
        linkB.pumpPeer = nil
        let echo = icmpEcho(type: 8, id: 1, seq: 1, payload: [1, 2, 3])
        linkB.inject([ipv4Frame(to: .broadcast, from: stranger, src: IPv4Address(10, 0, 0, 9), dst: IPv4Address(10, 0, 0, 255), proto: 1, payload: echo)])
        b.poll(timeoutNs: 0)
        #expect(b.statistics.dropBroadcastEcho == 1)
        #expect(b.statistics.icmpEchoRepliesOut == 0)
        assertAccounted(b)
    }

    // MARK: UDP

    @Test func udpEchoBothDirections() throws {
        let (a, b, _, _) = makePair()
        let server = try b.udpSocket(port: 7)
        let client = try a.udpSocket()
        #expect((49152...65535).contains(client.port))
        #expect(server.port == 7)

        let message = Array("hello, dom0".utf8)
        try client.send(message, to: ipB, port: 7)
        let got = try #require(try server.receive(timeout: 1))
        #expect(got.data == message)
        #expect(got.from == ipA)
        #expect(got.port == client.port)
        try server.send(Array(got.data.reversed()), to: got.from, port: got.port)
        let back = try #require(try client.receive(timeout: 1))
        #expect(back.data == Array(message.reversed()))
        #expect(back.from == ipB)
        #expect(back.port == 7)

        // The other way round: B's ephemeral socket to A's fixed port; empty and large payloads.
        let aServer = try a.udpSocket(port: 5353)
        let bClient = try b.udpSocket()
        #expect(bClient.port != 7)
        for size in [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 1000, 1471, 1472] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ size) }
            try bClient.send(payload, to: ipA, port: 5353)
            let d = try #require(try aServer.receive(timeout: 1), "size \(size)")
            #expect(d.data == payload, "size \(size)")
            #expect(d.from == ipB)
            #expect(d.port == bClient.port)
        }
        #expect(try aServer.receive(timeout: 0.05) == nil)
        #expect(a.statistics.arpRequestsOut + b.statistics.arpRequestsOut == 1, "B learned A from A's request")
        #expect(b.statistics.udpIn == 1)
        #expect(a.statistics.udpIn == 14)
        assertAccounted(a)
        assertAccounted(b)
    }

    @Test func ephemeralPortsAreDistinct() throws {
        let (a, _, _, _) = makePair()
        var sockets: [UDPSocket] = []
        for _ in 0..<200 { sockets.append(try a.udpSocket()) }
        let ports = Set(sockets.map(\.port))
        #expect(ports.count == 200)
        #expect(ports.allSatisfy { $0 >= 49152 })
    }

    @Test func udpEchoWithThePeerOnItsOwnThread() throws {
        let (la, lb) = MemoryLink.pair(macA, macB)
        let a = NetStack(link: la, config: NetStackConfig(address: ipA))
        let b = NetStack(link: lb, config: NetStackConfig(address: ipB))
        let server = try b.udpSocket(port: 7)
        let done = DispatchSemaphore(value: 0)  // the echo server finished
        let thread = Thread {
            var served = 0
            while served < 100, let d = try? server.receive(timeout: 5) {
                try? server.send(d.data, to: d.from, port: d.port)
                served += 1
            }
            done.signal()
        }
        thread.start()
        let client = try a.udpSocket()
        for i in 0..<100 {
            let payload = [UInt8](repeating: UInt8(i), count: 100 + i)
            try client.send(payload, to: ipB, port: 7)
            let d = try #require(try client.receive(timeout: 5), "datagram \(i)")
            #expect(d.data == payload)
        }
        #expect(done.wait(timeout: .now() + 10) == .success, "the echo server finished")
        #expect(b.statistics.udpIn == 100)
        #expect(a.statistics.udpIn == 100)
    }

    @Test func portInUseAndClose() throws {
        let (a, _, _, _) = makePair()
        let s = try a.udpSocket(port: 7)
        #expect(throws: NetStackError.portInUse(7)) { try a.udpSocket(port: 7) }
        s.close()
        s.close()
        #expect(throws: NetStackError.closed) { try s.send([1], to: ipB, port: 7) }
        #expect(throws: NetStackError.closed) { try s.receive(timeout: 0) }
        let again = try a.udpSocket(port: 7)
        #expect(again.port == 7)
        // Dropping the last reference unbinds too.
        do { _ = try a.udpSocket(port: 8) }
        #expect(try a.udpSocket(port: 8).port == 8)
        let error = #expect(throws: (any Error).self) { try again.send([1], to: ipB, port: 0) }
        if let error, !Self.isInvalidArgument(error) { Issue.record("\(error)") }
    }

    @Test func aDroppedSocketNoLongerReceives() throws {
        let (a, b, _, _) = makePair()
        let c = try a.udpSocket()
        do {
            let s = try b.udpSocket(port: 8)
            try c.send([1], to: ipB, port: 8)
            b.poll(timeoutNs: 0)
            #expect(s.queuedDatagrams == 1)
        }
        try c.send([2], to: ipB, port: 8)
        b.poll(timeoutNs: 0)
        #expect(b.statistics.udpIn == 1)
        #expect(b.statistics.dropNoSocket == 1)
        assertAccounted(b)
    }

    @Test func messageTooLong() throws {
        let (a, b, linkA, _) = makePair(mtu: 1500)
        let s = try a.udpSocket()
        let r = try b.udpSocket(port: 9)
        #expect(a.maxUDPPayload == 1472)
        let error = #expect(throws: NetStackError.messageTooLong(size: 1473, max: 1472)) {
            try s.send([UInt8](repeating: 0, count: 1473), to: ipB, port: 9)
        }
        if let error { #expect("\(error)".contains("1472")) }
        #expect(linkA.sent.isEmpty, "nothing sent, not even ARP")
        try s.send([UInt8](repeating: 0xAB, count: 1472), to: ipB, port: 9)
        #expect(linkA.sent.last?.count == 1514)
        #expect(try r.receive(timeout: 1)?.data.count == 1472)

        let (c, _, _, _) = makePair(mtu: 576)
        #expect(throws: NetStackError.messageTooLong(size: 549, max: 548)) { try c.udpSocket().send([UInt8](repeating: 0, count: 549), to: ipB, port: 9) }
    }

    @Test func socketQueueIsBounded() throws {
        let (a, b, _, _) = makePair()
        let s = try a.udpSocket()
        let r = try b.udpSocket(port: 9)
        try a.batch {
            for i in 0..<(UDPSocket.queueLimit + 6) { try s.send([UInt8(truncatingIfNeeded: i)], to: ipB, port: 9) }
        }
        b.poll(timeoutNs: 0)
        #expect(r.queuedDatagrams == UDPSocket.queueLimit)
        #expect(b.statistics.udpIn == UInt64(UDPSocket.queueLimit))
        #expect(b.statistics.dropSocketQueueFull == 6)
        // The oldest are kept, in order.
        for i in 0..<UDPSocket.queueLimit {
            #expect(try r.receive(timeout: 0)?.data == [UInt8(truncatingIfNeeded: i)])
        }
        #expect(try r.receive(timeout: 0) == nil)
        assertAccounted(b)
    }

    @Test func unboundPortIsDroppedWithPortUnreachable() throws {
        let (a, b, _, linkB) = makePair()
        let s = try a.udpSocket()
        try s.send([1, 2, 3, 4], to: ipB, port: 4444)
        b.poll(timeoutNs: 0)
        #expect(b.statistics.dropNoSocket == 1)
        #expect(b.statistics.icmpUnreachableOut == 1)
        let icmp = try #require(linkB.sent.last)
        #expect(icmp[34] == 3)
        #expect(icmp[35] == 3)
        #expect(naiveChecksum(Array(icmp[34..<(14 + Int(be16(icmp, 16)))])) == 0)
        #expect(be16(icmp, 42 + 20 + 2) == 4444, "quotes the datagram's header")
        a.poll(timeoutNs: 0)
        #expect(a.statistics.icmpOtherIn == 1)
        assertAccounted(a)
        assertAccounted(b)
    }

    @Test func broadcastDatagramsAreDelivered() throws {
        let (a, b, linkA, _) = makePair()
        let r = try b.udpSocket(port: 67)
        let s = try a.udpSocket()
        try s.send([9], to: IPv4Address(10, 0, 0, 255), port: 67)
        try s.send([10], to: .broadcast, port: 67)
        #expect(try r.receive(timeout: 1)?.data == [9])
        #expect(try r.receive(timeout: 1)?.data == [10])
        #expect(a.statistics.arpRequestsOut == 0)
        #expect(Array(linkA.sent[0][0..<6]) == MACAddress.broadcast.octets)
        // To an unbound port: dropped, but no ICMP for a broadcast.
        try s.send([11], to: .broadcast, port: 68)
        b.poll(timeoutNs: 0)
        #expect(b.statistics.dropNoSocket == 1)
        #expect(b.statistics.icmpUnreachableOut == 0)
    }

    // MARK: Routing

    @Test func offLinkDestinationsGoThroughTheGateway() throws {
        let router = IPv4Address(10, 0, 0, 1)
        let far = IPv4Address(192, 168, 1, 5)
        let (a, r, linkA, _) = makePair(NetStackConfig(address: ipA, prefixLength: 24, gateway: router),
                                        NetStackConfig(address: router, prefixLength: 24))
        let s = try a.udpSocket()
        try s.send([1, 2, 3], to: far, port: 9)
        #expect(linkA.sent.count == 2)
        let arp = linkA.sent[0]
        #expect(be16(arp, 12) == 0x0806)
        #expect(be32(arp, 38) == router.value, "ARP asks for the gateway, not the destination")
        let udp = linkA.sent[1]
        #expect(Array(udp[0..<6]) == macB.octets, "the frame goes to the gateway's MAC")
        #expect(be32(udp, 30) == far.value, "the packet is still addressed to the destination")
        #expect(a.cachedMAC(for: router) == macB)
        #expect(a.cachedMAC(for: far) == nil)
        #expect(try a.resolve(far, timeout: 0) == macB)
        r.poll(timeoutNs: 0)
        #expect(r.statistics.dropNotForUs == 1, "the router stack does not forward")
        // On-link destinations do not use the gateway.
        #expect(try a.resolve(router, timeout: 1) == macB)
        #expect(a.statistics.arpRequestsOut == 1)
    }

    @Test func offLinkWithoutGatewayIsUnreachable() throws {
        let (a, _, linkA, _) = makePair()
        let far = IPv4Address(192, 168, 1, 5)
        let s = try a.udpSocket()
        let start = Date()
        #expect(throws: NetStackError.unreachable(far)) { try s.send([1], to: far, port: 9) }
        #expect(throws: NetStackError.unreachable(far)) { try a.ping(far, sequence: 1, timeout: 1) }
        #expect(throws: NetStackError.unreachable(far)) { try a.resolve(far, timeout: 1) }
        #expect(Date().timeIntervalSince(start) < 0.5, "fails at once, without ARP")
        #expect(linkA.sent.isEmpty)
        // Nor to itself, 0.0.0.0 or multicast.
        for bad in [ipA, IPv4Address.any, IPv4Address(224, 0, 0, 1)] {
            #expect(throws: NetStackError.unreachable(bad)) { try s.send([1], to: bad, port: 9) }
        }
    }

    // MARK: Checksums, fragments, padding, options

    @Test func checksumsOnTheWireAreRight() throws {
        let (a, b, linkA, _) = makePair()
        let s = try a.udpSocket(port: 1234)
        _ = try b.udpSocket(port: 9)
        var rng = SplitMix64(state: 7)
        for size in Array(0...80) + [255, 256, 1023, 1471, 1472] {
            let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try s.send(payload, to: ipB, port: 9)
            let f = try #require(linkA.sent.last)
            #expect(f.count == max(60, 42 + size))
            #expect(f[14] == 0x45)
            #expect(be16(f, 16) == UInt16(28 + size))
            #expect(f[22] == 64, "TTL")
            #expect(be16(f, 20) == 0x4000, "DF, no fragment offset")
            #expect(naiveChecksum(Array(f[14..<34])) == 0, "IP header checksum, size \(size)")
            let udp = Array(f[34..<(42 + size)])
            #expect(be16(udp, 6) != 0, "a checksum is always sent")
            #expect(naiveChecksum(pseudoHeader(ipA, ipB, 17, udp.count) + udp) == 0, "UDP checksum, size \(size)")
            #expect(f[(42 + size)...].allSatisfy { $0 == 0 }, "zero padding")
        }
        b.poll(timeoutNs: 0)
        #expect(b.statistics.dropBadChecksum == 0)
    }

    @Test func corruptedFramesAreDroppedAndCounted() throws {
        let (a, b, linkA, _) = makePair()
        let s = try a.udpSocket()
        let r = try b.udpSocket(port: 9)
        _ = try a.resolve(ipB, timeout: 1)
        var corrupt: Int?  // byte offset to flip in the next frame
        linkA.outboundFilter = { frame in
            if let o = corrupt { frame[o] ^= 0x40 }
            return true
        }
        corrupt = 50  // UDP payload
        try s.send(Array(repeating: 1, count: 20), to: ipB, port: 9)
        #expect(try r.receive(timeout: 0.05) == nil)
        #expect(b.statistics.dropBadChecksum == 1)
        corrupt = 26  // IP header: TTL/protocol word
        try s.send(Array(repeating: 1, count: 20), to: ipB, port: 9)
        #expect(try r.receive(timeout: 0.05) == nil)
        #expect(b.statistics.dropBadChecksum == 2)
        corrupt = 45  // ICMP payload of an echo request
        #expect(throws: (any Error).self) { try a.ping(ipB, sequence: 1, timeout: 0.1) }
        #expect(b.statistics.dropBadChecksum == 3)
        #expect(b.statistics.icmpEchoRepliesOut == 0)
        corrupt = nil
        try s.send(Array(repeating: 1, count: 20), to: ipB, port: 9)
        #expect(try r.receive(timeout: 1)?.data == Array(repeating: 1, count: 20))
        #expect(b.statistics.udpIn == 1)
        assertAccounted(b)
    }

    @Test func zeroUDPChecksumIsAcceptedAndPaddingIgnored() throws {
        let (_, b, _, linkB) = makePair()
        linkB.pumpPeer = nil
        let r = try b.udpSocket(port: 9)
        let src = IPv4Address(10, 0, 0, 9)
        let noChecksum = udpDatagram(src: src, dst: ipB, srcPort: 1000, dstPort: 9, payload: [1, 2], checksum: false)
        let withChecksum = udpDatagram(src: src, dst: ipB, srcPort: 1000, dstPort: 9, payload: [3, 4, 5])
        // Both are short: padded to 60 bytes, the padding is not payload.
        linkB.inject([ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: noChecksum),
                      ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: withChecksum, padTo: 200)])
        b.poll(timeoutNs: 0)
        #expect(try r.receive(timeout: 0)?.data == [1, 2])
        #expect(try r.receive(timeout: 0)?.data == [3, 4, 5])
        // A UDP length shorter than the IP payload: the rest is ignored (as Linux trims it).
        var short = udpDatagram(src: src, dst: ipB, srcPort: 1000, dstPort: 9, payload: [6, 7])
        short += [0xEE, 0xEE]
        linkB.inject([ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: short)])
        b.poll(timeoutNs: 0)
        #expect(try r.receive(timeout: 0)?.data == [6, 7])
        assertAccounted(b)
    }

    @Test func ipOptionsAreSkipped() throws {
        let (_, b, _, linkB) = makePair()
        linkB.pumpPeer = nil
        let r = try b.udpSocket(port: 9)
        let src = IPv4Address(10, 0, 0, 9)
        let udp = udpDatagram(src: src, dst: ipB, srcPort: 1000, dstPort: 9, payload: [42, 43])
        let options: [UInt8] = [1, 1, 1, 0, 0x94, 4, 0, 0]  // NOP NOP NOP EOL, Router Alert
        linkB.inject([ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: udp, options: options)])
        b.poll(timeoutNs: 0)
        #expect(try r.receive(timeout: 0)?.data == [42, 43])
        // Echo requests with options are answered with a plain 20-byte header.
        let echo = icmpEcho(type: 8, id: 3, seq: 4, payload: Array(0..<10))
        linkB.inject([ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 1, payload: echo, options: options)])
        b.poll(timeoutNs: 0)
        let reply = try #require(linkB.sent.last)
        #expect(reply[14] == 0x45)
        #expect(Array(reply[0..<6]) == stranger.octets)
        #expect(be32(reply, 30) == src.value)
        #expect(reply[34] == 0)
        #expect(Array(reply[38..<52]) == Array(echo[4...]))
        #expect(naiveChecksum(Array(reply[34..<52])) == 0)
    }

    @Test func fragmentsAreDropped() throws {
        let (_, b, _, linkB) = makePair()
        linkB.pumpPeer = nil
        let r = try b.udpSocket(port: 9)
        let src = IPv4Address(10, 0, 0, 9)
        let udp = udpDatagram(src: src, dst: ipB, srcPort: 1000, dstPort: 9, payload: [1, 2, 3])
        let frames = [
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: udp, flagsAndOffset: 0x2000),  // MF
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: udp, flagsAndOffset: 0x0010),  // offset
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: udp, flagsAndOffset: 0x6001),  // DF+MF+offset
        ]
        linkB.inject(frames)
        b.poll(timeoutNs: 0)
        #expect(b.statistics.dropFragment == 3)
        #expect(try r.receive(timeout: 0) == nil)
        // DF alone is not a fragment.
        linkB.inject([ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17, payload: udp, flagsAndOffset: 0x4000)])
        b.poll(timeoutNs: 0)
        #expect(try r.receive(timeout: 0)?.data == [1, 2, 3])
        assertAccounted(b)
    }

    @Test func hostileHeadersAreClassified() throws {
        let (_, b, _, linkB) = makePair()
        linkB.pumpPeer = nil
        _ = try b.udpSocket(port: 9)
        let src = IPv4Address(10, 0, 0, 9)
        let good = ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17,
                             payload: udpDatagram(src: src, dst: ipB, srcPort: 1, dstPort: 9, payload: [1]))
        func withIP(_ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var f = good
            edit(&f)
            put16(&f, 24, 0)
            put16(&f, 24, naiveChecksum(Array(f[14..<34])))
            return f
        }
        var expect = NetStackStatistics()
        func feed(_ frame: [UInt8], _ field: WritableKeyPath<NetStackStatistics, UInt64>, _ why: String) {
            linkB.inject([frame])
            b.poll(timeoutNs: 0)
            expect[keyPath: field] += 1
            #expect(b.statistics[keyPath: field] == expect[keyPath: field], "\(why)")
        }
        feed([], \.dropTruncated, "empty")
        feed(Array(good[0..<13]), \.dropTruncated, "half an Ethernet header")
        feed(Array(good[0..<30]), \.dropTruncated, "half an IP header")
        feed(withIP { $0[14] = 0x65 }, \.dropMalformed, "version 6")
        feed(withIP { $0[14] = 0x44 }, \.dropMalformed, "IHL 4")
        feed(withIP { $0[14] = 0x4F }, \.dropTruncated, "IHL 15: a 60-byte header in a 46-byte packet")
        feed(withIP { $0[14] = 0x4F; put16(&$0, 16, 100); $0 += [UInt8](repeating: 0, count: 60) }, \.dropBadChecksum,
             "IHL 15: the checksum covers all 60 header bytes")
        feed(withIP { put16(&$0, 16, 19) }, \.dropMalformed, "total length under the header")
        feed(withIP { put16(&$0, 16, 2000) }, \.dropTruncated, "total length past the frame")
        feed(withIP { $0[23] = 6 }, \.dropUnknownProtocol, "TCP")
        feed(withIP { $0[30] = 10; $0[33] = 99 }, \.dropNotForUs, "another host")
        feed(withIP { $0[26] = 224 }, \.dropMartian, "multicast source")
        feed(withIP { $0[26] = 127 }, \.dropMartian, "loopback source")
        feed(withIP { $0[29] = 3 }, \.dropMartian, "own address as source")
        var otherMAC = good
        otherMAC[5] = 0x77
        feed(otherMAC, \.dropNotForUs, "another MAC")
        var groupSource = good
        groupSource[6] = 0x01
        feed(groupSource, \.dropMartian, "multicast Ethernet source")
        var ipv6 = good
        put16(&ipv6, 12, 0x86DD)
        feed(ipv6, \.dropUnknownProtocol, "IPv6")
        // UDP lengths that lie (IP header left valid; UDP checksum off so the length is what fails).
        var udpShort = good
        put16(&udpShort, 40, 0)
        put16(&udpShort, 38, 7)
        feed(udpShort, \.dropMalformed, "UDP length 7")
        var udpLong = good
        put16(&udpLong, 40, 0)
        put16(&udpLong, 38, 100)
        feed(udpLong, \.dropTruncated, "UDP length past the IP payload")
        var badARP = arpFrame(to: .broadcast, op: 1, senderMAC: stranger, senderIP: src, targetMAC: MACAddress(value: 0), targetIP: ipB)
        badARP[19] = 16
        feed(badARP, \.dropMalformed, "ARP with a 16-byte hardware address")
        feed(Array(badARP[0..<30]), \.dropTruncated, "a cut ARP packet")
        var badOp = arpFrame(to: .broadcast, op: 1, senderMAC: stranger, senderIP: src, targetMAC: MACAddress(value: 0), targetIP: ipB)
        badOp[21] = 9
        feed(badOp, \.dropMalformed, "ARP operation 9")
        #expect(b.statistics.udpIn == 0)
        #expect(b.statistics.arpRepliesOut == 0)
        assertAccounted(b)
    }

    @Test func fuzzedFramesNeverCrashAndAreAllAccounted() throws {
        let (a, b, _, linkB) = makePair()
        let server = try b.udpSocket(port: 9)
        let src = IPv4Address(10, 0, 0, 9)
        let templates: [[UInt8]] = [
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17,
                      payload: udpDatagram(src: src, dst: ipB, srcPort: 1, dstPort: 9, payload: Array(0..<40))),
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 1,
                      payload: icmpEcho(type: 8, id: 1, seq: 2, payload: Array(0..<56))),
            ipv4Frame(to: macB, from: stranger, src: src, dst: IPv4Address(10, 0, 0, 255), proto: 17,
                      payload: udpDatagram(src: src, dst: IPv4Address(10, 0, 0, 255), srcPort: 1, dstPort: 9, payload: [1])),
            ipv4Frame(to: macB, from: stranger, src: src, dst: ipB, proto: 17,
                      payload: udpDatagram(src: src, dst: ipB, srcPort: 1, dstPort: 9, payload: Array(0..<8)), options: [1, 1, 1, 0]),
            arpFrame(to: .broadcast, op: 1, senderMAC: stranger, senderIP: src, targetMAC: MACAddress(value: 0), targetIP: ipB),
            arpFrame(to: macB, op: 2, senderMAC: stranger, senderIP: src, targetMAC: macB, targetIP: ipB),
        ]
        var rng = SplitMix64(state: 0x5EED)
        var frames: [[UInt8]] = []
        for i in 0..<30_000 {
            var f: [UInt8]
            if i % 4 == 0 {
                // Pure garbage, sometimes with a plausible Ethernet header.
                f = (0..<Int.random(in: 0...1600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if f.count >= 14 && Bool.random(using: &rng) {
                    f.replaceSubrange(0..<6, with: macB.octets)
                    f[6] = 0x02
                    f[12] = 0x08
                    f[13] = Bool.random(using: &rng) ? 0x00 : 0x06
                    if f.count > 14 && f[13] == 0 && Bool.random(using: &rng) { f[14] = 0x40 | (f[14] & 0x0F) }
                }
            } else {
                f = templates[Int.random(in: 0..<templates.count, using: &rng)]
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    switch Int.random(in: 0..<7, using: &rng) {
                    case 0 where !f.isEmpty:  // flip a byte
                        f[Int.random(in: 0..<f.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    case 1:  // cut short
                        f = Array(f[0..<Int.random(in: 0...f.count, using: &rng)])
                    case 2 where f.count >= 18:  // lie in the IP total length
                        put16(&f, 16, UInt16.random(in: 0...UInt16.max, using: &rng))
                    case 3 where f.count >= 15:  // any IHL
                        f[14] = 0x40 | UInt8.random(in: 0...15, using: &rng)
                    case 4 where f.count >= 40:  // lie in the UDP length
                        put16(&f, 38, UInt16.random(in: 0...UInt16.max, using: &rng))
                    case 5:  // trailing garbage
                        f += (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    case 6 where f.count >= 34:  // fix the IP header checksum after the damage, to reach deeper
                        put16(&f, 24, 0)
                        put16(&f, 24, naiveChecksum(Array(f[14..<34])))
                    default:
                        break
                    }
                }
            }
            frames.append(f)
        }
        for chunk in stride(from: 0, to: frames.count, by: 500) {
            linkB.inject(Array(frames[chunk..<min(chunk + 500, frames.count)]))
            b.poll(timeoutNs: 0)
            while (try server.receive(timeout: 0)) != nil {}
        }
        let st = b.statistics
        #expect(st.framesIn == UInt64(frames.count))
        #expect(st.framesIn == st.framesAccounted, "\(st)")
        #expect(st.inputDrops > 0)
        #expect(st.udpIn + st.icmpEchoRequestsIn + st.arpRequestsIn > 0, "some frames survive mutation")
        // The stack still works afterwards.
        #expect(try a.ping(ipB, sequence: 1, timeout: 2) > 0)
        let c = try a.udpSocket()
        try c.send([7, 7], to: ipB, port: 9)
        #expect(try server.receive(timeout: 1)?.data == [7, 7])
    }

    // MARK: The link

    @Test func aFullLinkIsRetriedThenTheFrameDropped() throws {
        let (a, b, linkA, _) = makePair()
        let s = try a.udpSocket()
        let r = try b.udpSocket(port: 9)
        _ = try a.resolve(ipB, timeout: 1)
        linkA.rejectTransmits = 3
        try s.send([1], to: ipB, port: 9)
        #expect(try r.receive(timeout: 1)?.data == [1])
        #expect(a.statistics.dropTransmitFull == 0)
        linkA.rejectTransmits = 1000
        try s.send([2], to: ipB, port: 9)
        #expect(a.statistics.dropTransmitFull == 1)
        #expect(a.statistics.udpOut == 1)
        #expect(try r.receive(timeout: 0.05) == nil)
    }

    @Test func batchFlushesOnce() throws {
        let (a, b, linkA, _) = makePair()
        let s = try a.udpSocket()
        let r = try b.udpSocket(port: 9)
        _ = try a.resolve(ipB, timeout: 1)
        let before = linkA.flushes
        try a.batch {
            for i in 0..<10 { try s.send([UInt8(i)], to: ipB, port: 9) }
        }
        #expect(linkA.flushes == before + 1)
        try s.send([10], to: ipB, port: 9)
        #expect(linkA.flushes == before + 2)
        for i in 0...10 { #expect(try r.receive(timeout: 1)?.data == [UInt8(i)]) }
    }
}

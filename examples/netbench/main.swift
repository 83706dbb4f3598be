// netbench: one of a pair of guests measuring the network path guest → netback → guest.
//
//   extra = "role=recv port=9000"                                   (the receiver)
//   extra = "role=send peer=10.0.0.12 port=9000 size=64 seconds=3"  (the sender)
//
// The sender resolves the receiver's MAC through the guest stack (ARP), then puts the same UDP
// datagram of `size` payload bytes on its tx ring as fast as the ring takes it for `seconds`,
// one notification per batch, and ends with a burst of stop datagrams. The receiver counts the
// datagrams for its port straight off its rx ring (no copy beyond netback's, no stack) from the
// first to the stop mark, prints
//   netbench: recv datagrams=N bytes=B seconds=T pps=X gbps=Y
// and waits for the next run. The sender prints what it put on the ring and powers off.
import DomainRuntime
import Glibc
import NetStack
import ProcvisorABI
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func say(_ line: String) {
    print("netbench: \(line)")
    fflush(stdout)
}
func fail(_ why: String) -> Never {
    say("FAILED: \(why)")
    domain.shutdown(.crash)
}
func number(_ key: String, _ fallback: Int) -> Int {
    guard let t = arg(key) else { return fallback }
    guard let v = Int(t), v >= 0 else { fail("\(key)=\(t) is not a number") }
    return v
}

let port = UInt16(truncatingIfNeeded: number("port", 9000))
let front: Netfront
let stack: NetStack
do {
    (front, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: 30)
} catch {
    fail("\(error)")
}

/// Offsets in an untagged Ethernet/IPv4 (IHL 5)/UDP frame.
enum Frame {
    static let ipStart = 14
    static let udpStart = 34
    static let payloadStart = 42
}

func ipChecksum(_ p: UnsafeRawPointer, _ n: Int) -> UInt16 {
    var sum: UInt32 = 0
    for i in stride(from: 0, to: n, by: 2) { sum += UInt32(p.load(fromByteOffset: i, as: UInt8.self)) << 8 | UInt32(p.load(fromByteOffset: i + 1, as: UInt8.self)) }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    return ~UInt16(sum)
}

if arg("role") == "send" {
    guard let peerText = arg("peer"), let peer = IPv4Address(peerText) else { fail("give peer=A.B.C.D") }
    let size = max(1, min(number("size", 64), front.mtu - 28))
    let seconds = Double(number("seconds", 3))
    let peerMAC: MACAddress
    do { peerMAC = try stack.resolve(peer, timeout: 30) } catch { fail("\(error)") }
    let length = max(60, Frame.payloadStart + size)
    let frame = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 16)
    memset(frame, 0, length)
    peerMAC.store(to: frame)
    front.mac.store(to: frame + 6)
    frame.storeBytes(of: UInt16(0x0800).bigEndian, toByteOffset: 12, as: UInt16.self)
    let ip = frame + Frame.ipStart
    ip.storeBytes(of: UInt8(0x45), as: UInt8.self)
    ip.storeBytes(of: UInt16(20 + 8 + size).bigEndian, toByteOffset: 2, as: UInt16.self)
    ip.storeBytes(of: UInt8(64), toByteOffset: 8, as: UInt8.self)
    ip.storeBytes(of: UInt8(17), toByteOffset: 9, as: UInt8.self)
    stack.config.address.store(to: ip + 12)
    peer.store(to: ip + 16)
    ip.storeBytes(of: ipChecksum(ip, 20).bigEndian, toByteOffset: 10, as: UInt16.self)
    let udp = frame + Frame.udpStart
    udp.storeBytes(of: UInt16(40000).bigEndian, as: UInt16.self)
    udp.storeBytes(of: port.bigEndian, toByteOffset: 2, as: UInt16.self)
    udp.storeBytes(of: UInt16(8 + size).bigEndian, toByteOffset: 4, as: UInt16.self)
    // UDP checksum 0: none (allowed over IPv4).
    let data = UnsafeRawBufferPointer(start: frame, count: length)
    var sent = 0
    let start = SystemTime.nanoseconds()
    let end = start + UInt64(seconds * 1e9)
    while SystemTime.nanoseconds() < end {
        for _ in 0..<64 {
            while !front.transmit(data) {
                front.flush()
                _ = front.poll(timeoutNs: 1_000_000) { _ in }
            }
            sent += 1
        }
        front.flush()
    }
    let elapsed = Double(SystemTime.nanoseconds() - start) / 1e9
    // The stop mark: payload byte 0 = 1, sent a few times in case some are dropped.
    (frame + Frame.payloadStart).storeBytes(of: UInt8(1), as: UInt8.self)
    for _ in 0..<16 {
        usleep(20_000)
        while !front.transmit(data) { _ = front.poll(timeoutNs: 1_000_000) { _ in } }
        front.flush()
    }
    say("send datagrams=\(sent) size=\(size) seconds=\(elapsed) pps=\(Int(Double(sent) / elapsed))")
    front.close(timeout: 5)
    domain.shutdown(.poweroff)
}

// Receiver: between runs the stack answers ARP and pings and a UDP socket waits for the first
// datagram; during a run datagrams are counted straight off the rx ring.
say("recv listening on \(stack.config.address):\(port)")
let socket: UDPSocket
do { socket = try stack.udpSocket(port: port) } catch { fail("\(error)") }
while !front.isClosed {
    guard let (data, _, _) = try? socket.receive(timeout: 1), data.first == 0 else { continue }
    var count = 1, bytes = data.count
    let first = SystemTime.nanoseconds()
    // The stack may have queued more of the run's datagrams than the first one: they count
    // (at most a socket queue's worth goes through the stack, then the ring is read directly).
    var drained = 0
    while drained < 1024, let (more, _, _) = try? socket.receive(timeout: 0) {
        drained += 1
        if more.first == 1 { break }
        count += 1
        bytes += more.count
    }
    var stopped = false
    var idle = 0
    while !stopped && idle < 50 && !front.isClosed {
        let n = front.poll(timeoutNs: 100_000_000) { f in
            guard f.count >= Frame.payloadStart + 1, f[12] == 0x08, f[13] == 0x00, f[23] == 17,
                  UInt16(f[36]) << 8 | UInt16(f[37]) == port else { return }
            if f[Frame.payloadStart] == 1 {
                stopped = true
                return
            }
            count += 1
            bytes += Int(UInt16(f[38]) << 8 | UInt16(f[39])) - 8
        }
        idle = n == 0 ? idle + 1 : 0
    }
    let seconds = Double(SystemTime.nanoseconds() - first) / 1e9
    // Late stop marks (and anything else queued) must not start a run of their own.
    usleep(400_000)
    while (try? socket.receive(timeout: 0)) != nil {}
    let pps = Double(count) / seconds, gbps = Double(bytes) * 8 / seconds / 1e9
    say("recv datagrams=\(count) bytes=\(bytes) seconds=\(seconds) pps=\(Int(pps)) gbps=\(gbps)")
}
domain.shutdown(.poweroff)

// udp-echo: a guest that answers UDP datagrams on port= with the same bytes (and ICMP echo,
// as every guest stack does), through its first vif. With `client=A.B.C.D` it is the client
// instead: it sends count= datagrams to that address and checks every answer, then powers off.
//
//   extra = "port=7"                                   (server, runs until destroyed)
//   extra = "client=10.0.0.2 port=7 count=10 size=64"  (client)
//
// Client options: `duration=S` sends datagram after datagram for S seconds instead of count=;
// `retry=MS` sends a datagram again when it is not answered within MS
// milliseconds (answers to earlier copies are counted as late, not mistaken for the next one);
// `gaps=MS` prints each pause of at least MS ms between two answers as `udp-echo: gap FROM TO`
// (monotonic nanoseconds), for a benchmark that kills the backend.
import DomainRuntime
import Glibc
import NetStack
import ProcvisorABI
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func say(_ line: String) {
    print("udp-echo: \(line)")
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

let port = UInt16(truncatingIfNeeded: number("port", 7))
let timeout = Double(number("timeout", 30))
let front: Netfront
let stack: NetStack
do {
    (front, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: timeout)
} catch {
    fail("\(error)")
}

if let serverText = arg("client") {
    guard let server = IPv4Address(serverText) else { fail("client=\(serverText) is not an IPv4 address") }
    let size = max(8, number("size", 64))
    // duration=S: as many datagrams as S seconds take (count= is then ignored).
    let duration = UInt64(number("duration", 0)) * 1_000_000_000
    let count = duration > 0 ? Int.max : number("count", 10)
    let retryNs = UInt64(number("retry", 0)) * 1_000_000
    let gapNs = UInt64(number("gaps", 0)) * 1_000_000
    do {
        let socket = try stack.udpSocket()
        var rng = SystemRandomNumberGenerator()
        var resent = 0, late = 0, longest: UInt64 = 0
        var last = SystemTime.nanoseconds()
        let started = last
        var sent = 0
        for i in 0..<count {
            if duration > 0, SystemTime.nanoseconds() - started >= duration { break }
            sent += 1
            // The first 8 bytes number the datagram: an answer to an earlier copy is told apart.
            var payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            withUnsafeBytes(of: UInt64(i).littleEndian) { payload.replaceSubrange(0..<8, with: $0) }
            try socket.send(payload, to: server, port: port, timeout: timeout)
            let deadline = SystemTime.nanoseconds() + UInt64((i == 0 ? timeout : 5) * 1e9)
            while true {
                let now = SystemTime.nanoseconds()
                guard now < deadline else {
                    fail("no answer to datagram \(i + 1) from \(server):\(port) (\(resent) sent again; netfront \(front.statistics), \(front.ringState); stack \(stack.statistics))")
                }
                let wait = retryNs > 0 ? min(retryNs, deadline - now) : deadline - now
                if let (data, from, fromPort) = try socket.receive(timeout: Double(wait) / 1e9) {
                    guard from == server, fromPort == port, data.count == size else {
                        fail("datagram \(i + 1): answer from \(from):\(fromPort) of \(data.count) bytes does not match")
                    }
                    let seq = data.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
                    if seq < UInt64(i) {
                        late += 1
                        continue
                    }
                    guard seq == UInt64(i), data == payload else { fail("datagram \(i + 1): the answer's bytes do not match") }
                    break
                }
                // retry=MS: not answered in time; UDP may lose a datagram (a backend restarting does).
                if retryNs > 0, SystemTime.nanoseconds() < deadline {
                    try socket.send(payload, to: server, port: port, timeout: timeout)
                    resent += 1
                }
            }
            let now = SystemTime.nanoseconds()
            if gapNs > 0, now - last >= gapNs { say("gap \(last) \(now)") }
            if i > 0 { longest = max(longest, now - last) }
            last = now
        }
        var summary = "OK \(sent) datagrams of \(size) bytes echoed by \(server):\(port)"
        if retryNs > 0 || late > 0 {
            summary += " (\(resent) sent again, \(late) late answers, longest wait \(longest / 1_000_000) ms)"
        }
        say(summary)
        front.close(timeout: 5)
        domain.shutdown(.poweroff)
    } catch {
        fail("\(error)")
    }
}

do {
    let socket = try stack.udpSocket(port: port)
    say("listening on \(stack.config.address):\(port)")
    var answered = 0
    while true {
        guard let (data, from, fromPort) = try socket.receive(timeout: 1) else {
            if front.isClosed { say("vif closed by the backend after \(answered) datagrams"); break }
            continue
        }
        try socket.send(data, to: from, port: fromPort, timeout: 3)
        answered += 1
    }
    domain.shutdown(.poweroff)
} catch {
    fail("\(error)")
}

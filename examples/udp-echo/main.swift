// udp-echo: a guest that answers UDP datagrams on port= with the same bytes (and ICMP echo,
// as every guest stack does), through its first vif. With `client=A.B.C.D` it is the client
// instead: it sends count= datagrams to that address and checks every answer, then powers off.
//
//   extra = "port=7"                                   (server, runs until destroyed)
//   extra = "client=10.0.0.2 port=7 count=10 size=64"  (client)
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
    let count = number("count", 10), size = number("size", 64)
    do {
        let socket = try stack.udpSocket()
        var rng = SystemRandomNumberGenerator()
        for i in 0..<count {
            let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try socket.send(payload, to: server, port: port, timeout: timeout)
            guard let (data, from, fromPort) = try socket.receive(timeout: i == 0 ? timeout : 5) else {
                fail("no answer to datagram \(i + 1) from \(server):\(port)")
            }
            guard from == server, fromPort == port, data == payload else {
                fail("datagram \(i + 1): answer from \(from):\(fromPort) of \(data.count) bytes does not match")
            }
        }
        say("OK \(count) datagrams of \(size) bytes echoed by \(server):\(port)")
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

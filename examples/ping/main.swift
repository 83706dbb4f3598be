// ping: a guest that pings an address through its first vif (netfront and the guest network
// stack), prints a line per reply as ping(8) does and the summary, then powers off.
//
//   extra = "target=10.0.0.2 count=5 interval=1 size=56 timeout=30"
//
// `timeout` bounds the wait for the backend at connect and for the first ARP answer. Exits
// (poweroff) when at least one reply came back, crashes otherwise.
import DomainRuntime
import Glibc
import NetStack
import ProcvisorABI
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func say(_ line: String) {
    print(line)
    fflush(stdout)
}
func fail(_ why: String) -> Never {
    say("ping: \(why)")
    domain.shutdown(.crash)
}
func number(_ key: String, _ fallback: Double) -> Double {
    guard let t = arg(key) else { return fallback }
    guard let v = Double(t), v >= 0 else { fail("\(key)=\(t) is not a number") }
    return v
}

guard let targetText = arg("target"), let target = IPv4Address(targetText) else { fail("give target=A.B.C.D") }
let count = Int(number("count", 5))
let interval = number("interval", 1)
let size = Int(number("size", 56))
let timeout = number("timeout", 30)

/// Milliseconds with three decimals, as ping(8) prints them.
func ms(_ v: Double) -> String {
    let thousandths = Int((v * 1000).rounded())
    let frac = String(thousandths % 1000)
    return "\(thousandths / 1000)." + String(repeating: "0", count: 3 - frac.count) + frac
}

let front: Netfront
let stack: NetStack
do {
    (front, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: timeout)
} catch {
    fail("\(error)")
}
say("PING \(target) (\(target)) \(size)(\(size + 28)) bytes of data.")
var received = 0
var rtts: [Double] = []
for seq in 1...max(1, count) {
    do {
        // The first echo may wait for ARP as well.
        let rtt = try stack.ping(target, sequence: UInt16(truncatingIfNeeded: seq), payloadSize: size, timeout: seq == 1 ? timeout : max(1, interval * 2))
        received += 1
        rtts.append(rtt * 1000)
        say("\(size + 8) bytes from \(target): icmp_seq=\(seq) ttl=64 time=\(ms(rtt * 1000)) ms")
    } catch {
        say("From \(stack.config.address) icmp_seq=\(seq): \(error)")
    }
    if seq < count { usleep(UInt32(interval * 1e6)) }
}
say("--- \(target) ping statistics ---")
say("\(count) packets transmitted, \(received) received, \(Int((1 - Double(received) / Double(max(1, count))) * 100))% packet loss")
if !rtts.isEmpty {
    let avg = rtts.reduce(0, +) / Double(rtts.count)
    say("rtt min/avg/max = \(ms(rtts.min()!))/\(ms(avg))/\(ms(rtts.max()!)) ms")
}
front.close(timeout: 5)
if received == 0 { domain.shutdown(.crash) }
domain.shutdown(.poweroff)

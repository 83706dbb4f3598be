// kvclient: drives a kvstore server (examples/kvstore; its wire protocol is described there)
// through its first vif and checks that every acknowledged write can be read back.
//
//   extra = "server=10.0.0.20 port=7000 count=200"      200 PUTs, then the check
//   extra = "server=10.0.0.20 port=7000 duration=30"    PUTs for 30 seconds, then the check
//   extra = "server=10.0.0.20 port=7000 mode=malformed" malformed requests: each must get ERR
//
// Writer mode (the default): PUTs of increasing keys (`key-<n>`, n modulo keys=, default 2000,
// so a long run overwrites earlier keys) with values of size= bytes (default 64) that name the
// request, one request in flight at a time. A request without an answer after retry= ms
// (default 20) is sent again, the same seq, key and value; an answer to an older seq is ignored.
// Every getevery= PUTs (default 4) it GETs an earlier acknowledged key. Every PUT answered OK is
// remembered (the last acknowledged value per key); at the end every remembered key is read back.
// Prints exactly one summary line:
//
//   kvclient: puts=N acked=N lost=N wrong=N longest_gap_ms=X.X
//
// lost: acknowledged keys that read back NONE; wrong: keys that read back another value (both
// during the run and at the end, each key counted once); longest_gap_ms: the longest time between
// two consecutive answers of any kind (a save/restore of the server shows up here). Then it powers
// off; it crashes (with the reason on its console) when the server does not answer a request
// for giveup= seconds (default 30) or answers a PUT with ERR.
//
// Malformed mode: sends requests the server must refuse, checks each answer is `ERR <seq>` with
// the request's seq (0 when it has none), then checks the server still stores and reads a key,
// and prints `kvclient: malformed=N err=N then PUT/GET ok`.
import DomainRuntime
import Glibc
import NetStack
import ProcvisorABI
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func say(_ line: String) {
    print("kvclient: \(line)")
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
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

guard let serverText = arg("server") else { fail("no server= (the kvstore's address)") }
guard let server = IPv4Address(serverText) else { fail("server=\(serverText) is not an IPv4 address") }
let port = UInt16(truncatingIfNeeded: number("port", 7000))
let retry = Double(max(1, number("retry", 20))) / 1000
let giveUp = Double(number("giveup", 30))
let timeout = Double(number("timeout", 30))

let front: Netfront
let stack: NetStack
let socket: UDPSocket
do {
    (front, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: timeout)
    socket = try stack.udpSocket()
} catch {
    fail("\(error)")
}

/// A parsed answer: its kind (OK, VAL, NONE, ERR), seq, and the rest (the value, or the reason).
struct Answer {
    var kind: String
    var seq: UInt64
    var rest: [UInt8]
    var text: String { String(decoding: rest, as: UTF8.self) }
}

func parse(_ data: [UInt8]) -> Answer? {
    guard data.last == UInt8(ascii: "\n") else { return nil }
    let line = data.dropLast()
    let space = UInt8(ascii: " ")
    guard let kindEnd = line.firstIndex(of: space) else { return nil }
    let afterKind = line[(kindEnd + 1)...]
    let seqEnd = afterKind.firstIndex(of: space) ?? afterKind.endIndex
    guard let seq = UInt64(String(decoding: afterKind[afterKind.startIndex..<seqEnd], as: UTF8.self)) else { return nil }
    let rest = seqEnd < afterKind.endIndex ? Array(afterKind[(seqEnd + 1)...]) : []
    return Answer(kind: String(decoding: line[line.startIndex..<kindEnd], as: UTF8.self), seq: seq, rest: rest)
}

var lastAnswer: Double?
var longestGap = 0.0
var resends = 0
var staleAnswers = 0

/// Sends `request` (seq `seq`) until its answer comes, re-sending it every `retry` seconds.
func exchange(_ request: [UInt8], seq: UInt64, what: String) -> Answer {
    let start = now()
    var sentAt = start
    func send() {
        do {
            try socket.send(request, to: server, port: port, timeout: max(retry, 0.5))
        } catch {
            // Nothing answers ARP while the server is away: try again at the next retry.
            if now() - start > giveUp { fail("\(what): cannot send to \(server):\(port) for \(Int(giveUp)) s: \(error)") }
        }
        sentAt = now()
    }
    send()
    while true {
        let wait = max(0, sentAt + retry - now())
        let got: (data: [UInt8], from: IPv4Address, port: UInt16)?
        do {
            got = try socket.receive(timeout: wait)
        } catch {
            fail("\(what): \(error)")
        }
        if let got, got.from == server, got.port == port, let a = parse(got.data) {
            let t = now()
            if let last = lastAnswer { longestGap = max(longestGap, t - last) }
            lastAnswer = t
            if a.seq == seq { return a }
            staleAnswers += 1  // the answer to a request sent again after it had been answered
            continue
        }
        if now() - start > giveUp { fail("\(what): no answer from \(server):\(port) for \(Int(giveUp)) s (\(resends) resends)") }
        if now() >= sentAt + retry {
            resends += 1
            send()
        }
    }
}

/// `v` with one decimal.
func oneDecimal(_ v: Double) -> String {
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

var nextSeq: UInt64 = 1
func takeSeq() -> UInt64 {
    defer { nextSeq += 1 }
    return nextSeq
}

// MARK: malformed mode

if arg("mode") == "malformed" {
    // (request, the seq its ERR must carry)
    let bad: [([UInt8], UInt64)] = [
        (Array("HELLO".utf8), 0),
        (Array("HELLO 77 x".utf8), 77),
        ([], 0),
        (Array("PUT".utf8), 0),
        (Array("PUT abc key value".utf8), 0),
        (Array("GET 99999999999999999999999 key".utf8), 0),
        (Array("PUT 901 \(String(repeating: "k", count: 65)) value".utf8), 901),
        (Array("PUT 902 key ".utf8) + [UInt8](repeating: UInt8(ascii: "v"), count: 1025), 902),
        (Array("GET 903".utf8), 903),
        (Array("GET 904 a b".utf8), 904),
        (Array("PUT 905 key".utf8), 905),
        (Array("PUT 906 ke".utf8) + [0x01] + Array("y value".utf8), 906),
        ([0xFF, 0x00, 0xFE, 0x20, 0x31], 1),  // an unknown command: its seq (1) is still readable
        (Array("get 907 key".utf8), 907),
    ]
    var errs = 0
    for (i, (request, seq)) in bad.enumerated() {
        let a = exchange(request, seq: seq, what: "malformed request \(i + 1)")
        guard a.kind == "ERR" else { fail("malformed request \(i + 1) (\(request.prefix(40))) got \(a.kind) \(a.seq) \(a.text)") }
        say("request \(i + 1): ERR \(a.seq) \(a.text)")
        errs += 1
    }
    // The server still serves.
    let value = "still serving after \(bad.count) malformed requests"
    let put = exchange(Array("PUT 1000 malformed-check \(value)".utf8), seq: 1000, what: "PUT after the malformed requests")
    guard put.kind == "OK" else { fail("PUT after the malformed requests got \(put.kind) \(put.text)") }
    let get = exchange(Array("GET 1001 malformed-check".utf8), seq: 1001, what: "GET after the malformed requests")
    guard get.kind == "VAL", get.text == value else { fail("GET after the malformed requests got \(get.kind) \(get.text)") }
    say("malformed=\(bad.count) err=\(errs) then PUT/GET ok")
    front.close(timeout: 5)
    domain.shutdown(.poweroff)
}

// MARK: writer mode

let count = arg("count").map { _ in number("count", 0) }
let duration = arg("duration").map { _ in Double(number("duration", 0)) }
guard count != nil || duration != nil else { fail("give count= (PUTs) or duration= (seconds)") }
let keys = max(1, number("keys", 2000))
let size = number("size", 64)
guard size <= 1024 else { fail("size=\(size): kvstore values are at most 1024 bytes") }
let getEvery = number("getevery", 4)

func key(_ n: Int) -> String { "key-\(n % keys)" }
/// A value naming its request, padded to `size` bytes.
func value(seq: UInt64, key: String) -> [UInt8] {
    let head = Array("v\(seq)-\(key)-".utf8)
    if head.count >= size { return Array(head.prefix(size)) }
    return head + (0..<(size - head.count)).map { UInt8(ascii: "a") + UInt8(($0 + Int(seq)) % 26) }
}

var acked: [String: [UInt8]] = [:]  // the last acknowledged value of each key
var ackedOrder: [String] = []  // keys in the order first acknowledged
var lostKeys = Set<String>(), wrongKeys = Set<String>()
var puts = 0, ackedPuts = 0, gets = 0

/// Reads `k` back and compares it with its last acknowledged value.
func check(_ k: String) {
    let seq = takeSeq()
    let a = exchange(Array("GET \(seq) \(k)".utf8), seq: seq, what: "GET \(k)")
    gets += 1
    switch a.kind {
    case "NONE": lostKeys.insert(k)
    case "VAL": if a.rest != acked[k] { wrongKeys.insert(k) }
    default: fail("GET \(k) (seq \(seq)) got \(a.kind) \(a.text)")
    }
}

say("writing to \(server):\(port): " + (count.map { "\($0) PUTs" } ?? "for \(Int(duration!)) s") + ", \(keys) keys, \(size)-byte values")
let started = now()
var rng = SystemRandomNumberGenerator()
while true {
    if let count, puts >= count { break }
    if let duration, now() - started >= duration { break }
    let k = key(puts)
    let seq = takeSeq()
    let v = value(seq: seq, key: k)
    puts += 1
    let a = exchange(Array("PUT \(seq) \(k) ".utf8) + v, seq: seq, what: "PUT \(k)")
    guard a.kind == "OK" else { fail("PUT \(k) (seq \(seq)) got \(a.kind) \(a.text)") }
    ackedPuts += 1
    if acked.updateValue(v, forKey: k) == nil { ackedOrder.append(k) }
    if getEvery > 0 && puts % getEvery == 0 { check(ackedOrder[Int.random(in: 0..<ackedOrder.count, using: &rng)]) }
}
for k in ackedOrder { check(k) }
say("resends=\(resends) stale_answers=\(staleAnswers) gets=\(gets) keys=\(ackedOrder.count) seconds=\(oneDecimal(now() - started))")
say("puts=\(puts) acked=\(ackedPuts) lost=\(lostKeys.count) wrong=\(wrongKeys.count) longest_gap_ms=\(oneDecimal(longestGap * 1000))")
front.close(timeout: 5)
domain.shutdown(.poweroff)

// kvstore: a UDP key-value server whose table lives in pseudo-physical RAM (DomainRuntime's
// RAMHeap), so a restored domain (a new process started from `main`, its RAM as it was) goes on
// serving the same table. It serves on its first vif until destroyed.
//
//   extra = "port=7000 slots=4096"      (slots: table size, used only when the table is new)
//   extra = "port=7000 dirty=10"        (also writes 10 pages a millisecond above the heap)
//
// Wire protocol: one request per UDP datagram, one answer per request, sent back to the
// sender's address and port. Fields are separated by one space; a request may end with one
// "\n" (or "\r\n"), which is not part of it; every answer ends with exactly one "\n".
//
//   PUT <seq> <key> <value>   →  OK <seq>              (answered once the value is in the RAM table)
//   GET <seq> <key>           →  VAL <seq> <value>     or  NONE <seq>
//   anything else             →  ERR <seq> <reason>    (seq 0 when the request has none readable)
//
// <seq> is a decimal number (0 ..< 2^64) the client chooses and the answer repeats; a client
// re-sending a request after a timeout sends the same seq (a repeated PUT stores the same value
// again). <key> is 1 to 64 bytes of printable ASCII without spaces (0x21 ... 0x7E). <value> is
// the rest of the datagram after the space that follows the key: 0 to 1024 bytes, any bytes.
// Malformed requests (unknown command, missing or bad fields, a key or value too long, a new
// key when the table is at 3/4 of its slots) get an ERR and the server carries on.
//
// On start it prints one of
//   kvstore: serving 10.0.0.20:7000, new table
//   kvstore: serving 10.0.0.20:7000, table restored with N entries
//
// The table: `slots` fixed-size slots (state, key length, value length, key hash, 64 key
// bytes, 1024 value bytes: 1104 bytes) with open addressing (linear probing; no deletes, so no
// tombstones), a header root with the slot count and the number of entries, and a one-entry
// journal. A PUT writes the finished slot into the journal, marks the journal valid, copies it
// into the table, sets the entry count, then marks the journal empty, with a full fence between
// those steps; whenever the RAM is captured (a save can happen at any instant), the table plus the
// journal hold either the PUT or nothing of it, and a restored server finishes a valid journal
// entry before serving. An OK is sent only after all of that.
import DomainRuntime
import Glibc
import NetStack
import ProcvisorABI
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func say(_ line: String) {
    print("kvstore: \(line)")
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

// MARK: main

let port = UInt16(truncatingIfNeeded: number("port", 7000))
let newSlots = number("slots", 4096)
let timeout = Double(number("timeout", 30))

let table: Table
let restored: Bool
do {
    let heap = try domain.memory.heap
    restored = heap.hasRoot(named: "kvstore.table")
    table = try Table(heap: heap, newSlots: newSlots)
    say("heap of \(heap.pages) pages at pfn 0 (\(heap.restored ? "found in RAM" : "new")), table of \(table.slotCount) slots"
        + " of \(Slot.size) bytes, at most \(table.capacity) entries")
    if let s = table.replayedSlot { say("finished the PUT into slot \(s) that the saved domain was in the middle of") }
} catch {
    fail("\(error)")
}

// dirty=N: a vCPU writes N pages a millisecond in the RAM above the heap, as a busy service
// would (what a live migration has to keep up with).
if let rate = arg("dirty").flatMap(Int.init), rate > 0 {
    let mem = domain.memory
    let first = (try? domain.memory.heap.pages) ?? 0
    let count = Int(mem.bootPages) - first
    if count > 0 {
        domain.startVCPU(1) { _ in
            var i = 0
            while true {
                let t0 = SystemTime.nanoseconds()
                for _ in 0..<rate {
                    (mem.base + (first + i) * 4096).storeBytes(of: t0, as: UInt64.self)
                    i = (i + 7919) % count
                }
                while SystemTime.nanoseconds() - t0 < 1_000_000 { usleep(100) }
            }
        }
        say("dirtying \(rate) pages/ms of \(count) pages above the heap")
    }
}

let front: Netfront
let stack: NetStack
do {
    (front, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: timeout)
} catch {
    fail("\(error)")
}

do {
    let socket = try stack.udpSocket(port: port)
    say("serving \(stack.config.address):\(port), " + (restored ? "table restored with \(table.count) entries" : "new table"))
    var unsent = 0
    while true {
        guard let (data, from, fromPort) = try socket.receive(timeout: 1) else {
            if front.isClosed {
                say("vif closed by the backend; \(table.count) entries in the table")
                break
            }
            continue
        }
        let reply = answer(to: data, table: table)
        do {
            try socket.send(reply, to: from, port: fromPort, timeout: 1)
        } catch {
            // A client that went away (no ARP answer) loses its answer; the server carries on.
            unsent += 1
            if unsent.nonzeroBitCount == 1 { say("could not answer \(from):\(fromPort) (\(unsent) answers unsent so far): \(error)") }
        }
    }
    domain.shutdown(.poweroff)
} catch {
    fail("\(error)")
}

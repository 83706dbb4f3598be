import DomainRuntime
@testable import kvstore
import Testing

/// Page-aligned zeroed memory standing in for a domain's RAM; `copy()` is what a restore gives
/// the new process (the same bytes, at another address).
final class Region {
    let base: UnsafeMutableRawPointer
    let pages: Int
    init(pages: Int) {
        self.pages = pages
        base = .allocate(byteCount: pages * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096)
    }
    func copy() -> Region {
        let r = Region(pages: pages)
        r.base.copyMemory(from: base, byteCount: pages * 4096)
        return r
    }
    deinit { base.deallocate() }
}

func ask(_ table: Table, _ request: String) -> String {
    String(decoding: answer(to: Array(request.utf8), table: table), as: UTF8.self)
}

func ask(_ table: Table, _ request: [UInt8]) -> [UInt8] { answer(to: request, table: table) }

/// kvstore's wire protocol, request by request.
@Suite struct KVProtocolTests {
    /// Runs `body` on a 64-slot table in a region that lives as long as the call.
    func withTable(_ body: (Table) throws -> Void) throws {
        let r = Region(pages: 64)
        try withExtendedLifetime(r) { try body(try Table(heap: try RAMHeap(base: r.base, pages: 64), newSlots: 64)) }
    }

    @Test func putThenGetAndNone() throws {
        try withTable { t in
        #expect(ask(t, "GET 1 colour") == "NONE 1\n")
        #expect(ask(t, "PUT 2 colour blue") == "OK 2\n")
        #expect(ask(t, "GET 3 colour") == "VAL 3 blue\n")
        #expect(ask(t, "PUT 4 colour dark green\n") == "OK 4\n", "a value runs to the end; one trailing newline is dropped")
        #expect(ask(t, "GET 5 colour\r\n") == "VAL 5 dark green\n")
        #expect(ask(t, "PUT 6 empty ") == "OK 6\n")
        #expect(ask(t, "GET 7 empty") == "VAL 7 \n")
        #expect(ask(t, "PUT 18446744073709551615 max x") == "OK 18446744073709551615\n")
        let binary: [UInt8] = Array("PUT 8 bin ".utf8) + [0, 0xFF, 0x20, 0x0A, 7]
        #expect(ask(t, binary) == Array("OK 8\n".utf8))
        #expect(ask(t, Array("GET 9 bin".utf8)) == Array("VAL 9 ".utf8) + [0, 0xFF, 0x20, 0x0A, 7, 0x0A])
        let big = String(repeating: "v", count: 1024), key = String(repeating: "k", count: 64)
        #expect(ask(t, "PUT 10 \(key) \(big)") == "OK 10\n")
        #expect(ask(t, "GET 11 \(key)") == "VAL 11 \(big)\n")
        #expect(t.count == 5)
        }
    }

    @Test(arguments: [
        ("", "ERR 0 empty request\n"),
        ("\n", "ERR 0 empty request\n"),
        ("HELLO", "ERR 0 unknown command HELLO (PUT or GET)\n"),
        ("HELLO 12 x", "ERR 12 unknown command HELLO (PUT or GET)\n"),
        ("get 13 x", "ERR 13 unknown command get (PUT or GET)\n"),
        ("PUT", "ERR 0 missing sequence number\n"),
        ("PUT  k v", "ERR 0 bad sequence number (decimal, below 2^64)\n"),
        ("PUT -1 k v", "ERR 0 bad sequence number (decimal, below 2^64)\n"),
        ("PUT 18446744073709551616 k v", "ERR 0 bad sequence number (decimal, below 2^64)\n"),
        ("GET 14", "ERR 14 missing key\n"),
        ("GET 15 ", "ERR 15 missing key\n"),
        ("PUT 16  v", "ERR 16 empty key\n"),
        ("GET 17 a b", "ERR 17 GET takes a key and nothing after it\n"),
        ("PUT 18 k", "ERR 18 PUT without a value (PUT <seq> <key> <value>)\n"),
        ("PUT 19 \(String(repeating: "k", count: 65)) v", "ERR 19 key of 65 bytes (at most 64)\n"),
        ("PUT 20 k \(String(repeating: "v", count: 1025))", "ERR 20 value of 1025 bytes (at most 1024)\n"),
        ("PUT 21 k\u{7F} v", "ERR 21 key with a byte outside printable ASCII\n"),
        ("PUT 22 clé v", "ERR 22 key with a byte outside printable ASCII\n"),
    ])
    func malformedRequestsGetErr(request: String, expected: String) throws {
        try withTable { t in
            #expect(ask(t, request) == expected)
            #expect(t.count == 0, "nothing was stored")
            #expect(ask(t, "PUT 1 k v") == "OK 1\n", "the table serves on")
        }
    }

    @Test func aFullTableRefusesNewKeysButTakesOverwrites() throws {
        let r = Region(pages: 16)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let t = try Table(heap: try RAMHeap(base: r.base, pages: 16), newSlots: 16)
        #expect(t.capacity == 12)
        for i in 0..<12 { #expect(ask(t, "PUT \(i) key\(i) value\(i)") == "OK \(i)\n") }
        #expect(ask(t, "PUT 100 another x") == "ERR 100 table full (12 entries, the most it takes for 16 slots)\n")
        #expect(ask(t, "PUT 101 key3 changed") == "OK 101\n")
        for i in 0..<12 { #expect(ask(t, "GET \(200 + i) key\(i)") == "VAL \(200 + i) \(i == 3 ? "changed" : "value\(i)")\n") }
        #expect(ask(t, "GET 300 another") == "NONE 300\n")
    }
}

/// The table after a restore: the same bytes at another address, and a save taken in the
/// middle of a PUT.
@Suite struct KVTableTests {
    @Test func aRestoredTableHasEveryEntry() throws {
        let r = Region(pages: 128)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let heap = try RAMHeap(base: r.base, pages: 128)
        #expect(!heap.hasRoot(named: "kvstore.table"))
        let t = try Table(heap: heap, newSlots: 256)
        for i in 0..<150 { #expect(ask(t, "PUT \(i) k\(i) v\(i)-\(String(repeating: "x", count: i))") == "OK \(i)\n") }
        for i in 0..<50 { #expect(ask(t, "PUT \(1000 + i) k\(i) again\(i)") == "OK \(1000 + i)\n") }

        let copy = r.copy()
        defer { withExtendedLifetime(copy) {} }
        let heap2 = try RAMHeap(base: copy.base, pages: 128)
        #expect(heap2.restored && heap2.hasRoot(named: "kvstore.table"))
        let t2 = try Table(heap: heap2, newSlots: 4096)  // the slot count comes from RAM, not the argument
        #expect(t2.slotCount == 256 && t2.count == 150 && t2.replayedSlot == nil)
        for i in 0..<150 {
            let expected = i < 50 ? "again\(i)" : "v\(i)-\(String(repeating: "x", count: i))"
            #expect(ask(t2, "GET \(i) k\(i)") == "VAL \(i) \(expected)\n")
        }
        // The restored table goes on taking writes; the original is untouched by them.
        #expect(ask(t2, "PUT 5000 new value") == "OK 5000\n")
        #expect(ask(t, "GET 5001 new") == "NONE 5001\n")
    }

    /// A save at each step of a PUT (a new key, then an overwrite): the restored table holds the
    /// PUT entirely or not at all, and its entry count agrees with its slots.
    @Test(arguments: [false, true])
    func aSaveInTheMiddleOfAPutRestoresAllOrNothing(overwrite: Bool) throws {
        let r = Region(pages: 64)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let t = try Table(heap: try RAMHeap(base: r.base, pages: 64), newSlots: 64)
        #expect(ask(t, "PUT 1 other 1") == "OK 1\n")
        if overwrite { #expect(ask(t, "PUT 2 key old") == "OK 2\n") }
        var captures: [(Table.PutStep, Region)] = []
        t.stepHook = { captures.append(($0, r.copy())) }
        #expect(ask(t, "PUT 3 key \(String(repeating: "n", count: 1000))") == "OK 3\n")
        t.stepHook = nil
        #expect(captures.map(\.0) == [.journalWritten, .journalValid, .applied, .journalCleared])
        for (step, capture) in captures {
            let restored = try Table(heap: try RAMHeap(base: capture.base, pages: 64), newSlots: 64)
            let value = ask(restored, "GET 9 key")
            switch step {
            case .journalWritten:
                #expect(value == (overwrite ? "VAL 9 old\n" : "NONE 9\n"), "\(step)")
                #expect(restored.replayedSlot == nil)
                #expect(restored.count == (overwrite ? 2 : 1))
            case .journalValid, .applied:
                #expect(value == "VAL 9 \(String(repeating: "n", count: 1000))\n", "\(step)")
                #expect(restored.replayedSlot != nil, "\(step): the journal entry was finished")
                #expect(restored.count == 2)
            case .journalCleared:
                #expect(value == "VAL 9 \(String(repeating: "n", count: 1000))\n")
                #expect(restored.replayedSlot == nil)
                #expect(restored.count == 2)
            }
            #expect(ask(restored, "GET 10 other") == "VAL 10 1\n")
        }
    }

    @Test func aCountThatDisagreesWithTheSlotsIsRefused() throws {
        let r = Region(pages: 64)
        defer { withExtendedLifetime(r) {} }  // the heap lives in it
        let t = try Table(heap: try RAMHeap(base: r.base, pages: 64), newSlots: 64)
        #expect(ask(t, "PUT 1 a b") == "OK 1\n")
        t.header.pointee.count = 5
        let copy = r.copy()
        defer { withExtendedLifetime(copy) {} }
        #expect(throws: Table.TableError.self) { try Table(heap: try RAMHeap(base: copy.base, pages: 64), newSlots: 64) }
    }
}

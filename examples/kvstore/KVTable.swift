// The kvstore's table in RAM and its wire protocol (described at the top of main.swift): no
// I/O here, so the tests (Tests/ExamplesTests) run it over a RAMHeap in plain memory.
import DomainRuntime
import Synchronization

/// One slot's layout (byte offsets).
enum Slot {
    static let stateOffset = 0  // UInt32: 0 empty, 1 used
    static let keyLengthOffset = 4  // UInt16
    static let valueLengthOffset = 6  // UInt16
    static let hashOffset = 8  // UInt64
    static let keyOffset = 16
    static let valueOffset = 80
    static let size = 1104
    static let maxKey = 64
    static let maxValue = 1024
    static let used: UInt32 = 1
}

/// The table's header root.
struct TableHeader: BitwiseCopyable {
    var format: UInt64  // the slot layout above
    var slotCount: UInt64
    var count: UInt64  // used slots
    static let currentFormat: UInt64 = 1
}

/// The journal root: valid, slot index, entry count after the PUT, then the slot's image.
enum Journal {
    static let validOffset = 0
    static let slotIndexOffset = 8
    static let countAfterOffset = 16
    static let imageOffset = 32
    static let size = imageOffset + Slot.size
}

func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01b3
    }
    return h
}

final class Table {
    let header: UnsafeMutablePointer<TableHeader>
    let slots: UnsafeMutableRawPointer
    let journal: UnsafeMutableRawPointer
    let slotCount: Int
    /// The slot a journal entry left over from the previous process was finished into.
    private(set) var replayedSlot: Int?
    /// Called at each step of a PUT (tests capture the RAM there, as a save at that instant would).
    var stepHook: ((PutStep) -> Void)?

    enum PutStep { case journalWritten, journalValid, applied, journalCleared }

    /// The table in `heap`: found there, or made with `newSlots` slots.
    init(heap: RAMHeap, newSlots: Int) throws {
        header = try heap.root(named: "kvstore.table",
                               initialValue: TableHeader(format: TableHeader.currentFormat, slotCount: UInt64(newSlots), count: 0))
        guard header.pointee.format == TableHeader.currentFormat else {
            throw TableError("the table in RAM has slot format \(header.pointee.format), this kvstore uses \(TableHeader.currentFormat)")
        }
        slotCount = Int(header.pointee.slotCount)
        guard slotCount >= 16 else { throw TableError("the table in RAM has \(slotCount) slots") }
        slots = try heap.rootBytes(named: "kvstore.slots", count: slotCount * Slot.size).baseAddress!
        journal = try heap.rootBytes(named: "kvstore.journal", count: Journal.size).baseAddress!
        replayedSlot = try finishJournal()
        let used = (0..<slotCount).count { slot($0).load(fromByteOffset: Slot.stateOffset, as: UInt32.self) == Slot.used }
        guard used == Int(header.pointee.count) else {
            throw TableError("the table in RAM has \(used) used slots but its header counts \(header.pointee.count)")
        }
    }

    struct TableError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    var count: Int { Int(header.pointee.count) }
    /// New keys are refused beyond this (open addressing degrades near full).
    var capacity: Int { slotCount * 3 / 4 }

    func slot(_ i: Int) -> UnsafeMutableRawPointer { slots + i * Slot.size }

    /// The slot holding `key`, or the empty slot where it would go.
    func find(_ key: UnsafeRawBufferPointer, hash: UInt64) -> (index: Int, found: Bool) {
        var i = Int(hash % UInt64(slotCount))
        while true {
            let s = slot(i)
            if s.load(fromByteOffset: Slot.stateOffset, as: UInt32.self) != Slot.used { return (i, false) }
            if s.load(fromByteOffset: Slot.hashOffset, as: UInt64.self) == hash,
               Int(s.load(fromByteOffset: Slot.keyLengthOffset, as: UInt16.self)) == key.count,
               UnsafeRawBufferPointer(start: s + Slot.keyOffset, count: key.count).elementsEqual(key) {
                return (i, true)
            }
            i = (i + 1) % slotCount  // ends: the table is never full (capacity)
        }
    }

    func get(_ key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let (i, found) = find(key, hash: fnv1a(key))
        guard found else { return nil }
        let s = slot(i)
        return UnsafeRawBufferPointer(start: s + Slot.valueOffset, count: Int(s.load(fromByteOffset: Slot.valueLengthOffset, as: UInt16.self)))
    }

    /// Stores `value` under `key` through the journal; false when the key is new and the table
    /// is at capacity.
    func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Bool {
        let hash = fnv1a(key)
        let (i, found) = find(key, hash: hash)
        if !found && count >= capacity { return false }
        let image = journal + Journal.imageOffset
        image.initializeMemory(as: UInt8.self, repeating: 0, count: Slot.size)
        image.storeBytes(of: Slot.used, toByteOffset: Slot.stateOffset, as: UInt32.self)
        image.storeBytes(of: UInt16(key.count), toByteOffset: Slot.keyLengthOffset, as: UInt16.self)
        image.storeBytes(of: UInt16(value.count), toByteOffset: Slot.valueLengthOffset, as: UInt16.self)
        image.storeBytes(of: hash, toByteOffset: Slot.hashOffset, as: UInt64.self)
        if key.count > 0 { (image + Slot.keyOffset).copyMemory(from: key.baseAddress!, byteCount: key.count) }
        if value.count > 0 { (image + Slot.valueOffset).copyMemory(from: value.baseAddress!, byteCount: value.count) }
        journal.storeBytes(of: UInt64(i), toByteOffset: Journal.slotIndexOffset, as: UInt64.self)
        journal.storeBytes(of: UInt64(found ? count : count + 1), toByteOffset: Journal.countAfterOffset, as: UInt64.self)
        stepHook?(.journalWritten)
        setJournalValid(1)
        stepHook?(.journalValid)
        apply()
        stepHook?(.applied)
        setJournalValid(0)
        stepHook?(.journalCleared)
        return true
    }

    /// The journal's valid word, with a full fence on both sides: the record is complete before
    /// it reads valid, and the table is written only while it does.
    private func setJournalValid(_ v: UInt64) {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        journal.storeBytes(of: v, toByteOffset: Journal.validOffset, as: UInt64.self)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Copies the journal's slot image into the table and sets the count (idempotent).
    private func apply() {
        let i = Int(journal.load(fromByteOffset: Journal.slotIndexOffset, as: UInt64.self))
        slot(i).copyMemory(from: journal + Journal.imageOffset, byteCount: Slot.size)
        header.pointee.count = journal.load(fromByteOffset: Journal.countAfterOffset, as: UInt64.self)
    }

    /// Finishes a PUT the previous process was in the middle of; returns its slot.
    private func finishJournal() throws -> Int? {
        guard journal.load(fromByteOffset: Journal.validOffset, as: UInt64.self) == 1 else { return nil }
        let i = Int(truncatingIfNeeded: journal.load(fromByteOffset: Journal.slotIndexOffset, as: UInt64.self))
        let after = journal.load(fromByteOffset: Journal.countAfterOffset, as: UInt64.self)
        guard i >= 0, i < slotCount, after <= UInt64(slotCount) else {
            throw TableError("the journal names slot \(i) and count \(after) in a table of \(slotCount) slots")
        }
        apply()
        setJournalValid(0)
        return i
    }
}

// MARK: requests

/// One request's answer, as bytes.
func answer(to request: [UInt8], table: Table) -> [UInt8] {
    var r = request[...]
    if r.last == UInt8(ascii: "\n") { r = r.dropLast() }
    if r.last == UInt8(ascii: "\r") { r = r.dropLast() }
    func err(_ seq: UInt64, _ reason: String) -> [UInt8] { Array("ERR \(seq) \(reason)\n".utf8) }
    guard !r.isEmpty else { return err(0, "empty request") }
    let space = UInt8(ascii: " ")
    let commandEnd = r.firstIndex(of: space) ?? r.endIndex
    let command = r[r.startIndex..<commandEnd]
    // The seq, when there is one to read (the answer carries it even for a bad command).
    var rest = r[commandEnd...].dropFirst()
    let seqEnd = rest.firstIndex(of: space) ?? rest.endIndex
    let seqText = rest[rest.startIndex..<seqEnd]
    let seq: UInt64? = seqText.isEmpty || seqText.count > 20 || !seqText.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
        ? nil : UInt64(String(decoding: seqText, as: UTF8.self))
    let isPut = command.elementsEqual("PUT".utf8), isGet = command.elementsEqual("GET".utf8)
    guard isPut || isGet else {
        let shown = String(decoding: command.prefix(16).map { $0 >= 0x21 && $0 <= 0x7E ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
        return err(seq ?? 0, "unknown command \(shown) (PUT or GET)")
    }
    guard commandEnd < r.endIndex else { return err(0, "missing sequence number") }
    guard let seq else { return err(0, "bad sequence number (decimal, below 2^64)") }
    rest = rest[seqEnd...].dropFirst()
    guard seqEnd < r.endIndex, !rest.isEmpty else { return err(seq, "missing key") }
    let keyEnd = rest.firstIndex(of: space) ?? rest.endIndex
    let key = rest[rest.startIndex..<keyEnd]
    guard !key.isEmpty else { return err(seq, "empty key") }
    guard key.count <= Slot.maxKey else { return err(seq, "key of \(key.count) bytes (at most \(Slot.maxKey))") }
    guard key.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else { return err(seq, "key with a byte outside printable ASCII") }
    if isGet {
        guard keyEnd == rest.endIndex else { return err(seq, "GET takes a key and nothing after it") }
        return key.withUnsafeBytes { k in
            guard let v = table.get(k) else { return Array("NONE \(seq)\n".utf8) }
            return Array("VAL \(seq) ".utf8) + Array(v) + [UInt8(ascii: "\n")]
        }
    }
    guard keyEnd < rest.endIndex else { return err(seq, "PUT without a value (PUT <seq> <key> <value>)") }
    let value = rest[(keyEnd + 1)...]
    guard value.count <= Slot.maxValue else { return err(seq, "value of \(value.count) bytes (at most \(Slot.maxValue))") }
    let stored = key.withUnsafeBytes { k in value.withUnsafeBytes { v in table.put(k, v) } }
    guard stored else { return err(seq, "table full (\(table.count) entries, the most it takes for \(table.slotCount) slots)") }
    return Array("OK \(seq)\n".utf8)
}

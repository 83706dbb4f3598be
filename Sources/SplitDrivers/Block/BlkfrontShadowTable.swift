import ProcvisorABI

/// Linux blkfront's shadow array: what each ring slot's request was, and the checks on the
/// backend's responses. A request's id is `generation << 32 | slot`, the generation counting the
/// slot's uses, so a stale or repeated response cannot complete the slot's next request.
public struct BlkfrontShadowTable<Payload> {
    private struct Entry {
        var op: BlkifOp
        var payload: Payload
    }

    private var entries: [Entry?]
    private var generations: [UInt32]
    /// Free slots, the next to use last (the most recently freed is reused first: its data
    /// pages are already granted).
    private var free: [Int]

    public init(capacity: Int) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max))
        entries = Array(repeating: nil, count: capacity)
        generations = Array(repeating: 0, count: capacity)
        free = Array((0..<capacity).reversed())
    }

    public var capacity: Int { entries.count }
    public var inFlight: Int { entries.count - free.count }
    public var hasFreeSlot: Bool { !free.isEmpty }

    /// The id `slot` is using now.
    public func id(ofSlot slot: Int) -> UInt64 { UInt64(generations[slot]) << 32 | UInt64(slot) }

    /// Takes a free slot for a request of `op`; nil when all are in flight.
    public mutating func issue(op: BlkifOp, payload: Payload) -> (id: UInt64, slot: Int)? {
        guard let slot = free.popLast() else { return nil }
        entries[slot] = Entry(op: op, payload: payload)
        return (id(ofSlot: slot), slot)
    }

    /// Gives back a slot issued but never put on the ring (its id is not reused).
    public mutating func cancel(slot: Int) {
        precondition(entries[slot] != nil, "slot \(slot) is not issued")
        entries[slot] = nil
        generations[slot] &+= 1
        free.append(slot)
    }

    /// Matches a response with its request and frees the slot. Throws (a broken backend) when
    /// the id names no slot of the ring, no request in flight (a duplicate, or one never sent),
    /// or when the operation is not the request's.
    public mutating func complete(_ response: BlkifResponse) throws -> (slot: Int, op: BlkifOp, payload: Payload) {
        let id = response.id
        let slot = Int(truncatingIfNeeded: id & 0xffff_ffff)
        let generation = UInt32(truncatingIfNeeded: id >> 32)
        guard slot < entries.count else {
            throw BlkifResponseError(id: id, field: "id", value: Int64(bitPattern: id),
                                     reason: "names slot \(slot), but the ring has \(entries.count) slots")
        }
        guard let entry = entries[slot], generations[slot] == generation else {
            throw BlkifResponseError(id: id, field: "id", value: Int64(bitPattern: id),
                                     reason: "answers no request in flight (a duplicate or one never sent; slot \(slot) is \(entries[slot] == nil ? "free" : "at id \(self.id(ofSlot: slot))"))")
        }
        guard response.operation == entry.op.rawValue else {
            throw BlkifResponseError(id: id, field: "operation", value: Int64(response.operation),
                                     reason: "is not the request's \(entry.op.xenName) (\(entry.op.rawValue))")
        }
        entries[slot] = nil
        generations[slot] &+= 1
        free.append(slot)
        return (slot, entry.op, entry.payload)
    }

    /// Frees every slot, returning what was in flight (to fail it).
    public mutating func removeAll() -> [(slot: Int, op: BlkifOp, payload: Payload)] {
        var out: [(slot: Int, op: BlkifOp, payload: Payload)] = []
        for slot in entries.indices {
            if let e = entries[slot] {
                out.append((slot, e.op, e.payload))
                entries[slot] = nil
                generations[slot] &+= 1
                free.append(slot)
            }
        }
        return out
    }
}

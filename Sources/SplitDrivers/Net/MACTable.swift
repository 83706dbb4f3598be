import ProcvisorABI

/// A bridge's forwarding database: which port a unicast MAC was last seen on.
///
/// Entries age out `ageingTime` after they were last learned (default 300 s, Linux's bridge
/// `ageing_time`). The table holds at most `capacity` entries (default 4096); when it is full, a
/// new MAC evicts the least recently learned entry (counted in `evictions`), so a flood of random
/// source MACs costs bounded memory and only turns traffic to the evicted stations into flooding
/// until they send again and are relearned. Multicast, broadcast and all-zero source MACs are
/// never learned (Linux drops frames with such sources before learning).
///
/// Every call except `forget(port:)` and `removeAll()` is O(1): a hash index into fixed slot
/// arrays kept in least-recently-learned order by a doubly linked list; all storage is reserved
/// at init, so learning never allocates. Not thread-safe: one table per bridge, used by the
/// thread that switches its frames.
public final class MACTable {
    public static let defaultAgeingTime: UInt64 = 300 * 1_000_000_000
    public static let defaultCapacity = 4096

    public let capacity: Int
    /// Nanoseconds.
    public let ageingTime: UInt64
    /// Entries evicted to make room (not counting aged ones).
    @exclusivity(unchecked) public private(set) var evictions: UInt64 = 0

    private static let none: Int32 = -1
    @exclusivity(unchecked) private var index: [UInt64: Int32]
    @exclusivity(unchecked) private var macs: [UInt64]
    @exclusivity(unchecked) private var ports: [Int]
    @exclusivity(unchecked) private var learned: [UInt64]
    @exclusivity(unchecked) private var older: [Int32]
    @exclusivity(unchecked) private var newer: [Int32]
    @exclusivity(unchecked) private var oldest: Int32 = MACTable.none
    @exclusivity(unchecked) private var newest: Int32 = MACTable.none
    @exclusivity(unchecked) private var freeSlots: [Int32]

    public init(capacity: Int = MACTable.defaultCapacity, ageingTime: UInt64 = MACTable.defaultAgeingTime) {
        precondition(capacity >= 1 && capacity <= Int(Int32.max), "a MAC table holds 1...Int32.max entries")
        self.capacity = capacity
        self.ageingTime = ageingTime
        index = Dictionary(minimumCapacity: capacity)
        macs = Array(repeating: 0, count: capacity)
        ports = Array(repeating: 0, count: capacity)
        learned = Array(repeating: 0, count: capacity)
        older = Array(repeating: MACTable.none, count: capacity)
        newer = Array(repeating: MACTable.none, count: capacity)
        freeSlots = (0..<Int32(capacity)).reversed()
    }

    /// Entries held, aged ones included until a lookup or `expire` removes them.
    public var count: Int { index.count }

    /// Records that `mac` was seen as a source on `port` at `now` (ns). Returns false, learning
    /// nothing, for a multicast/broadcast or all-zero MAC. A known MAC moves to `port` (a station
    /// that moved) and its age restarts.
    @discardableResult
    public func learn(_ mac: MACAddress, port: Int, now: UInt64) -> Bool {
        guard !mac.isMulticast, !mac.isZero else { return false }
        if let slot = index[mac.value] {
            let i = Int(slot)
            ports[i] = port
            learned[i] = now
            if slot != newest {
                unlink(slot)
                append(slot)
            }
            return true
        }
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = oldest
            index[macs[Int(slot)]] = nil
            unlink(slot)
            evictions &+= 1
        }
        let i = Int(slot)
        macs[i] = mac.value
        ports[i] = port
        learned[i] = now
        index[mac.value] = slot
        append(slot)
        return true
    }

    /// The port `mac` was learned on, nil when unknown or aged (learned `ageingTime` or more
    /// before `now`; an aged entry is removed).
    public func lookup(_ mac: MACAddress, now: UInt64) -> Int? {
        guard let slot = index[mac.value] else { return nil }
        let i = Int(slot)
        if isAged(i, now: now) {
            remove(slot)
            return nil
        }
        return ports[i]
    }

    /// Removes every entry on `port` (the vif went away or the port was reconfigured). O(count).
    public func forget(port: Int) {
        var slot = oldest
        while slot != MACTable.none {
            let next = newer[Int(slot)]
            if ports[Int(slot)] == port { remove(slot) }
            slot = next
        }
    }

    /// Removes the entries aged at `now`. Amortized O(1) per entry removed: the aged ones are at
    /// the old end of the list (for a monotonic `now`).
    public func expire(now: UInt64) {
        while oldest != MACTable.none, isAged(Int(oldest), now: now) { remove(oldest) }
    }

    /// Removes every entry.
    public func removeAll() {
        while oldest != MACTable.none { remove(oldest) }
    }

    @inline(__always)
    private func isAged(_ i: Int, now: UInt64) -> Bool {
        // As Linux's has_expired(): aged once updated + ageing_time <= now.
        let (expiry, overflow) = learned[i].addingReportingOverflow(ageingTime)
        return !overflow && expiry <= now
    }

    private func remove(_ slot: Int32) {
        index[macs[Int(slot)]] = nil
        unlink(slot)
        freeSlots.append(slot)
    }

    private func unlink(_ slot: Int32) {
        let i = Int(slot)
        let o = older[i], n = newer[i]
        if o == MACTable.none { oldest = n } else { newer[Int(o)] = n }
        if n == MACTable.none { newest = o } else { older[Int(n)] = o }
        older[i] = MACTable.none
        newer[i] = MACTable.none
    }

    private func append(_ slot: Int32) {
        let i = Int(slot)
        older[i] = newest
        newer[i] = MACTable.none
        if newest == MACTable.none { oldest = slot } else { newer[Int(newest)] = slot }
        newest = slot
    }
}

import ProcvisorABI

// Per-frame policy for netback's bridges: anti-spoofing per vif, the learning MAC table, the
// vif `rate=` credit scheduler and a frame-rate limiter for flooded frames. All of it is pure
// (time is passed in, in nanoseconds of a monotonic clock) and allocation-free per call.

/// A configuration value netback cannot use: which setting, the text given, and what it should be.
public struct NetPolicyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The setting, as named in XenStore or xl.cfg (`ip`, `rate`).
    public var setting: String
    /// The text as given.
    public var value: String
    /// What is wrong and what is expected.
    public var reason: String

    public init(setting: String, value: String, reason: String) {
        self.setting = setting
        self.value = value
        self.reason = reason
    }

    public var description: String { "\(setting)=\"\(value)\": \(reason)" }
}

// MARK: - Anti-spoofing

/// The outcome of `AntiSpoof.check`.
public enum SpoofVerdict: Hashable, Sendable {
    case ok
    /// The Ethernet source is not the vif's MAC.
    case forgedMAC(found: MACAddress)
    /// An IPv4 source the vif may not use.
    case forgedIP(found: IPv4Address)
    /// An ARP packet whose sender MAC is not the vif's, or whose sender IP it may not use.
    case forgedARP(senderMAC: MACAddress, senderIP: IPv4Address)
    /// From an ip-restricted vif: an IPv4 or ARP frame too malformed to check, or a second VLAN
    /// tag that would hide one from the check.
    case malformed

    /// Whether the frame may enter the bridge.
    public var isOK: Bool { self == .ok }
}

/// What one vif may send: its own MAC always, and when `allowedIPs` is not empty only those
/// IPv4 source addresses (Xen's `ip=` for the vif).
///
/// As Xen's vif-common.sh antispoofing, only IPv4 and ARP are restricted by address: IPv6 and
/// other EtherTypes pass once their source MAC is the vif's.
public struct AntiSpoof: Hashable, Sendable {
    public let mac: MACAddress
    /// Empty: no IP restriction.
    public let allowedIPs: [IPv4Address]

    public init(mac: MACAddress, allowedIPs: [IPv4Address] = []) {
        self.mac = mac
        self.allowedIPs = allowedIPs
    }

    /// A vif with the `ip` text Xen keeps in the vif's backend directory (see `parseIPList`).
    public init(mac: MACAddress, ip text: String) throws {
        self.init(mac: mac, allowedIPs: try Self.parseIPList(text))
    }

    /// Parses Xen's `ip=` text: addresses separated by spaces, each `A.B.C.D` or `A.B.C.D/N`;
    /// the address part is what the vif may use (the prefix says which network it is on and does
    /// not widen what it may send from). Empty or blank text: no restriction (an empty list).
    public static func parseIPList(_ text: String) throws -> [IPv4Address] {
        var addresses: [IPv4Address] = []
        for word in text.split(whereSeparator: \.isWhitespace) {
            guard let network = IPv4Network(String(word)) else {
                throw NetPolicyError(setting: "ip", value: text,
                                     reason: "\"\(word)\" is not an IPv4 address (expected space-separated A.B.C.D or A.B.C.D/N)")
            }
            if !addresses.contains(network.address) { addresses.append(network.address) }
        }
        return addresses
    }

    /// UDP ports of a DHCP client request (client 68 to server 67).
    static let dhcpClientPort: UInt16 = 68
    static let dhcpServerPort: UInt16 = 67

    /// Whether a frame the vif sent may enter the bridge.
    ///
    /// - The Ethernet source must be the vif's MAC.
    /// - With `allowedIPs` set: an IPv4 source must be one of them, except 0.0.0.0 for a DHCP
    ///   request (UDP 68 to 67) sent before the guest has an address; an ARP sender MAC must be
    ///   the vif's and its sender IP one of them or 0.0.0.0 (an RFC 5227 probe). An IPv4 or ARP
    ///   frame too malformed to check, or a frame with two stacked VLAN tags, is `.malformed`.
    public func check(_ info: FrameInfo) -> SpoofVerdict {
        if info.src != mac { return .forgedMAC(found: info.src) }
        if allowedIPs.isEmpty { return .ok }
        switch info.etherType {
        case FrameInfo.etherTypeIPv4:
            guard let ip = info.ipv4 else { return .malformed }
            if allows(ip.source) { return .ok }
            if ip.source == .any, ip.protocol == FrameInfo.protocolUDP, ip.sourcePort == Self.dhcpClientPort,
               ip.destinationPort == Self.dhcpServerPort {
                return .ok
            }
            return .forgedIP(found: ip.source)
        case FrameInfo.etherTypeARP:
            guard let arp = info.arp else { return .malformed }
            guard arp.senderMAC == mac, arp.senderIP == .any || allows(arp.senderIP) else {
                return .forgedARP(senderMAC: arp.senderMAC, senderIP: arp.senderIP)
            }
            return .ok
        case FrameInfo.etherTypeVLAN, FrameInfo.etherTypeQinQ:
            // Still a tag after skipping one (or a truncated tag): what it carries is unchecked.
            return .malformed
        default:
            return .ok
        }
    }

    @inline(__always)
    private func allows(_ address: IPv4Address) -> Bool {
        for a in allowedIPs where a == address { return true }
        return false
    }
}

// MARK: - Learning MAC table

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
    public private(set) var evictions: UInt64 = 0

    private static let none: Int32 = -1
    private var index: [UInt64: Int32]
    private var macs: [UInt64]
    private var ports: [Int]
    private var learned: [UInt64]
    private var older: [Int32]
    private var newer: [Int32]
    private var oldest: Int32 = MACTable.none
    private var newest: Int32 = MACTable.none
    private var freeSlots: [Int32]

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

// MARK: - Credit scheduler (vif rate=)

/// Xen's vif `rate=` limit on what a guest sends, with Linux netback's semantics
/// (`tx_credit_exceeded` and `tx_add_credit` in drivers/net/xen-netback/netback.c):
///
/// - The vif starts with `bytesPerInterval` of credit. A packet that fits the remaining credit is
///   sent and its size taken off.
/// - A packet that does not fit: if an interval has passed since the credit window started, the
///   window restarts now and `bytesPerInterval` is added. If it still does not fit, the credit
///   timer is set for the end of the (old) window, which becomes the new window start, and the
///   packet waits; `consume` refuses everything until that time, when the timer adds credit.
/// - Credit is capped at `max(131072, bytesPerInterval)` so a 128 KiB packet can always pass.
///
/// Beyond Linux (whose packets never exceed 64 KiB): a packet larger than even that cap passes
/// once the credit is full, leaving the credit negative; later refills repay the debt, so the
/// long-run rate still holds.
///
/// Time is in nanoseconds; Linux rounds the interval down to jiffies, this does not. An interval
/// of 0, or `UInt64.max` bytes, is unlimited (Linux refills on every check then).
public struct CreditScheduler: Hashable, Sendable {
    /// Linux's floor for the credit cap: a 128 KiB jumbo packet must fit.
    public static let minimumBurst: UInt64 = 131072

    public let bytesPerInterval: UInt64
    public let intervalMicroseconds: UInt64
    /// Bytes that may be sent before the next refill; negative after a packet larger than the
    /// cap passed.
    public private(set) var remainingCredit: Int64
    /// Start of the current credit window (ns).
    public private(set) var windowStart: UInt64
    /// When the pending credit timer fires (ns), nil when none is pending.
    public private(set) var timerDue: UInt64?

    private let credit: Int64
    private let maxBurst: Int64
    private let intervalNanoseconds: UInt64

    /// `bytesPerInterval` every `intervalMicroseconds`, the window starting at `now` (ns).
    public init(bytesPerInterval: UInt64, intervalMicroseconds: UInt64, now: UInt64 = 0) {
        self.bytesPerInterval = bytesPerInterval
        self.intervalMicroseconds = intervalMicroseconds
        let (ns, overflow) = intervalMicroseconds.multipliedReportingOverflow(by: 1000)
        intervalNanoseconds = overflow ? .max : ns
        credit = Int64(clamping: bytesPerInterval)
        maxBurst = Int64(clamping: max(Self.minimumBurst, bytesPerInterval))
        remainingCredit = credit
        windowStart = now
        timerDue = nil
    }

    /// No limit at all (what netback uses when the backend has no `rate` key).
    public static let unlimited = CreditScheduler(bytesPerInterval: .max, intervalMicroseconds: 0)

    public var isUnlimited: Bool { intervalMicroseconds == 0 || bytesPerInterval == .max }

    /// The credit cap: `max(131072, bytesPerInterval)`.
    public var burst: UInt64 { UInt64(maxBurst) }

    /// Whether a packet of `bytes` may be sent at `now` (ns); if so its size is taken off the
    /// credit. False: over credit; the packet must wait (keep it at the head of the queue, arm a
    /// timer for `nextCreditTime` and offer it again then).
    public mutating func consume(_ bytes: Int, now: UInt64) -> Bool {
        if isUnlimited { return true }
        let size = Int64(clamping: max(bytes, 0))
        if let due = timerDue {
            // The credit timer (xenvif_tx_credit_callback): nothing passes before it fires.
            guard now >= due else { return false }
            timerDue = nil
            addCredit()
        }
        if size > remainingCredit && creditExceeded(size, now: now) { return false }
        remainingCredit -= size
        return true
    }

    /// When credit is next added (ns): the pending timer, else the end of the current window.
    /// May be at or before the current time (Linux arms its timer in the past then, which fires
    /// at once): offer the packet again right away.
    public var nextCreditTime: UInt64 { timerDue ?? windowEnd }

    private var windowEnd: UInt64 {
        let (end, overflow) = windowStart.addingReportingOverflow(intervalNanoseconds)
        return overflow ? .max : end
    }

    /// tx_credit_exceeded(): true when the packet must wait.
    private mutating func creditExceeded(_ size: Int64, now: UInt64) -> Bool {
        let nextCredit = windowEnd
        if now >= nextCredit {
            windowStart = now
            addCredit()
        }
        guard size > remainingCredit else { return false }
        // Larger than the cap itself: it could never fit; let it through once the credit is full.
        if size > maxBurst && remainingCredit >= maxBurst { return false }
        timerDue = nextCredit
        windowStart = nextCredit
        return true
    }

    /// tx_add_credit(): one interval's credit, capped at the burst.
    private mutating func addCredit() {
        let (sum, overflow) = remainingCredit.addingReportingOverflow(credit)
        remainingCredit = overflow ? maxBurst : min(sum, maxBurst)
    }

    /// Parses the backend's `rate` key, written by libxl as `"%"PRIu64",%"PRIu32`: bytes per
    /// interval, a comma, the interval in microseconds (both decimal, nothing else). Stricter than
    /// Linux, which treats garbage as unlimited: garbage or 0 bytes is an error here, and netback
    /// decides what to do (the key is written by dom0's toolstack, not the guest).
    public static func parseRate(_ text: String) throws -> (bytesPerInterval: UInt64, intervalMicroseconds: UInt64) {
        func fail(_ reason: String) -> NetPolicyError { NetPolicyError(setting: "rate", value: text, reason: reason) }
        let expected = "expected BYTES,MICROSECONDS in decimal, as libxl writes it (e.g. \"10000,50000\" for 10 kB every 50 ms)"
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw fail(expected) }
        func number(_ s: Substring, _ name: String) throws -> UInt64 {
            guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw fail("\(name) \"\(s)\" is not a decimal number; \(expected)")
            }
            guard let n = UInt64(s) else { throw fail("\(name) \(s) does not fit in 64 bits") }
            return n
        }
        let bytes = try number(parts[0], "bytes per interval")
        let interval = try number(parts[1], "interval")
        guard bytes > 0 else { throw fail("0 bytes per interval would stop all traffic; remove the rate instead") }
        return (bytes, interval)
    }

    /// A scheduler for the backend's `rate` key (see `parseRate`).
    public init(rate text: String, now: UInt64 = 0) throws {
        let (bytes, interval) = try Self.parseRate(text)
        self.init(bytesPerInterval: bytes, intervalMicroseconds: interval, now: now)
    }
}

// MARK: - Frame rate limiter

/// A token bucket counting frames: at most `burst` at once, refilled at `framesPerSecond`. netback
/// keeps one per vif for the frames it must flood (broadcast, multicast, unknown unicast), so a
/// guest flooding broadcasts costs the bridge a bounded share. Starts full.
public struct FrameRateLimiter: Hashable, Sendable {
    /// One frame's worth of tokens: fixed point, so the refill is exact to the nanosecond.
    private static let unit: UInt64 = 1_000_000_000

    public let framesPerSecond: UInt64
    /// At least 1; at most 2^32.
    public let burst: UInt64
    /// Frames refused so far.
    public private(set) var dropped: UInt64 = 0

    private var tokens: UInt64
    private var last: UInt64
    private let capacity: UInt64

    /// `framesPerSecond` 0 means no refill: only the first `burst` frames pass. `burst` is clamped
    /// to 1...2^32 and `framesPerSecond` to at most 10^9.
    public init(framesPerSecond: UInt64, burst: UInt64, now: UInt64 = 0) {
        self.framesPerSecond = min(framesPerSecond, Self.unit)
        self.burst = min(max(burst, 1), 1 << 32)
        capacity = self.burst * Self.unit
        tokens = capacity
        last = now
    }

    /// Whether one more frame may pass at `now` (ns); takes its token if so. A clock that goes
    /// back refills nothing.
    public mutating func allow(now: UInt64) -> Bool {
        if now > last {
            let elapsed = now - last
            let (added, overflow) = elapsed.multipliedReportingOverflow(by: framesPerSecond)
            tokens = overflow || added >= capacity - tokens ? capacity : tokens + added
            last = now
        }
        guard tokens >= Self.unit else {
            dropped &+= 1
            return false
        }
        tokens -= Self.unit
        return true
    }
}

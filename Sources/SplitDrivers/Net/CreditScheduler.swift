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

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

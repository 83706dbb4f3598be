/// How long an owned queue thread polls before it sleeps: Linux's cpuidle-haltpoll rule, in the
/// driver domain. The window grows (doubling from `growStartNs`) while idle periods end within
/// `maxNs`, where polling would have caught the wake-up, and halves, to nothing below
/// `growStartNs`, while they last longer, where polling only burns the vCPU. So a disk that
/// answers within tens of microseconds, and a frontend that sends again at once, are polled for;
/// slow completions and an idle frontend are slept on.
struct AdaptivePoll {
    /// Cpuidle-haltpoll's default `guest_halt_poll_ns`.
    static let defaultMaxNs: UInt64 = 200_000
    static let growStartNs: UInt64 = 50_000
    static let yieldEveryNs: UInt64 = 10_000
    let maxNs: UInt64
    private(set) var windowNs: UInt64

    init(maxNs: UInt64) {
        self.maxNs = maxNs
        windowNs = min(maxNs, Self.growStartNs)
    }

    /// An idle period (poll and sleep) ended after `ns`.
    mutating func idled(_ ns: UInt64) {
        if ns > maxNs {
            windowNs /= 2
            if windowNs < Self.growStartNs { windowNs = 0 }
        } else if ns > windowNs {
            windowNs = min(maxNs, max(windowNs * 2, Self.growStartNs))
        }
    }
}

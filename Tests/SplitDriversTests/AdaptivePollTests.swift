@testable import SplitDrivers
import Testing

/// How long blkback's owned queue threads poll before sleeping (cpuidle-haltpoll's rule): polling
/// is what gets random writes at depth 32 near fio's rate in a VM whose halted vCPUs wake slowly,
/// and it must stop when it only burns the vCPU.
@Suite struct AdaptivePollTests {
    @Test func growsWhileWakeUpsComeWithinTheLimit() {
        var p = AdaptivePoll(maxNs: 200_000)
        #expect(p.windowNs == 50_000)
        p.idled(30_000)  // caught by the poll: nothing to learn
        #expect(p.windowNs == 50_000)
        p.idled(80_000)  // slept, but a longer poll would have caught it
        #expect(p.windowNs == 100_000)
        p.idled(150_000)
        #expect(p.windowNs == 200_000)
        p.idled(190_000)
        #expect(p.windowNs == 200_000, "never past the limit")
    }

    @Test func shrinksToNothingWhileIdlePeriodsOutlastTheLimit() {
        var p = AdaptivePoll(maxNs: 200_000)
        p.idled(150_000)
        p.idled(150_000)
        #expect(p.windowNs == 200_000)
        p.idled(450_000)  // slow completions: polling only burned the vCPU
        #expect(p.windowNs == 100_000)
        p.idled(1_000_000)
        #expect(p.windowNs == 50_000)
        p.idled(100_000_000)
        #expect(p.windowNs == 0, "below the starting window it stops polling")
        p.idled(100_000_000)
        #expect(p.windowNs == 0)
        p.idled(20_000)  // quick wake-ups again: back to polling
        #expect(p.windowNs == 50_000)
    }

    @Test func aZeroLimitNeverPolls() {
        var p = AdaptivePoll(maxNs: 0)
        #expect(p.windowNs == 0)
        for ns: UInt64 in [0, 10_000, 300_000] {
            p.idled(ns)
            #expect(p.windowNs == 0)
        }
    }

    @Test func aLimitBelowTheStartingWindowIsHonoured() {
        var p = AdaptivePoll(maxNs: 20_000)
        #expect(p.windowNs == 20_000)
        p.idled(15_000)
        #expect(p.windowNs == 20_000)
        p.idled(25_000)
        #expect(p.windowNs == 0)
        p.idled(18_000)
        #expect(p.windowNs == 20_000)
    }
}

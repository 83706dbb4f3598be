/// How netback switches: the driver domain's command-line settings, read by
/// `DriverSettings.netback`. A default value is what netback does without the setting.
public struct NetbackSettings: Equatable, Sendable {
    /// `PROCVISOR_FORCE_NO_IOURING=1`: uplinks move frames with plain read/write, not io_uring
    /// (as when the process environment sets it).
    public var forceNoIOUring = false
    /// `max-queues=N`: `multi-queue-max-queues`, 1…8; nil: one per vCPU (see `maxQueues(vcpus:)`).
    public var maxQueues: Int?
    /// `spin=N`: doorbell checks before the switch sleeps (0: sleep at once).
    public var spin = 0
    /// `budget=N` (at least 1): packets taken from each vif per pass of the switch.
    public var budget = 64
    /// `backlog=N`: frames waiting per vif for rx slots before they are dropped.
    public var backlog = 256
    /// `broadcast-pps=N` (at least 1): broadcast, multicast and unknown-unicast frames a vif may
    /// flood per second.
    public var broadcastPPS = 20_000

    public init() {}

    /// `multi-queue-max-queues` in a driver domain of `vcpus` vCPUs: `maxQueues`, else one per
    /// vCPU, at most 8.
    public func maxQueues(vcpus: Int) -> Int { maxQueues ?? max(1, min(8, vcpus)) }
}

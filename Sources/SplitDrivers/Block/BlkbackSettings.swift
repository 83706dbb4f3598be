/// How blkback serves its queues and does its I/O: the driver domain's command-line settings,
/// read by `DriverSettings.blkback`. A default value is what blkback does without the setting.
public struct BlkbackSettings: Equatable, Sendable {
    /// Who takes a queue's requests off its ring and who waits for the disk.
    public enum QueueMode: Equatable, Sendable {
        /// Each queue's thread sleeps in its own io_uring, on its completions and on the
        /// domain's doorbell, and takes its requests itself (the default, where the kernel has
        /// IORING_OP_FUTEX_WAIT and io_uring is allowed).
        case owned
        /// `dispatch=1`: the event dispatcher takes the requests off the rings; each queue's
        /// thread answers completions and runs barriers.
        case dispatched
        /// `submit=queue`: dispatched, but the queue thread takes the requests (the dispatcher
        /// only kicks it), so the thread that submits to io_uring is the one that waits for its
        /// completions.
        case queueThreadSubmits
    }

    public var queueMode = QueueMode.owned
    /// The engine's choice (`PROCVISOR_FORCE_NO_IOURING=1`: the thread pool, and no owned queues).
    public var io = BlockIOSettings()
    /// `max-queues=N`: `multi-queue-max-queues`, 1…16; nil: one per vCPU (see `maxQueues(vcpus:)`).
    public var maxQueues: Int?
    /// `spin=N`: doorbell checks the dispatcher makes before it sleeps (0: sleep at once).
    public var spin = 0
    /// `poll-us=N` (at most 10 000 µs), in nanoseconds: how long a queue thread with I/O in
    /// flight keeps looking for completions before it sleeps (0: sleep at once). nil (unset):
    /// dispatched queues sleep at once, owned queues poll adaptively up to
    /// `AdaptivePoll.defaultMaxNs`.
    public var pollNs: UInt64?
    /// `staging-mib=N` (0…1024 MiB, 16 by default), in bytes: staging memory for large requests,
    /// all queues together (0: none).
    public var stagingBytes = 16 << 20
    /// `direct-io=0` keeps the page cache; by default the image is used with O_DIRECT when its
    /// file system allows.
    public var directIO = true
    /// `fixed-buffers=0`: owned queues do not register their persistent pages and staging with
    /// io_uring (transfers then pin the pages each time).
    public var fixedBuffers = true
    /// `bounce-min=KiB` (at least 4, 64 by default), in bytes: requests at least this large are
    /// staged.
    public var bounceMinBytes = 64 << 10
    /// `submit-chunk=N` (at least 1, 4 by default): requests an owned queue hands to the disk per
    /// io_uring_enter, runs that continue one another on the disk excepted (`SubmitChunker`).
    public var submitChunk = 4
    /// `fail-submit=N` (tests): queue 0 of each device connected afresh refuses its Nth batch as
    /// if the kernel had (EIO), to show a backend's internal error costs a guest only a pause.
    public var failSubmit: Int?

    public init() {}

    /// `multi-queue-max-queues` in a driver domain of `vcpus` vCPUs: `maxQueues`, else one per
    /// vCPU (Linux's xenblk_max_queues is dom0's online CPUs), at most 16.
    public func maxQueues(vcpus: Int) -> Int { maxQueues ?? max(1, min(16, vcpus)) }
}

/// What a frontend asks for at connect; each is capped by what the backend advertises.
public struct BlkfrontOptions: Sendable {
    /// Queues (`multi-queue-num-queues`), each its own ring and event channel, capped by the
    /// backend's `multi-queue-max-queues` (1 when absent).
    public var queues: Int
    /// Ring pages per queue as an order (`ring-page-order`: 2^order pages), capped by the
    /// backend's `max-ring-page-order` (0 when absent). Linux's default is 0.
    public var ringPageOrder: Int
    /// Segments per indirect request (`BLKIF_OP_INDIRECT`), capped by the backend's
    /// `feature-max-indirect-segments`; 0 never sends indirect requests. Linux's default is 32.
    public var maxIndirectSegments: Int

    public init(queues: Int = 1, ringPageOrder: Int = 0, maxIndirectSegments: Int = 32) {
        self.queues = queues
        self.ringPageOrder = ringPageOrder
        self.maxIndirectSegments = maxIndirectSegments
    }

    /// `XENBUS_MAX_RING_GRANT_ORDER`: at most 16 ring pages.
    public static let maxRingPageOrder = 4
}

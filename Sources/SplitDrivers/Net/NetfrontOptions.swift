/// What the guest asks for at connect.
public struct NetfrontOptions: Sendable {
    /// Queues wanted (`multi-queue-num-queues`), at most what the backend offers.
    public var queues: Int
    /// Separate tx and rx event channels when the backend offers `feature-split-event-channels`.
    public var splitEventChannels: Bool

    public init(queues: Int = 1, splitEventChannels: Bool = false) {
        self.queues = queues
        self.splitEventChannels = splitEventChannels
    }
}

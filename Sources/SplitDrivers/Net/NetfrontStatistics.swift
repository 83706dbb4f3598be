/// Counters of a netfront.
public struct NetfrontStatistics: Sendable, Equatable {
    public var txFrames = 0
    public var txBytes = 0
    public var rxFrames = 0
    public var rxBytes = 0
    /// Frames the backend answered NETIF_RSP_ERROR/DROPPED.
    public var txErrors = 0
    /// Frames refused before the ring: too big for the MTU, or the device is closed.
    public var txDropped = 0
    /// Rx responses that made no sense (unknown id, offset/size past the page, error status).
    public var rxErrors = 0
}

import ProcvisorABI

/// An Ethernet link a guest network stack sends and receives frames on: netfront, or (in tests)
/// an in-memory pair. Frames are whole Ethernet frames (14-byte header, no FCS).
public protocol NetworkLink: AnyObject {
    /// This end's address.
    var mac: MACAddress { get }
    /// The largest IP packet the link carries (frames are at most `mtu + 14` bytes).
    var mtu: Int { get }
    /// Queues one frame for the peer; false when there is no room now (the caller may `poll` to
    /// reclaim space and retry, or drop the frame). Queued frames are sent at the latest by `flush`.
    func transmit(_ frame: UnsafeRawBufferPointer) -> Bool
    /// Makes queued frames visible to the peer (at most one notification).
    func flush()
    /// Hands every frame that has arrived to `handler` (the buffer is valid only during the
    /// call), reclaiming transmit space on the way. When nothing is waiting, sleeps until
    /// something arrives or `timeoutNs` passes (0: do not sleep; negative: no limit). Returns the
    /// number of frames handed over.
    func poll(timeoutNs: Int64, _ handler: (UnsafeRawBufferPointer) -> Void) -> Int
}

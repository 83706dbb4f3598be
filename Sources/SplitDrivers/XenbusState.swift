/// The xenbus device states of `xen/io/xenbus.h`, written as decimal strings to the `state` key of
/// a frontend's and a backend's XenStore directory. The state machine that drives them arrives
/// with XenStore (issue 4) and the block driver (issue 5).
public enum XenbusState: Int, CaseIterable, Sendable {
    case unknown = 0
    case initialising = 1
    /// The backend has published what the frontend needs and waits for it.
    case initWait = 2
    /// The frontend has published its ring and event channel.
    case initialised = 3
    case connected = 4
    /// Teardown requested; in-flight requests complete.
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// The value as stored in XenStore ("4").
    public var storeValue: String { String(rawValue) }

    /// Parses a XenStore `state` value; nil for anything that is not one of the states.
    public init?(storeValue: String) {
        guard let n = Int(storeValue), let s = XenbusState(rawValue: n) else { return nil }
        self = s
    }
}

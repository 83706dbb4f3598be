/// The xenbus device states of `xen/io/xenbus.h`, written as decimal strings to the `state` key of
/// a frontend's and a backend's XenStore directory. `XenbusEnd` drives them.
public enum XenbusState: Int, CaseIterable, Sendable, CustomStringConvertible {
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

    /// Parses the value read from `path`; throws `XenbusError.badState` naming both when it is
    /// not a state (a number out of range, or no number at all).
    public init(storeValue: String, path: String) throws {
        guard let s = XenbusState(storeValue: storeValue) else { throw XenbusError.badState(path: path, value: storeValue) }
        self = s
    }

    /// The C enumerator (`XenbusStateInitWait`).
    public var xenName: String { "XenbusState" + description }

    /// The name Linux's `xenbus_strstate` prints (`InitWait`).
    public var description: String {
        switch self {
        case .unknown: return "Unknown"
        case .initialising: return "Initialising"
        case .initWait: return "InitWait"
        case .initialised: return "Initialised"
        case .connected: return "Connected"
        case .closing: return "Closing"
        case .closed: return "Closed"
        case .reconfiguring: return "Reconfiguring"
        case .reconfigured: return "Reconfigured"
        }
    }
}

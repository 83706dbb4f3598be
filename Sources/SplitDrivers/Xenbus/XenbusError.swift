/// What went wrong between the two ends of a device.
public enum XenbusError: Error, Equatable, CustomStringConvertible {
    /// The other end wrote something that is not a xenbus state to its `state` node.
    case badState(path: String, value: String)
    /// A cross-link (`backend`, `backend-id`, `frontend`, `frontend-id`) does not name the
    /// standard path of this device.
    case badLink(path: String, value: String, expected: String)
    /// The other end did not reach one of `states` in time.
    case timeout(path: String, waitingFor: [XenbusState], last: XenbusState, seconds: Double)
    /// This end's `state` node is gone (the toolstack removed the device): Linux's
    /// `xenbus_switch_state` does not recreate it, nor does this.
    case deviceGone(path: String)

    public var description: String {
        switch self {
        case let .badState(path, value):
            return "\(path): '\(value)' is not a xenbus state (a number from 0 to 8)"
        case let .badLink(path, value, expected):
            return "\(path): '\(value)' is not this device's other end (expected '\(expected)')"
        case let .timeout(path, states, last, seconds):
            return "\(path): still \(last) after \(seconds) s waiting for \(states.map(\.description).joined(separator: " or "))"
        case let .deviceGone(path):
            return "\(path): the device's state node is gone"
        }
    }
}

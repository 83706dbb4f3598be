/// Why a netfront could not connect, or refused a call (`device` is its label, `vif N`).
public enum NetfrontError: Error, CustomStringConvertible, Equatable {
    case handshake(device: String, reason: String)
    case closed(device: String)
    case badConfig(device: String, reason: String)

    public var description: String {
        switch self {
        case let .handshake(d, r): return "\(d): handshake failed: \(r)"
        case let .closed(d): return "\(d): the device is closed"
        case let .badConfig(d, r): return "\(d): \(r)"
        }
    }
}

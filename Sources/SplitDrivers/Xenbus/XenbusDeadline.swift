import DomainRuntime

/// A frontend handshake's time limit, shared by every wait of one `connect`.
public struct XenbusDeadline {
    private let end: UInt64

    public init(seconds: Double) { end = SystemTime.nanoseconds() + UInt64(max(0, seconds) * 1e9) }

    /// Seconds left (0 once passed).
    public var left: Double {
        let now = SystemTime.nanoseconds()
        return Double(end > now ? end - now : 0) / 1e9
    }

    /// Why a handshake failed, in words for its error: a timeout names the node and the states
    /// waited for, and asks whether the backend domain runs.
    public static func reason(_ error: Error) -> String {
        if case let XenbusError.timeout(path, states, last, seconds) = error {
            return "\(path) still \(last) after \(seconds) s waiting for \(states.map(\.description).joined(separator: " or ")) (is the backend domain running?)"
        }
        return "\(error)"
    }
}

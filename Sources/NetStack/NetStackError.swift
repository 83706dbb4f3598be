import ProcvisorABI

/// What NetStack and UDPSocket throw.
public enum NetStackError: Error, Equatable, CustomStringConvertible {
    /// Nothing arrived in time; names what was awaited.
    case timeout(String)
    /// No route to the address: its next hop did not answer ARP, it is off-link with no gateway
    /// configured, or it is an address NetStack does not send to (this host, 0.0.0.0, multicast).
    case unreachable(IPv4Address)
    /// The UDP port is already bound (0: all 16384 ephemeral ports are bound).
    case portInUse(UInt16)
    /// A UDP payload (or ping payload) larger than the link's MTU allows; NetStack does not fragment.
    case messageTooLong(size: Int, max: Int)
    /// The network configuration text could not be used; names the text.
    case badConfig(String)
    /// The socket was closed.
    case closed
    /// An argument no packet could carry (destination port 0, a negative size); names it.
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .timeout(let what): return "timed out: \(what)"
        case .unreachable(let a):
            return "\(a) is unreachable (no ARP answer from its next hop, off-link with no gateway, or not an address to send to)"
        case .portInUse(0): return "no free ephemeral UDP port: 49152...65535 are all bound"
        case .portInUse(let p): return "UDP port \(p) is already bound; close its socket or pick another port"
        case .messageTooLong(let size, let max):
            return "a \(size)-byte payload exceeds the \(max)-byte maximum (link MTU - 28; NetStack does not fragment)"
        case .badConfig(let what): return "bad network configuration: \(what)"
        case .closed: return "the UDP socket is closed"
        case .invalidArgument(let what): return "invalid argument: \(what)"
        }
    }
}

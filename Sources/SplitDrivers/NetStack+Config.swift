import ProcvisorABI

/// A guest's IPv4 configuration: its address, the prefix of the link's subnet, the default gateway.
public struct NetStackConfig: Equatable, Sendable {
    /// This host's address.
    public var address: IPv4Address
    /// The on-link subnet's prefix length (0...32); 24 when the `ip` text has no `/N`.
    public var prefixLength: Int
    /// The router for off-link destinations; nil: only the subnet is reachable.
    public var gateway: IPv4Address?

    /// The prefix length taken when Xen's `ip` text gives none (a /24, as the address classes
    /// the vif scripts assume for private networks).
    public static let defaultPrefixLength = 24

    public init(address: IPv4Address, prefixLength: Int = NetStackConfig.defaultPrefixLength, gateway: IPv4Address? = nil) {
        precondition((0...32).contains(prefixLength), "an IPv4 prefix length is 0...32, not \(prefixLength)")
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
    }

    /// The on-link subnet.
    public var subnet: IPv4Network { IPv4Network(address: address, prefixLength: prefixLength) }

    /// The subnet's directed broadcast address; nil for /31 and /32, which have none (RFC 3021).
    public var subnetBroadcast: IPv4Address? {
        prefixLength >= 31 ? nil : IPv4Address(value: address.value | ~subnet.mask)
    }

    /// From the vif's XenStore keys: `ip` is Xen's ip= text: one or more space-separated addresses,
    /// each `A.B.C.D` or `A.B.C.D/N`; the first is used. `gateway` is optional (nil or blank: none).
    /// Throws `NetStackError.badConfig` naming the bad text.
    public static func parse(ip: String, gateway: String?) throws -> NetStackConfig {
        let words = ip.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" })
        guard let first = words.first else {
            throw NetStackError.badConfig("ip \"\(ip)\": no address (expected A.B.C.D or A.B.C.D/N)")
        }
        let parts = first.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPv4Address(String(parts[0])) else {
            throw NetStackError.badConfig("ip \"\(first)\": not an IPv4 address (expected A.B.C.D or A.B.C.D/N)")
        }
        var prefix = defaultPrefixLength
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy({ $0 >= "0" && $0 <= "9" }),
                  let n = Int(parts[1]), n <= 32 else {
                throw NetStackError.badConfig("ip \"\(first)\": the prefix length after '/' must be 0...32")
            }
            prefix = n
        }
        let v = address.value
        guard v != 0, !NetStackWire.isMulticastOrReserved(v), !NetStackWire.isLoopback(v) else {
            throw NetStackError.badConfig("ip \"\(first)\": \(address) cannot be a host's address")
        }
        var config = NetStackConfig(address: address, prefixLength: prefix)
        if let b = config.subnetBroadcast, b == address {
            throw NetStackError.badConfig("ip \"\(first)\": \(address) is the broadcast address of \(config.subnet)")
        }
        if let g = gateway?.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }), !g.isEmpty {
            guard g.count == 1, let gw = IPv4Address(String(g[0])) else {
                throw NetStackError.badConfig("gateway \"\(gateway ?? "")\": not an IPv4 address (expected A.B.C.D)")
            }
            let w = gw.value
            guard w != 0, !NetStackWire.isMulticastOrReserved(w), !NetStackWire.isLoopback(w), gw != address else {
                throw NetStackError.badConfig("gateway \"\(gw)\": cannot be a router's address for \(address)")
            }
            config.gateway = gw
        }
        return config
    }
}

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

/// NetStack's counters. Every received frame ends in exactly one of: `arpRequestsIn`,
/// `arpRepliesIn`, `icmpEchoRequestsIn`, `icmpEchoRepliesIn`, `icmpOtherIn`, `udpIn` or one of the
/// `drop…` input reasons (so `framesIn == framesAccounted`).
public struct NetStackStatistics: Equatable, Sendable {
    /// Frames handed over by the link.
    public var framesIn: UInt64 = 0
    /// Frames the link accepted for sending.
    public var framesOut: UInt64 = 0

    /// ARP requests received (for any target) and ARP replies received, both well-formed.
    public var arpRequestsIn: UInt64 = 0
    public var arpRepliesIn: UInt64 = 0
    /// ARP requests sent (resolutions, refreshes, gratuitous announcements) and replies sent.
    public var arpRequestsOut: UInt64 = 0
    public var arpRepliesOut: UInt64 = 0
    /// ARP packets from another host claiming this host's address (not learned, not answered).
    public var arpAddressConflicts: UInt64 = 0

    /// Echo requests received (and answered, unless the answer was dropped for want of link room).
    public var icmpEchoRequestsIn: UInt64 = 0
    public var icmpEchoRepliesOut: UInt64 = 0
    /// Echo requests sent by `ping` and echo replies received (matching one or not).
    public var icmpEchoRequestsOut: UInt64 = 0
    public var icmpEchoRepliesIn: UInt64 = 0
    /// Well-formed ICMP messages of other types (ignored).
    public var icmpOtherIn: UInt64 = 0
    /// Port unreachable messages sent for datagrams to unbound ports.
    public var icmpUnreachableOut: UInt64 = 0

    /// Datagrams delivered to a socket's queue, and datagrams sent.
    public var udpIn: UInt64 = 0
    public var udpOut: UInt64 = 0

    /// Input drops: shorter than a header needs, or a length field pointing past the data.
    public var dropTruncated: UInt64 = 0
    /// Input drops: a header that cannot be right (IP version ≠ 4, IHL < 5, total length below the
    /// header, UDP length < 8, ARP for another hardware or protocol type, an unknown ARP operation).
    public var dropMalformed: UInt64 = 0
    /// Input drops: an IPv4 header, ICMP or UDP checksum that does not verify.
    public var dropBadChecksum: UInt64 = 0
    /// Input drops: an Ethernet destination other than this host or broadcast, an IPv4 destination
    /// other than this host, the limited broadcast or the subnet broadcast, or this host's own frame.
    public var dropNotForUs: UInt64 = 0
    /// Input drops: IPv4 fragments (MF set or a non-zero offset); NetStack does not reassemble.
    public var dropFragment: UInt64 = 0
    /// Input drops: an EtherType other than IPv4 and ARP, or an IP protocol other than ICMP and UDP.
    public var dropUnknownProtocol: UInt64 = 0
    /// Input drops: an impossible source (multicast or zero Ethernet source, a multicast, broadcast,
    /// loopback or own IPv4 source, an echo request from 0.0.0.0).
    public var dropMartian: UInt64 = 0
    /// Input drops: a datagram to a port no socket is bound to.
    public var dropNoSocket: UInt64 = 0
    /// Input drops: a datagram for a socket whose queue already holds `UDPSocket.queueLimit`.
    public var dropSocketQueueFull: UInt64 = 0
    /// Input drops: an echo request sent to a broadcast address (ignored, as Linux's
    /// icmp_echo_ignore_broadcasts).
    public var dropBroadcastEcho: UInt64 = 0
    /// Input drops: an echo request whose reply would not fit this link's MTU.
    public var dropOversize: UInt64 = 0

    /// Output drops: frames not sent because the link had no room after the retries.
    public var dropTransmitFull: UInt64 = 0

    public init() {}

    /// The sum of the input drop reasons.
    public var inputDrops: UInt64 {
        dropTruncated + dropMalformed + dropBadChecksum + dropNotForUs + dropFragment + dropUnknownProtocol
            + dropMartian + dropNoSocket + dropSocketQueueFull + dropBroadcastEcho + dropOversize
    }

    /// Received frames with an outcome: equals `framesIn` (every frame ends in exactly one counter).
    public var framesAccounted: UInt64 {
        arpRequestsIn + arpRepliesIn + icmpEchoRequestsIn + icmpEchoRepliesIn + icmpOtherIn + udpIn + inputDrops
    }
}

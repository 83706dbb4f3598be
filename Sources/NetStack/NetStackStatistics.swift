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

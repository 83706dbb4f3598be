/// What the switch and its policies need to know about one Ethernet frame: addresses, the
/// EtherType (after at most one VLAN tag) and, when the frame is ARP or IPv4 and its headers are
/// complete, their fields.
///
/// A plain struct of scalars: `parse` allocates nothing, so netback can call it for every frame.
/// The parser trusts nothing in the frame: every length it reads is checked against the bytes
/// present, and a header that is short or inconsistent sets `l3Malformed` instead of trapping.
public struct FrameInfo: Hashable, Sendable {
    /// EtherTypes the parser looks into.
    public static let etherTypeIPv4: UInt16 = 0x0800
    public static let etherTypeARP: UInt16 = 0x0806
    /// 802.1Q customer tag and 802.1ad service tag TPIDs: both are skipped as one VLAN tag.
    public static let etherTypeVLAN: UInt16 = 0x8100
    public static let etherTypeQinQ: UInt16 = 0x88A8

    /// IP protocol numbers the parser reads transport headers for.
    public static let protocolICMP: UInt8 = 1
    public static let protocolTCP: UInt8 = 6
    public static let protocolUDP: UInt8 = 17

    /// Ethernet header length without a tag.
    public static let ethernetHeaderLength = 14

    /// The fields of an Ethernet/IPv4 ARP packet (RFC 826).
    public struct ARP: Hashable, Sendable {
        /// 1 request, 2 reply (other values are reported as they are).
        public var operation: UInt16
        public var senderMAC: MACAddress
        public var senderIP: IPv4Address
        public var targetMAC: MACAddress
        public var targetIP: IPv4Address

        public init(operation: UInt16, senderMAC: MACAddress, senderIP: IPv4Address, targetMAC: MACAddress, targetIP: IPv4Address) {
            self.operation = operation
            self.senderMAC = senderMAC
            self.senderIP = senderIP
            self.targetMAC = targetMAC
            self.targetIP = targetIP
        }
    }

    /// The fields of an IPv4 packet and, for a first fragment, of its transport header.
    public struct IPv4: Hashable, Sendable {
        public var source: IPv4Address
        public var destination: IPv4Address
        /// The IP protocol number (1 ICMP, 6 TCP, 17 UDP, ...).
        public var `protocol`: UInt8
        /// A fragment other than the first (fragment offset not zero): it carries no transport
        /// header, so it has no ports and no ICMP type.
        public var isNonFirstFragment: Bool
        /// The More Fragments flag.
        public var moreFragments: Bool
        /// TCP/UDP ports: set for whole packets and first fragments (whose header is complete,
        /// or the packet would be malformed), nil otherwise.
        public var sourcePort: UInt16?
        public var destinationPort: UInt16?
        /// ICMP type and code, set like the ports.
        public var icmpType: UInt8?
        public var icmpCode: UInt8?

        public init(source: IPv4Address, destination: IPv4Address, protocol: UInt8, isNonFirstFragment: Bool = false,
                    moreFragments: Bool = false, sourcePort: UInt16? = nil, destinationPort: UInt16? = nil,
                    icmpType: UInt8? = nil, icmpCode: UInt8? = nil) {
            self.source = source
            self.destination = destination
            self.protocol = `protocol`
            self.isNonFirstFragment = isNonFirstFragment
            self.moreFragments = moreFragments
            self.sourcePort = sourcePort
            self.destinationPort = destinationPort
            self.icmpType = icmpType
            self.icmpCode = icmpCode
        }
    }

    /// Destination and source Ethernet addresses (`h_dest`/`h_source` of Linux's `struct ethhdr`).
    public var dst: MACAddress
    public var src: MACAddress
    /// The EtherType after skipping at most one VLAN tag. A frame with two stacked tags reports
    /// the inner TPID (0x8100/0x88A8) here and nothing of its payload.
    public var etherType: UInt16
    /// The VLAN id (low 12 bits of the TCI) when the frame carried a tag.
    public var vlanID: UInt16?
    /// An ARP or IPv4 frame whose header (or, for a whole packet or first fragment of TCP, UDP
    /// or ICMP, whose transport header) is truncated or inconsistent; also a truncated VLAN tag.
    /// `arp` and `ipv4` are then nil: nothing of the payload is to be believed.
    public var l3Malformed: Bool
    /// Set for a well-formed Ethernet/IPv4 ARP frame.
    public var arp: ARP?
    /// Set for a well-formed IPv4 frame.
    public var ipv4: IPv4?

    public init(dst: MACAddress, src: MACAddress, etherType: UInt16, vlanID: UInt16? = nil,
                l3Malformed: Bool = false, arp: ARP? = nil, ipv4: IPv4? = nil) {
        self.dst = dst
        self.src = src
        self.etherType = etherType
        self.vlanID = vlanID
        self.l3Malformed = l3Malformed
        self.arp = arp
        self.ipv4 = ipv4
    }

    /// Parses the headers of `frame` (starting at the destination MAC, no FCS expected; trailing
    /// padding is ignored). Nil when the frame is shorter than an Ethernet header.
    public static func parse(_ frame: UnsafeRawBufferPointer) -> FrameInfo? {
        guard frame.count >= ethernetHeaderLength, let p = frame.baseAddress else { return nil }
        let count = frame.count
        var info = FrameInfo(dst: MACAddress(bytes: p), src: MACAddress(bytes: p + 6), etherType: be16(p, 12))
        var offset = ethernetHeaderLength
        if info.etherType == etherTypeVLAN || info.etherType == etherTypeQinQ {
            guard count >= offset + 4 else {
                info.l3Malformed = true
                return info
            }
            info.vlanID = be16(p, offset) & 0x0FFF
            info.etherType = be16(p, offset + 2)
            offset += 4
        }
        switch info.etherType {
        case etherTypeARP: parseARP(p + offset, count - offset, into: &info)
        case etherTypeIPv4: parseIPv4(p + offset, count - offset, into: &info)
        default: break
        }
        return info
    }

    /// Parses `bytes` as a frame (a convenience for tests and slow paths; the same parser).
    public static func parse(_ bytes: [UInt8]) -> FrameInfo? {
        bytes.withUnsafeBytes { parse($0) }
    }

    /// Ethernet/IPv4 ARP: 28 bytes, hardware type 1, protocol 0x0800, lengths 6 and 4.
    private static func parseARP(_ p: UnsafeRawPointer, _ length: Int, into info: inout FrameInfo) {
        guard length >= 28, be16(p, 0) == 1, be16(p, 2) == etherTypeIPv4, p.load(fromByteOffset: 4, as: UInt8.self) == 6,
              p.load(fromByteOffset: 5, as: UInt8.self) == 4
        else {
            info.l3Malformed = true
            return
        }
        info.arp = ARP(operation: be16(p, 6), senderMAC: MACAddress(bytes: p + 8), senderIP: IPv4Address(bytes: p + 14),
                       targetMAC: MACAddress(bytes: p + 18), targetIP: IPv4Address(bytes: p + 24))
    }

    /// IPv4 (RFC 791): version 4, IHL at least 5, total length covering the header and within the
    /// bytes present. A whole packet or first fragment of TCP/UDP/ICMP must hold its transport
    /// header (TCP: its data offset, at least 20 bytes; UDP and ICMP: 8 bytes), else the packet
    /// is malformed: a first fragment too short for its ports is the RFC 1858 tiny-fragment trick
    /// (iptables drops such a packet when a port match examines it).
    private static func parseIPv4(_ p: UnsafeRawPointer, _ length: Int, into info: inout FrameInfo) {
        guard length >= 20 else {
            info.l3Malformed = true
            return
        }
        let versionIHL = p.load(fromByteOffset: 0, as: UInt8.self)
        let headerLength = Int(versionIHL & 0x0F) * 4
        let totalLength = Int(be16(p, 2))
        guard versionIHL >> 4 == 4, headerLength >= 20, totalLength >= headerLength, totalLength <= length else {
            info.l3Malformed = true
            return
        }
        let flagsFragment = be16(p, 6)
        var ip = IPv4(source: IPv4Address(bytes: p + 12), destination: IPv4Address(bytes: p + 16),
                      protocol: p.load(fromByteOffset: 9, as: UInt8.self),
                      isNonFirstFragment: flagsFragment & 0x1FFF != 0, moreFragments: flagsFragment & 0x2000 != 0)
        if !ip.isNonFirstFragment {
            let l4 = p + headerLength
            let l4Length = totalLength - headerLength
            switch ip.protocol {
            case protocolTCP:
                guard l4Length >= 20 else {
                    info.l3Malformed = true
                    return
                }
                let dataOffset = Int(l4.load(fromByteOffset: 12, as: UInt8.self) >> 4) * 4
                guard dataOffset >= 20, dataOffset <= l4Length else {
                    info.l3Malformed = true
                    return
                }
                ip.sourcePort = be16(l4, 0)
                ip.destinationPort = be16(l4, 2)
            case protocolUDP:
                guard l4Length >= 8 else {
                    info.l3Malformed = true
                    return
                }
                ip.sourcePort = be16(l4, 0)
                ip.destinationPort = be16(l4, 2)
            case protocolICMP:
                guard l4Length >= 8 else {
                    info.l3Malformed = true
                    return
                }
                ip.icmpType = l4.load(fromByteOffset: 0, as: UInt8.self)
                ip.icmpCode = l4.load(fromByteOffset: 1, as: UInt8.self)
            default:
                break
            }
        }
        info.ipv4 = ip
    }

    @inline(__always)
    private static func be16(_ p: UnsafeRawPointer, _ offset: Int) -> UInt16 {
        UInt16(p.load(fromByteOffset: offset, as: UInt8.self)) << 8 | UInt16(p.load(fromByteOffset: offset + 1, as: UInt8.self))
    }
}

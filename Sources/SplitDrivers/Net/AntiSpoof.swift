import ProcvisorABI

// Per-frame policy for netback's bridges: anti-spoofing per vif (here), the learning MAC table
// (`MACTable`), the vif `rate=` credit scheduler (`CreditScheduler`) and a frame-rate limiter for
// flooded frames (`FrameRateLimiter`). All of it is pure (time is passed in, in nanoseconds of a
// monotonic clock) and allocation-free per call.

/// The outcome of `AntiSpoof.check`.
public enum SpoofVerdict: Hashable, Sendable {
    case ok
    /// The Ethernet source is not the vif's MAC.
    case forgedMAC(found: MACAddress)
    /// An IPv4 source the vif may not use.
    case forgedIP(found: IPv4Address)
    /// An ARP packet whose sender MAC is not the vif's, or whose sender IP it may not use.
    case forgedARP(senderMAC: MACAddress, senderIP: IPv4Address)
    /// From an ip-restricted vif: an IPv4 or ARP frame too malformed to check, or a second VLAN
    /// tag that would hide one from the check.
    case malformed

    /// Whether the frame may enter the bridge.
    public var isOK: Bool { self == .ok }
}

/// What one vif may send: its own MAC always, and when `allowedIPs` is not empty only those
/// IPv4 source addresses (Xen's `ip=` for the vif).
///
/// As Xen's vif-common.sh antispoofing, only IPv4 and ARP are restricted by address: IPv6 and
/// other EtherTypes pass once their source MAC is the vif's.
public struct AntiSpoof: Hashable, Sendable {
    public let mac: MACAddress
    /// Empty: no IP restriction.
    public let allowedIPs: [IPv4Address]

    public init(mac: MACAddress, allowedIPs: [IPv4Address] = []) {
        self.mac = mac
        self.allowedIPs = allowedIPs
    }

    /// A vif with the `ip` text Xen keeps in the vif's backend directory (see `parseIPList`).
    public init(mac: MACAddress, ip text: String) throws {
        self.init(mac: mac, allowedIPs: try Self.parseIPList(text))
    }

    /// Parses Xen's `ip=` text: addresses separated by spaces, each `A.B.C.D` or `A.B.C.D/N`;
    /// the address part is what the vif may use (the prefix says which network it is on and does
    /// not widen what it may send from). Empty or blank text: no restriction (an empty list).
    public static func parseIPList(_ text: String) throws -> [IPv4Address] {
        var addresses: [IPv4Address] = []
        for word in text.split(whereSeparator: \.isWhitespace) {
            guard let network = IPv4Network(String(word)) else {
                throw NetPolicyError(setting: "ip", value: text,
                                     reason: "\"\(word)\" is not an IPv4 address (expected space-separated A.B.C.D or A.B.C.D/N)")
            }
            if !addresses.contains(network.address) { addresses.append(network.address) }
        }
        return addresses
    }

    /// UDP ports of a DHCP client request (client 68 to server 67).
    static let dhcpClientPort: UInt16 = 68
    static let dhcpServerPort: UInt16 = 67

    /// Whether a frame the vif sent may enter the bridge.
    ///
    /// - The Ethernet source must be the vif's MAC.
    /// - With `allowedIPs` set: an IPv4 source must be one of them, except 0.0.0.0 for a DHCP
    ///   request (UDP 68 to 67) sent before the guest has an address; an ARP sender MAC must be
    ///   the vif's and its sender IP one of them or 0.0.0.0 (an RFC 5227 probe). An IPv4 or ARP
    ///   frame too malformed to check, or a frame with two stacked VLAN tags, is `.malformed`.
    public func check(_ info: FrameInfo) -> SpoofVerdict {
        if info.src != mac { return .forgedMAC(found: info.src) }
        if allowedIPs.isEmpty { return .ok }
        switch info.etherType {
        case FrameInfo.etherTypeIPv4:
            guard let ip = info.ipv4 else { return .malformed }
            if allows(ip.source) { return .ok }
            if ip.source == .any, ip.protocol == FrameInfo.protocolUDP, ip.sourcePort == Self.dhcpClientPort,
               ip.destinationPort == Self.dhcpServerPort {
                return .ok
            }
            return .forgedIP(found: ip.source)
        case FrameInfo.etherTypeARP:
            guard let arp = info.arp else { return .malformed }
            guard arp.senderMAC == mac, arp.senderIP == .any || allows(arp.senderIP) else {
                return .forgedARP(senderMAC: arp.senderMAC, senderIP: arp.senderIP)
            }
            return .ok
        case FrameInfo.etherTypeVLAN, FrameInfo.etherTypeQinQ:
            // Still a tag after skipping one (or a truncated tag): what it carries is unchecked.
            return .malformed
        default:
            return .ok
        }
    }

    @inline(__always)
    private func allows(_ address: IPv4Address) -> Bool {
        for a in allowedIPs where a == address { return true }
        return false
    }
}




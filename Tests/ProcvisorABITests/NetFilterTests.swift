import ProcvisorABI
import Testing
import TestSupport

// FrameInfo.parse on frames built byte by byte, and the NetFilter rule language: parsing (good
// and every kind of bad), round trips, first-match semantics, every match key, and a fuzz test.

/// Frames assembled octet by octet, as they are on the wire.
private enum Wire {
    static let guestMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x00, 0x00, 0x01]
    static let peerMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x00, 0x00, 0x02]
    static let broadcastMAC: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

    static func u16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

    static func ethernet(dst: [UInt8] = peerMAC, src: [UInt8] = guestMAC, etherType: UInt16, vlan: UInt16? = nil,
                         payload: [UInt8]) -> [UInt8] {
        var f = dst + src
        if let vlan { f += [0x81, 0x00] + u16(vlan) }
        return f + u16(etherType) + payload
    }

    static func arp(op: UInt16 = 1, senderMAC: [UInt8] = guestMAC, senderIP: [UInt8], targetMAC: [UInt8] = [0, 0, 0, 0, 0, 0],
                    targetIP: [UInt8]) -> [UInt8] {
        [0x00, 0x01, 0x08, 0x00, 6, 4] + u16(op) + senderMAC + senderIP + targetMAC + targetIP
    }

    /// An IPv4 header (no checksum: nothing here checks it) followed by `payload`.
    static func ipv4(src: [UInt8], dst: [UInt8], proto: UInt8, payload: [UInt8], fragmentOffset: UInt16 = 0,
                     moreFragments: Bool = false, options: [UInt8] = [], totalLength: Int? = nil, version: UInt8 = 4,
                     ihl: UInt8? = nil) -> [UInt8] {
        let headerLength = 20 + options.count
        let ihlValue = ihl ?? UInt8(headerLength / 4)
        let total = UInt16(totalLength ?? headerLength + payload.count)
        let flags: UInt16 = (moreFragments ? 0x2000 : 0) | fragmentOffset
        var h: [UInt8] = [version << 4 | ihlValue, 0x00] + u16(total) + [0x12, 0x34] + u16(flags) + [64, proto, 0, 0]
        h += src + dst + options
        return h + payload
    }

    static func udp(src: UInt16, dst: UInt16, data: [UInt8] = [1, 2, 3, 4]) -> [UInt8] {
        u16(src) + u16(dst) + u16(UInt16(8 + data.count)) + [0, 0] + data
    }

    static func tcp(src: UInt16, dst: UInt16, dataOffset: UInt8 = 5) -> [UInt8] {
        var t = u16(src) + u16(dst) + [0, 0, 0, 1, 0, 0, 0, 0] + [dataOffset << 4, 0x02] + u16(65535) + [0, 0, 0, 0]
        if dataOffset > 5 { t += [UInt8](repeating: 1, count: Int(dataOffset - 5) * 4) }  // NOP options
        return t
    }

    static func icmp(type: UInt8, code: UInt8) -> [UInt8] { [type, code, 0, 0, 0, 1, 0, 1] }

    static let guestIP: [UInt8] = [10, 0, 0, 2]
    static let peerIP: [UInt8] = [10, 0, 0, 3]

    static func udpFrame(srcIP: [UInt8] = guestIP, dstIP: [UInt8] = peerIP, sport: UInt16 = 5000, dport: UInt16 = 53,
                         vlan: UInt16? = nil) -> [UInt8] {
        ethernet(etherType: 0x0800, vlan: vlan, payload: ipv4(src: srcIP, dst: dstIP, proto: 17, payload: udp(src: sport, dst: dport)))
    }

    static func tcpFrame(srcIP: [UInt8] = guestIP, dstIP: [UInt8] = peerIP, sport: UInt16 = 40000, dport: UInt16 = 22) -> [UInt8] {
        ethernet(etherType: 0x0800, payload: ipv4(src: srcIP, dst: dstIP, proto: 6, payload: tcp(src: sport, dst: dport)))
    }

    static func icmpFrame(type: UInt8 = 8, code: UInt8 = 0) -> [UInt8] {
        ethernet(etherType: 0x0800, payload: ipv4(src: guestIP, dst: peerIP, proto: 1, payload: icmp(type: type, code: code)))
    }

    static func arpFrame(op: UInt16 = 1) -> [UInt8] {
        ethernet(dst: broadcastMAC, etherType: 0x0806, payload: arp(op: op, senderIP: guestIP, targetIP: peerIP))
    }
}

private func info(_ bytes: [UInt8]) throws -> FrameInfo { try #require(FrameInfo.parse(bytes)) }

private let guest = MACAddress("00:16:3e:00:00:01")!
private let peer = MACAddress("00:16:3e:00:00:02")!

@Suite struct NetFilterFrameInfoTests {
    @Test func shorterThanAnEthernetHeaderIsNil() throws {
        #expect(FrameInfo.parse([]) == nil)
        #expect(FrameInfo.parse([UInt8](repeating: 0, count: 13)) == nil)
        let bare = try info(Wire.peerMAC + Wire.guestMAC + [0x86, 0xDD])
        #expect(bare.dst == peer && bare.src == guest && bare.etherType == 0x86DD)
        #expect(!bare.l3Malformed && bare.arp == nil && bare.ipv4 == nil && bare.vlanID == nil)
    }

    @Test func arpFields() throws {
        let f = try info(Wire.arpFrame(op: 2))
        #expect(f.dst == .broadcast && f.src == guest && f.etherType == 0x0806 && !f.l3Malformed)
        let arp = try #require(f.arp)
        #expect(arp.operation == 2)
        #expect(arp.senderMAC == guest && arp.senderIP == IPv4Address(10, 0, 0, 2))
        #expect(arp.targetMAC == MACAddress(value: 0) && arp.targetIP == IPv4Address(10, 0, 0, 3))
        #expect(f.ipv4 == nil)
    }

    @Test func arpTruncatedOrNotEthernetIPv4IsMalformed() throws {
        let good = Wire.arpFrame()
        let truncated = try info(Array(good.prefix(14 + 27)))
        #expect(truncated.l3Malformed && truncated.arp == nil && truncated.etherType == 0x0806)
        var wrongHardware = good
        wrongHardware[15] = 6  // htype 6 (IEEE 802)
        #expect(try info(wrongHardware).l3Malformed)
        var wrongLength = good
        wrongLength[18] = 8  // hlen 8
        #expect(try info(wrongLength).l3Malformed)
    }

    @Test func ipv4UDP() throws {
        let f = try info(Wire.udpFrame(sport: 68, dport: 67))
        #expect(f.etherType == 0x0800 && !f.l3Malformed)
        let ip = try #require(f.ipv4)
        #expect(ip.source == IPv4Address(10, 0, 0, 2) && ip.destination == IPv4Address(10, 0, 0, 3))
        #expect(ip.protocol == 17 && !ip.isNonFirstFragment && !ip.moreFragments)
        #expect(ip.sourcePort == 68 && ip.destinationPort == 67)
        #expect(ip.icmpType == nil)
    }

    @Test func ipv4TCPWithOptionsOnBothHeaders() throws {
        let payload = Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 6, payload: Wire.tcp(src: 40000, dst: 443, dataOffset: 8),
                                options: [1, 1, 1, 0])  // IHL 6
        let ip = try #require(try info(Wire.ethernet(etherType: 0x0800, payload: payload)).ipv4)
        #expect(ip.protocol == 6 && ip.sourcePort == 40000 && ip.destinationPort == 443)
    }

    @Test func ipv4ICMP() throws {
        let ip = try #require(try info(Wire.icmpFrame(type: 3, code: 13)).ipv4)
        #expect(ip.protocol == 1 && ip.icmpType == 3 && ip.icmpCode == 13 && ip.sourcePort == nil)
    }

    @Test func otherIPProtocolHasNoTransportFields() throws {
        let gre = Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 47, payload: [0, 0]))
        let ip = try #require(try info(gre).ipv4)
        #expect(ip.protocol == 47 && ip.sourcePort == nil && ip.icmpType == nil)
    }

    @Test func ethernetPaddingIsIgnored() throws {
        var f = Wire.icmpFrame()
        f += [UInt8](repeating: 0xEE, count: 60 - f.count + 10)
        let ip = try #require(try info(f).ipv4)
        #expect(ip.icmpType == 8)
    }

    @Test func vlanTagIsSkippedOnce() throws {
        let f = try info(Wire.udpFrame(vlan: 0x2064))  // PCP 1, VID 100
        #expect(f.vlanID == 100 && f.etherType == 0x0800)
        #expect(f.ipv4?.destinationPort == 53)

        let inner = Wire.udpFrame(vlan: 7)
        let stacked = Array(inner[0..<12]) + [0x88, 0xA8, 0x00, 0x05] + Array(inner[12...])
        let s = try info(stacked)
        #expect(s.vlanID == 5 && s.etherType == 0x8100 && s.ipv4 == nil && !s.l3Malformed)

        let truncatedTag = try info(Wire.peerMAC + Wire.guestMAC + [0x81, 0x00, 0x00])
        #expect(truncatedTag.l3Malformed && truncatedTag.etherType == 0x8100 && truncatedTag.vlanID == nil)
    }

    @Test func fragments() throws {
        let first = Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                        payload: Wire.udp(src: 1, dst: 2), moreFragments: true))
        let a = try #require(try info(first).ipv4)
        #expect(!a.isNonFirstFragment && a.moreFragments && a.sourcePort == 1 && a.destinationPort == 2)

        // A later fragment: its first bytes are data that would read as ports; there must be none.
        let later = Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                        payload: Wire.udp(src: 9, dst: 9), fragmentOffset: 185))
        let b = try #require(try info(later).ipv4)
        #expect(b.isNonFirstFragment && !b.moreFragments && b.sourcePort == nil && b.destinationPort == nil)
        #expect(b.protocol == 17 && b.destination == IPv4Address(10, 0, 0, 3))

        // RFC 1858 tiny first fragment: a TCP header cut at 8 bytes.
        let tiny = Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 6,
                                                                       payload: Array(Wire.tcp(src: 1, dst: 22).prefix(8)), moreFragments: true))
        let t = try info(tiny)
        #expect(t.l3Malformed && t.ipv4 == nil)
    }

    @Test(arguments: [
        ("header cut at 19 bytes", Array(Wire.udpFrame().prefix(14 + 19))),
        ("version 6 in an IPv4 frame", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                          payload: Wire.udp(src: 1, dst: 2), version: 6))),
        ("IHL 4", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                     payload: Wire.udp(src: 1, dst: 2), ihl: 4))),
        ("IHL 15 past the packet", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                      payload: Wire.udp(src: 1, dst: 2), ihl: 15))),
        ("total length past the frame", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                           payload: Wire.udp(src: 1, dst: 2), totalLength: 200))),
        ("total length below the header", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                             payload: Wire.udp(src: 1, dst: 2), totalLength: 19))),
        ("UDP header cut (total length)", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                             payload: Wire.udp(src: 1, dst: 2), totalLength: 27))),
        ("TCP header of 10 bytes", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 6,
                                                                                      payload: Array(Wire.tcp(src: 1, dst: 2).prefix(10))))),
        ("TCP data offset 4", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 6,
                                                                                 payload: Wire.tcp(src: 1, dst: 2, dataOffset: 4)))),
        ("TCP data offset past the packet", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 6,
                                                                                               payload: Array(Wire.tcp(src: 1, dst: 2, dataOffset: 10).prefix(24))))),
        ("ICMP of 4 bytes", Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 1, payload: [8, 0, 0, 0]))),
    ])
    func malformedIPv4(_ name: String, _ frame: [UInt8]) throws {
        let f = try info(frame)
        #expect(f.l3Malformed, "\(name)")
        #expect(f.ipv4 == nil && f.arp == nil, "\(name)")
        #expect(f.etherType == 0x0800 && f.src == guest, "\(name)")
    }
}

@Suite struct NetFilterTests {
    private func rule(_ text: String) throws -> NetFilterRule { try NetFilterRule.parse(text) }

    private func parseError(_ text: String) -> NetFilterError? {
        do {
            _ = try NetFilterRuleSet.parse(text)
            return nil
        } catch let e as NetFilterError {
            return e
        } catch {
            return nil
        }
    }

    @Test func parsesEveryKey() throws {
        let r = try rule("drop src-mac=00:16:3e:00:00:01 dst-mac=ff:ff:ff:ff:ff:ff src-ip=10.0.0.0/24 dst-ip=10.0.1.5 proto=tcp src-port=1024-65535 dst-port=22 in=vif3.0")
        #expect(r.action == .drop)
        #expect(r.sourceMAC == guest && r.destinationMAC == .broadcast)
        #expect(r.sourceIP == IPv4Network("10.0.0.0/24") && r.destinationIP == IPv4Network("10.0.1.5/32"))
        #expect(r.proto == .tcp)
        #expect(r.sourcePort == NetFilterPortRange(1024, 65535) && r.destinationPort == NetFilterPortRange(22, 22))
        #expect(r.ingress == "vif3.0")
        #expect(try rule("accept") == NetFilterRule(action: .accept))
        #expect(try rule("  accept\tin=uplink   # the uplink may send anything") == NetFilterRule(action: .accept, ingress: "uplink"))
    }

    @Test func protocolNumbersAndNetworksAreNormalized() throws {
        #expect(try rule("drop proto=6") == rule("drop proto=tcp"))
        #expect(try rule("drop proto=17") == rule("drop proto=udp"))
        #expect(try rule("drop proto=1") == rule("drop proto=icmp"))
        #expect(try rule("drop proto=0").proto == .ip(0))
        #expect(try rule("drop proto=255").proto == .ip(255))
        #expect(try rule("drop proto=6 dst-port=80").destinationPort == NetFilterPortRange(80, 80))
        #expect(try rule("drop src-ip=10.0.0.77/24").sourceIP == IPv4Network("10.0.0.0/24"))
        #expect(try rule("drop src-ip=10.0.0.77/24").description == "drop src-ip=10.0.0.0/24")
        #expect(NetFilterRule(action: .drop, proto: .ip(6)).proto == .tcp)
    }

    @Test(arguments: [
        "accept",
        "drop",
        "drop src-mac=00:16:3e:00:00:01",
        "accept dst-mac=ff:ff:ff:ff:ff:ff in=uplink",
        "drop src-ip=10.0.0.0/8",
        "drop dst-ip=192.168.1.1",
        "drop src-ip=0.0.0.0/0 dst-ip=10.1.2.3",
        "accept proto=arp",
        "accept proto=ipv4",
        "drop proto=icmp",
        "drop proto=47",
        "drop proto=0",
        "accept proto=udp src-port=68 dst-port=67",
        "drop proto=tcp dst-port=0-1023",
        "drop proto=tcp src-port=65535",
        "drop src-mac=02:00:00:00:00:0a dst-mac=02:00:00:00:00:0b src-ip=1.2.3.0/24 dst-ip=4.5.6.7 proto=udp src-port=1-2 dst-port=3-4 in=vif12.1",
    ])
    func descriptionRoundTrips(_ text: String) throws {
        let r = try rule(text)
        #expect(r.description == text)
        #expect(try rule(r.description) == r)
    }

    @Test func ruleSetRoundTripsAndSkipsCommentsAndBlankLines() throws {
        let text = """
            # dom0 firewall for bridge xenbr0

            accept in=uplink
            accept proto=arp   # ARP is L2
            drop proto=tcp dst-port=22\r
               \t
            drop
            """
        let set = try NetFilterRuleSet.parse(text)
        #expect(set.rules.count == 4)
        #expect(set.rules[2] == NetFilterRule(action: .drop, proto: .tcp, destinationPort: NetFilterPortRange(22, 22)))
        #expect(try NetFilterRuleSet.parse(set.description) == set)
        #expect(try NetFilterRuleSet.parse("").isEmpty)
        #expect(try NetFilterRuleSet.parse("# nothing\n\n").isEmpty)
        #expect(try NetFilterRuleSet.parse("accept in=uplink\r\ndrop\r\n").rules.count == 2)
        #expect(parseError("accept\r\n\r\ndrop src_ip=1")?.line == 3, "CRLF lines are counted like LF lines")
    }

    @Test func theExampleErrorMessage() {
        let e = parseError("accept proto=arp\ndrop src_ip=10.0.0.1")
        #expect(e?.line == 2)
        #expect(e?.word == "src_ip=10.0.0.1")
        #expect(e?.problem == .unknownKey)
        #expect(e?.description == "line 2: unknown match key \"src_ip\" (expected src-mac, dst-mac, src-ip, dst-ip, proto, src-port, dst-port, in)")
    }

    @Test(arguments: [
        ("allow src-ip=10.0.0.1", "allow", "unknown action \"allow\" (expected accept or drop)"),
        ("DROP", "DROP", "unknown action"),
        ("drop src-ip", "src-ip", "is not a KEY=VALUE match"),
        ("drop src-ip=", "src-ip=", "has no value"),
        ("drop =10.0.0.1", "=10.0.0.1", "unknown match key \"\""),
        ("drop SRC-IP=10.0.0.1", "SRC-IP=10.0.0.1", "unknown match key \"SRC-IP\""),
        ("drop src-mac=00:16:3e:00:00", "src-mac=00:16:3e:00:00", "a MAC address"),
        ("drop dst-mac=zz:16:3e:00:00:01", "dst-mac=zz:16:3e:00:00:01", "a MAC address"),
        ("drop src-ip=10.0.0.256", "src-ip=10.0.0.256", "IPv4 address"),
        ("drop dst-ip=10.0.0.0/33", "dst-ip=10.0.0.0/33", "IPv4 address"),
        ("drop dst-ip=10.0.0", "dst-ip=10.0.0", "IPv4 address"),
        ("drop proto=sctp", "proto=sctp", "IP protocol number 0-255"),
        ("drop proto=256", "proto=256", "IP protocol number 0-255"),
        ("drop proto=-1", "proto=-1", "IP protocol number"),
        ("drop proto=TCP", "proto=TCP", "IP protocol number"),
        ("drop proto=tcp dst-port=65536", "dst-port=65536", "0 <= N <= M <= 65535"),
        ("drop proto=tcp dst-port=80-79", "dst-port=80-79", "0 <= N <= M <= 65535"),
        ("drop proto=tcp dst-port=-80", "dst-port=-80", "port"),
        ("drop proto=udp src-port=http", "src-port=http", "port"),
        ("drop proto=udp src-port=1-2-3", "src-port=1-2-3", "port"),
        ("drop dst-port=22", "dst-port=22", "needs proto=tcp or proto=udp"),
        ("drop src-port=22 proto=icmp", "src-port=22", "needs proto=tcp or proto=udp"),
        ("drop proto=ipv4 dst-port=22", "dst-port=22", "needs proto=tcp or proto=udp"),
        ("drop src-ip=10.0.0.1 src-ip=10.0.0.2", "src-ip=10.0.0.2", "given twice"),
        ("drop in=vif1.0 in=vif2.0", "in=vif2.0", "given twice"),
        ("drop in=vif1.0/x", "in=vif1.0/x", "port name"),
    ])
    func badRules(_ line: String, _ word: String, _ message: String) {
        let e = parseError("# first line\n\naccept in=uplink\n" + line)
        #expect(e?.line == 4, "\(line)")
        #expect(e?.word == word, "\(line)")
        #expect(e?.description.hasPrefix("line 4: ") == true, "\(line)")
        #expect(e?.description.contains(message) == true, "\(e?.description ?? "no error") for \(line)")
    }

    @Test func singleRuleErrorsHaveNoLineNumber() {
        #expect(throws: NetFilterError(word: "", problem: .emptyRule)) { try NetFilterRule.parse("  # just a comment") }
        #expect(throws: NetFilterError(word: "reject", problem: .unknownAction)) { try NetFilterRule.parse("reject") }
        #expect(NetFilterError(word: "reject", problem: .unknownAction).description == "unknown action \"reject\" (expected accept or drop)")
    }

    @Test func firstMatchWinsAndDefaultIsAccept() throws {
        let set = try NetFilterRuleSet.parse("""
            accept proto=tcp dst-port=22 src-ip=10.0.0.2
            drop proto=tcp dst-port=22
            drop proto=udp
            """)
        let sshFromGuest = try info(Wire.tcpFrame(dport: 22))
        let sshFromOther = try info(Wire.tcpFrame(srcIP: [10, 0, 0, 9], dport: 22))
        #expect(set.evaluate(sshFromGuest, ingress: "vif1.0") == NetFilterVerdict(action: .accept, ruleIndex: 0))
        #expect(set.evaluate(sshFromOther, ingress: "vif1.0") == NetFilterVerdict(action: .drop, ruleIndex: 1))
        #expect(set.verdict(sshFromOther, ingress: "vif1.0") == .drop)
        #expect(set.evaluate(try info(Wire.udpFrame()), ingress: "vif1.0") == NetFilterVerdict(action: .drop, ruleIndex: 2))
        let web = try info(Wire.tcpFrame(dport: 80))
        #expect(set.evaluate(web, ingress: "vif1.0") == NetFilterVerdict(action: .accept, ruleIndex: nil))
        #expect(set.verdict(try info(Wire.arpFrame()), ingress: "vif1.0") == .accept)
        #expect(NetFilterRuleSet().verdict(sshFromOther, ingress: "uplink") == .accept)
        #expect(try NetFilterRuleSet.parse("drop\naccept").verdict(web, ingress: "uplink") == .drop)
    }

    @Test func everyMatchKey() throws {
        let udp = try info(Wire.udpFrame(sport: 5000, dport: 53))
        let cases: [(String, Bool)] = [
            ("drop src-mac=00:16:3e:00:00:01", true),
            ("drop src-mac=00:16:3e:00:00:02", false),
            ("drop dst-mac=00:16:3e:00:00:02", true),
            ("drop dst-mac=00:16:3e:00:00:01", false),
            ("drop src-ip=10.0.0.2", true),
            ("drop src-ip=10.0.0.0/30", true),
            ("drop src-ip=10.0.0.4/30", false),
            ("drop src-ip=0.0.0.0/0", true),
            ("drop dst-ip=10.0.0.3", true),
            ("drop dst-ip=10.0.0.2", false),
            ("drop proto=ipv4", true),
            ("drop proto=arp", false),
            ("drop proto=udp", true),
            ("drop proto=tcp", false),
            ("drop proto=icmp", false),
            ("drop proto=17", true),
            ("drop proto=udp src-port=5000", true),
            ("drop proto=udp src-port=4000-4999", false),
            ("drop proto=udp src-port=5000-5001", true),
            ("drop proto=udp dst-port=53", true),
            ("drop proto=udp dst-port=54-60", false),
            ("drop proto=tcp dst-port=53", false),
            ("drop in=vif3.0", true),
            ("drop in=vif3.1", false),
            ("drop in=uplink", false),
            ("drop src-ip=10.0.0.2 dst-ip=10.0.0.3 proto=udp dst-port=53 in=vif3.0", true),
            ("drop src-ip=10.0.0.2 dst-ip=10.0.0.3 proto=udp dst-port=53 in=uplink", false),
        ]
        for (text, expected) in cases {
            #expect(try rule(text).matches(udp, ingress: "vif3.0") == expected, "\(text)")
        }
        let arp = try info(Wire.arpFrame())
        #expect(try rule("drop proto=arp").matches(arp, ingress: "x"))
        #expect(try !rule("drop proto=ipv4").matches(arp, ingress: "x"))
        #expect(try !rule("drop src-ip=0.0.0.0/0").matches(arp, ingress: "x"), "IP keys look at IPv4 only")
        #expect(try !rule("drop dst-ip=10.0.0.3").matches(arp, ingress: "x"))
        let ping = try info(Wire.icmpFrame())
        #expect(try rule("drop proto=icmp").matches(ping, ingress: "x"))
        #expect(try rule("drop proto=1 dst-ip=10.0.0.3").matches(ping, ingress: "x"))
        let ssh = try info(Wire.tcpFrame(sport: 40000, dport: 22))
        #expect(try rule("drop proto=tcp src-port=32768-60999 dst-port=22").matches(ssh, ingress: "x"))
        #expect(try !rule("drop proto=udp dst-port=22").matches(ssh, ingress: "x"))
    }

    @Test func malformedL3IsNeverMatchedByIPKeys() throws {
        let cut = try info(Array(Wire.tcpFrame(dport: 22).prefix(14 + 30)))
        #expect(cut.l3Malformed)
        for text in ["drop src-ip=0.0.0.0/0", "drop dst-ip=0.0.0.0/0", "drop proto=tcp", "drop proto=tcp dst-port=0-65535",
                     "drop proto=udp src-port=0-65535", "drop proto=icmp", "drop proto=0"] {
            #expect(try !rule(text).matches(cut, ingress: "vif1.0"), "\(text)")
        }
        #expect(try rule("drop proto=ipv4").matches(cut, ingress: "vif1.0"))
        #expect(try rule("drop src-mac=00:16:3e:00:00:01 in=vif1.0").matches(cut, ingress: "vif1.0"))
        #expect(try rule("drop").matches(cut, ingress: "vif1.0"))
        let badARP = try info(Array(Wire.arpFrame().prefix(30)))
        #expect(try rule("drop proto=arp").matches(badARP, ingress: "vif1.0"))
    }

    @Test func nonFirstFragmentsHaveNoPorts() throws {
        let later = try info(Wire.ethernet(etherType: 0x0800, payload: Wire.ipv4(src: Wire.guestIP, dst: Wire.peerIP, proto: 17,
                                                                                payload: Wire.udp(src: 53, dst: 53), fragmentOffset: 100)))
        #expect(try !rule("drop proto=udp dst-port=0-65535").matches(later, ingress: "x"))
        #expect(try rule("drop proto=udp dst-ip=10.0.0.3").matches(later, ingress: "x"))
    }

    @Test func fuzzParseAndVerdictNeverCrash() throws {
        let set = try NetFilterRuleSet.parse("""
            accept proto=udp src-port=68 dst-port=67
            drop src-ip=10.0.0.0/8 proto=tcp dst-port=1-1024 in=vif1.0
            drop proto=icmp dst-ip=10.0.0.3
            drop proto=arp src-mac=00:16:3e:00:00:09
            accept proto=ipv4
            drop
            """)
        let seeds = [Wire.udpFrame(), Wire.tcpFrame(), Wire.icmpFrame(), Wire.arpFrame(), Wire.udpFrame(vlan: 3)]
        var rng = SplitMix64(state: 0x5EED)
        var parsed = 0, malformed = 0
        for i in 0..<60_000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int.random(in: 0...96, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                // Steer half of the random frames into the IPv4/ARP/VLAN parsers.
                if bytes.count >= 14, Bool.random(using: &rng) {
                    let types: [(UInt8, UInt8)] = [(0x08, 0x00), (0x08, 0x06), (0x81, 0x00), (0x88, 0xA8)]
                    let t = types[Int.random(in: 0..<types.count, using: &rng)]
                    bytes[12] = t.0
                    bytes[13] = t.1
                    if bytes.count > 14, Bool.random(using: &rng) { bytes[14] = 0x45 }
                }
            } else {
                bytes = seeds[i % seeds.count]
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
            }
            guard let f = FrameInfo.parse(bytes) else {
                #expect(bytes.count < 14)
                continue
            }
            parsed += 1
            if f.l3Malformed {
                malformed += 1
                #expect(f.ipv4 == nil && f.arp == nil)
            }
            if let ip = f.ipv4 {
                #expect(f.etherType == 0x0800)
                if ip.sourcePort != nil { #expect(!ip.isNonFirstFragment && (ip.protocol == 6 || ip.protocol == 17)) }
                if ip.icmpType != nil { #expect(!ip.isNonFirstFragment && ip.protocol == 1) }
            }
            if f.arp != nil { #expect(f.etherType == 0x0806) }
            _ = set.evaluate(f, ingress: i % 3 == 0 ? "vif1.0" : "uplink")
        }
        #expect(parsed > 30_000)
        #expect(malformed > 1_000)
    }
}

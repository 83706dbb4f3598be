/// What a filter decides for a frame.
public enum NetFilterAction: String, Hashable, Sendable, CustomStringConvertible {
    case accept
    case drop

    public var description: String { rawValue }
}

/// The `proto=` match: an EtherType (`arp`, `ipv4`) or an IP protocol (`icmp`, `tcp`, `udp`, a
/// number). Numbers 1, 6 and 17 are parsed as `icmp`, `tcp`, `udp`, so `proto=6` and `proto=tcp`
/// are the same rule.
public enum NetFilterProtocol: Hashable, Sendable, CustomStringConvertible {
    case arp
    case ipv4
    case icmp
    case tcp
    case udp
    /// Any other IP protocol number.
    case ip(UInt8)

    /// `arp`, `ipv4`, `icmp`, `tcp`, `udp` or a decimal 0–255; nil otherwise.
    public init?(_ text: String) {
        switch text {
        case "arp": self = .arp
        case "ipv4": self = .ipv4
        case "icmp": self = .icmp
        case "tcp": self = .tcp
        case "udp": self = .udp
        default:
            guard (1...3).contains(text.count), text.allSatisfy({ $0 >= "0" && $0 <= "9" }), let n = UInt8(text) else { return nil }
            self.init(ipProtocol: n)
        }
    }

    /// The protocol for an IP protocol number (1, 6, 17 become `icmp`, `tcp`, `udp`).
    public init(ipProtocol n: UInt8) {
        switch n {
        case FrameInfo.protocolICMP: self = .icmp
        case FrameInfo.protocolTCP: self = .tcp
        case FrameInfo.protocolUDP: self = .udp
        default: self = .ip(n)
        }
    }

    /// The IP protocol number this matches, nil for `arp` and `ipv4`.
    public var ipProtocol: UInt8? {
        switch self {
        case .arp, .ipv4: return nil
        case .icmp: return FrameInfo.protocolICMP
        case .tcp: return FrameInfo.protocolTCP
        case .udp: return FrameInfo.protocolUDP
        case .ip(let n): return n
        }
    }

    public var description: String {
        switch self {
        case .arp: return "arp"
        case .ipv4: return "ipv4"
        case .icmp: return "icmp"
        case .tcp: return "tcp"
        case .udp: return "udp"
        case .ip(let n): return String(n)
        }
    }
}

/// An inclusive range of TCP/UDP ports. Text form: `N` or `N-M`.
public struct NetFilterPortRange: Hashable, Sendable, CustomStringConvertible {
    public let lower: UInt16
    public let upper: UInt16

    public init(_ lower: UInt16, _ upper: UInt16) {
        precondition(lower <= upper, "a port range's lower bound is at most its upper bound")
        self.lower = lower
        self.upper = upper
    }

    /// `N` or `N-M` with 0 ≤ N ≤ M ≤ 65535, decimal; nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let lo = Self.port(parts[0]) else { return nil }
        var hi = lo
        if parts.count == 2 {
            guard let h = Self.port(parts[1]) else { return nil }
            hi = h
        }
        guard lo <= hi else { return nil }
        self.init(lo, hi)
    }

    private static func port(_ s: Substring) -> UInt16? {
        guard (1...5).contains(s.count), s.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return UInt16(s)
    }

    @inline(__always)
    public func contains(_ port: UInt16) -> Bool { port >= lower && port <= upper }

    public var description: String { lower == upper ? String(lower) : "\(lower)-\(upper)" }
}

/// A rule that cannot be parsed: which line (in a rule set), which word, and what is wrong.
public struct NetFilterError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Problem: Hashable, Sendable {
        /// The line has no words (only for `NetFilterRule.parse`; a rule set skips blank lines).
        case emptyRule
        /// The first word is not `accept` or `drop`.
        case unknownAction
        /// A match word without `=`.
        case notKeyValue
        /// `KEY=` with nothing after the `=`.
        case missingValue
        case unknownKey
        /// The key is known; its value is not valid for it. `expected` says what would be.
        case badValue(expected: String)
        case duplicateKey
        /// `src-port=`/`dst-port=` in a rule without `proto=tcp` or `proto=udp`.
        case portWithoutTCPOrUDP
    }

    /// 1-based line number in the rule set's text; nil when a single rule was parsed.
    public var line: Int?
    /// The offending word as written (the whole `KEY=VALUE` for a match).
    public var word: String
    public var problem: Problem

    public init(line: Int? = nil, word: String, problem: Problem) {
        self.line = line
        self.word = word
        self.problem = problem
    }

    public var description: String {
        let prefix = line.map { "line \($0): " } ?? ""
        switch problem {
        case .emptyRule:
            return prefix + "empty rule (expected ACTION [KEY=VALUE ...], ACTION accept or drop)"
        case .unknownAction:
            return prefix + "unknown action \"\(word)\" (expected accept or drop)"
        case .notKeyValue:
            return prefix + "\"\(word)\" is not a KEY=VALUE match (keys: \(NetFilterRule.keys.joined(separator: ", ")))"
        case .missingValue:
            return prefix + "\"\(word)\" has no value after '='"
        case .unknownKey:
            let key = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? word
            return prefix + "unknown match key \"\(key)\" (expected \(NetFilterRule.keys.joined(separator: ", ")))"
        case .badValue(let expected):
            return prefix + "bad value in \"\(word)\" (expected \(expected))"
        case .duplicateKey:
            let key = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? word
            return prefix + "\"\(word)\": \(key) is given twice in one rule (all matches must hold: give it once)"
        case .portWithoutTCPOrUDP:
            return prefix + "\"\(word)\" needs proto=tcp or proto=udp in the same rule"
        }
    }
}

/// One filter rule: `ACTION [KEY=VALUE ...]`. Every match given must hold (AND); a rule with no
/// matches matches every frame.
///
/// IP matches (`src-ip`, `dst-ip`, `proto=icmp|tcp|udp|N`, ports) look at IPv4 frames only and
/// never match a frame whose L3 is malformed; `proto=arp`/`proto=ipv4` look at the EtherType and
/// do match malformed ARP/IPv4 frames. Ports match whole packets and first fragments; a
/// non-first fragment has no ports and so never matches a port rule (as iptables).
public struct NetFilterRule: Hashable, Sendable, CustomStringConvertible {
    /// The match keys, in the order `description` writes them.
    public static let keys = ["src-mac", "dst-mac", "src-ip", "dst-ip", "proto", "src-port", "dst-port", "in"]

    public private(set) var action: NetFilterAction
    public private(set) var sourceMAC: MACAddress?
    public private(set) var destinationMAC: MACAddress?
    /// Normalized: host bits below the prefix are cleared (`10.0.0.5/24` is `10.0.0.0/24`).
    public private(set) var sourceIP: IPv4Network?
    public private(set) var destinationIP: IPv4Network?
    public private(set) var proto: NetFilterProtocol?
    public private(set) var sourcePort: NetFilterPortRange?
    public private(set) var destinationPort: NetFilterPortRange?
    /// The ingress port name (`vif3.0`, `uplink`).
    public private(set) var ingress: String?

    /// A rule from its parts. Port ranges without `proto` tcp/udp are a programming error here
    /// (the text parser reports them as `portWithoutTCPOrUDP`).
    public init(action: NetFilterAction, sourceMAC: MACAddress? = nil, destinationMAC: MACAddress? = nil,
                sourceIP: IPv4Network? = nil, destinationIP: IPv4Network? = nil, proto: NetFilterProtocol? = nil,
                sourcePort: NetFilterPortRange? = nil, destinationPort: NetFilterPortRange? = nil, ingress: String? = nil) {
        precondition((sourcePort == nil && destinationPort == nil) || proto == .tcp || proto == .udp,
                     "a port match needs proto tcp or udp")
        self.action = action
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.sourceIP = sourceIP.map(Self.normalized)
        self.destinationIP = destinationIP.map(Self.normalized)
        if case .ip(let n)? = proto { self.proto = NetFilterProtocol(ipProtocol: n) } else { self.proto = proto }
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.ingress = ingress
    }

    /// Parses one rule. Text from `#` to the end is a comment. Throws `NetFilterError` (with no
    /// line number) for an empty line or any bad word.
    public static func parse(_ line: String) throws -> NetFilterRule {
        guard let rule = try parse(line, lineNumber: nil) else {
            throw NetFilterError(word: "", problem: .emptyRule)
        }
        return rule
    }

    /// Nil for a blank or comment-only line.
    static func parse(_ line: String, lineNumber: Int?) throws -> NetFilterRule? {
        let code = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let words = code.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let first = words.first else { return nil }
        func fail(_ word: String, _ problem: NetFilterError.Problem) -> NetFilterError {
            NetFilterError(line: lineNumber, word: word, problem: problem)
        }
        guard let action = NetFilterAction(rawValue: first) else { throw fail(first, .unknownAction) }
        var rule = NetFilterRule(action: action)
        var seen = Set<String>()
        var portWord: String?
        for word in words.dropFirst() {
            let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2 else { throw fail(word, .notKeyValue) }
            let key = String(kv[0]), value = String(kv[1])
            guard keys.contains(key) else { throw fail(word, .unknownKey) }
            guard !value.isEmpty else { throw fail(word, .missingValue) }
            guard seen.insert(key).inserted else { throw fail(word, .duplicateKey) }
            switch key {
            case "src-mac", "dst-mac":
                guard let mac = MACAddress(value) else { throw fail(word, .badValue(expected: "a MAC address aa:bb:cc:dd:ee:ff")) }
                if key == "src-mac" { rule.sourceMAC = mac } else { rule.destinationMAC = mac }
            case "src-ip", "dst-ip":
                guard let net = IPv4Network(value) else {
                    throw fail(word, .badValue(expected: "an IPv4 address A.B.C.D or network A.B.C.D/N, N 0-32"))
                }
                if key == "src-ip" { rule.sourceIP = normalized(net) } else { rule.destinationIP = normalized(net) }
            case "proto":
                guard let p = NetFilterProtocol(value) else {
                    throw fail(word, .badValue(expected: "arp, ipv4, icmp, tcp, udp or an IP protocol number 0-255"))
                }
                rule.proto = p
            case "src-port", "dst-port":
                guard let range = NetFilterPortRange(value) else {
                    throw fail(word, .badValue(expected: "a port N or range N-M, 0 <= N <= M <= 65535"))
                }
                if key == "src-port" { rule.sourcePort = range } else { rule.destinationPort = range }
                portWord = portWord ?? word
            default:  // "in"
                guard value.utf8.count <= 64, value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
                    throw fail(word, .badValue(expected: "a port name of letters, digits, '.', '_' and '-', such as vif3.0 or uplink"))
                }
                rule.ingress = value
            }
        }
        if let portWord, rule.proto != .tcp, rule.proto != .udp { throw fail(portWord, .portWithoutTCPOrUDP) }
        return rule
    }

    private static func normalized(_ n: IPv4Network) -> IPv4Network {
        IPv4Network(address: IPv4Address(value: n.address.value & n.mask), prefixLength: n.prefixLength)
    }

    /// Whether every match of this rule holds for `info` arriving on `ingress`.
    @inline(__always)
    public func matches(_ info: FrameInfo, ingress port: String) -> Bool {
        if let sourceMAC, info.src != sourceMAC { return false }
        if let destinationMAC, info.dst != destinationMAC { return false }
        if let proto {
            switch proto {
            case .arp: if info.etherType != FrameInfo.etherTypeARP { return false }
            case .ipv4: if info.etherType != FrameInfo.etherTypeIPv4 { return false }
            default: if info.ipv4?.protocol != proto.ipProtocol { return false }
            }
        }
        if sourceIP != nil || destinationIP != nil || sourcePort != nil || destinationPort != nil {
            // ipv4 is nil for non-IPv4 frames and for malformed ones: IP matches never hold then.
            guard let ip = info.ipv4 else { return false }
            if let sourceIP, !sourceIP.contains(ip.source) { return false }
            if let destinationIP, !destinationIP.contains(ip.destination) { return false }
            if let sourcePort {
                guard let p = ip.sourcePort, sourcePort.contains(p) else { return false }
            }
            if let destinationPort {
                guard let p = ip.destinationPort, destinationPort.contains(p) else { return false }
            }
        }
        if let ingress, ingress != port { return false }
        return true
    }

    /// The rule in the text form `parse` reads back to an equal rule, keys in `keys` order.
    public var description: String {
        var words = [action.rawValue]
        if let sourceMAC { words.append("src-mac=\(sourceMAC)") }
        if let destinationMAC { words.append("dst-mac=\(destinationMAC)") }
        if let sourceIP { words.append("src-ip=\(Self.text(sourceIP))") }
        if let destinationIP { words.append("dst-ip=\(Self.text(destinationIP))") }
        if let proto { words.append("proto=\(proto)") }
        if let sourcePort { words.append("src-port=\(sourcePort)") }
        if let destinationPort { words.append("dst-port=\(destinationPort)") }
        if let ingress { words.append("in=\(ingress)") }
        return words.joined(separator: " ")
    }

    private static func text(_ n: IPv4Network) -> String { n.prefixLength == 32 ? n.address.description : n.description }
}

/// The outcome of a rule set for one frame: the action and which rule decided it (nil: no rule
/// matched and the default, accept, applied), for per-rule counters.
public struct NetFilterVerdict: Hashable, Sendable {
    public var action: NetFilterAction
    public var ruleIndex: Int?

    public init(action: NetFilterAction, ruleIndex: Int?) {
        self.action = action
        self.ruleIndex = ruleIndex
    }
}

/// An ordered list of rules, as set from dom0. Rules are tried in order; the first that matches
/// decides; a frame no rule matches is accepted.
public struct NetFilterRuleSet: Hashable, Sendable, CustomStringConvertible {
    public var rules: [NetFilterRule]

    public init(_ rules: [NetFilterRule] = []) { self.rules = rules }

    /// Parses one rule per line; blank lines and `#` comments are skipped. Throws the first
    /// `NetFilterError`, with its 1-based line number and the bad word.
    public static func parse(_ text: String) throws -> NetFilterRuleSet {
        var rules: [NetFilterRule] = []
        // "\r\n" is one Character in Swift: split on it too, so CRLF text counts lines right.
        for (i, line) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            if let rule = try NetFilterRule.parse(String(line), lineNumber: i + 1) { rules.append(rule) }
        }
        return NetFilterRuleSet(rules)
    }

    public var isEmpty: Bool { rules.isEmpty }

    /// The action for `info` arriving on the port named `ingress`.
    @inline(__always)
    public func verdict(_ info: FrameInfo, ingress: String) -> NetFilterAction {
        if rules.isEmpty { return .accept }
        return evaluate(info, ingress: ingress).action
    }

    /// The action and the index of the deciding rule (nil when none matched).
    public func evaluate(_ info: FrameInfo, ingress: String) -> NetFilterVerdict {
        for i in rules.indices where rules[i].matches(info, ingress: ingress) {
            return NetFilterVerdict(action: rules[i].action, ruleIndex: i)
        }
        return NetFilterVerdict(action: .accept, ruleIndex: nil)
    }

    /// The rules, one per line, in the form `parse` reads back to an equal set.
    public var description: String { rules.map(\.description).joined(separator: "\n") }
}

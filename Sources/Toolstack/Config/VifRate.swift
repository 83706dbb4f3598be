/// A vif's outgoing bandwidth limit (`rate=` in a vif spec), credit based as in Xen's netback:
/// `bytesPerInterval` bytes of credit are replenished every `intervalMicroseconds`.
public struct VifRate: Codable, Equatable, Sendable {
    /// Credit added each interval.
    public var bytesPerInterval: UInt64
    /// Replenishment interval; 50 ms unless given after `@`.
    public var intervalMicroseconds: UInt64

    /// Creates a rate.
    public init(bytesPerInterval: UInt64, intervalMicroseconds: UInt64) {
        self.bytesPerInterval = bytesPerInterval
        self.intervalMicroseconds = intervalMicroseconds
    }

    /// Xen's default replenishment interval.
    public static let defaultIntervalMicroseconds: UInt64 = 50_000

    /// Parses `RATE[@INTERVAL]` exactly as libxlu's `xlu_vif_parse_rate` does:
    ///
    /// - RATE matches `[0-9]+[GMK]?[Bb]/s`: B is bytes, b bits (divided by 8), G/M/K are powers
    ///   of 1000; the number is read like C's strtoull base 0, so a leading 0 means octal;
    /// - INTERVAL matches `[0-9]+[mu]?s?`: seconds unless `m` (ms) or `u` (us) follows;
    /// - the number before the unit must be 1...2^32-1 in both, and the interval must fit in
    ///   32 bits of microseconds.
    ///
    /// `10Mb/s@20ms` is 25 000 bytes every 20 000 us. Errors use libxlu's wording:
    /// "invalid rate", "rate overflow", "invalid replenishment interval", ...
    public static func parse(_ rate: String) throws -> VifRate {
        switch parseReportingProblem(rate) {
        case .success(let parsed): return parsed
        case .failure(let problem):
            throw XLConfigError("config parsing error in vif: \(problem.what) in `\(problem.text)'")
        }
    }

    /// What is wrong with a rate, in libxlu's words, and the part of the text it is about.
    struct Problem: Error {
        var what: String
        var text: String
    }

    static func parseReportingProblem(_ rate: String) -> Result<VifRate, Problem> {
        let parts = rate.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)
        let amount = String(parts[0])
        guard !amount.isEmpty else { return .failure(Problem(what: "no rate specified", text: rate)) }
        guard let bytesPerSecond = parseBytesPerSecond(amount) else {
            return .failure(Problem(what: "invalid rate", text: amount))
        }
        guard let perSecond = bytesPerSecond else { return .failure(Problem(what: "rate overflow", text: amount)) }

        var interval = defaultIntervalMicroseconds
        if parts.count == 2 {
            let text = String(parts[1])
            guard let parsed = parseInterval(text) else {
                return .failure(Problem(what: "invalid replenishment interval", text: text))
            }
            guard let microseconds = parsed else {
                return .failure(Problem(what: "replenishment interval overflow", text: text))
            }
            interval = microseconds
        }
        let (product, overflow) = perSecond.multipliedReportingOverflow(by: interval)
        guard !overflow else { return .failure(Problem(what: "rate overflow", text: rate)) }
        return .success(VifRate(bytesPerInterval: product / 1_000_000, intervalMicroseconds: interval))
    }

    /// Nil if the text does not match `[0-9]+[GMK]?[Bb]/s`; `.some(nil)` for an out-of-range
    /// number.
    private static func parseBytesPerSecond(_ text: String) -> UInt64?? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 3, bytes.suffix(2) == [UInt8(ascii: "/"), UInt8(ascii: "s")] else { return nil }
        var body = bytes.dropLast(2)
        guard let unit = body.popLast(), unit == UInt8(ascii: "B") || unit == UInt8(ascii: "b") else { return nil }
        if let last = body.last, last == UInt8(ascii: "G") || last == UInt8(ascii: "M") || last == UInt8(ascii: "K") {
            body.removeLast()
        }
        guard !body.isEmpty, body.allSatisfy(isDigit) else { return nil }
        guard let number = boundedLeadingNumber(bytes) else { return .some(nil) }
        // Like libxlu, the unit is judged on the characters right after the number it read,
        // which differs from the written unit only for odd octal input such as "019Mb/s".
        let next = bytes[number.end]
        let afterNext = bytes[number.end + 1]
        var value = number.value
        switch next {
        case UInt8(ascii: "G"): value *= 1_000_000_000
        case UInt8(ascii: "M"): value *= 1_000_000
        case UInt8(ascii: "K"): value *= 1_000
        default: break
        }
        if next == UInt8(ascii: "b") || afterNext == UInt8(ascii: "b") { value /= 8 }
        return .some(value)
    }

    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    private static func parseInterval(_ text: String) -> UInt64?? {
        var body = Array(text.utf8)
        guard !body.isEmpty else { return nil }
        if body.last == UInt8(ascii: "s") { body.removeLast() }
        if let last = body.last, last == UInt8(ascii: "m") || last == UInt8(ascii: "u") { body.removeLast() }
        guard !body.isEmpty, body.allSatisfy(isDigit) else { return nil }
        let bytes = Array(text.utf8)
        guard let number = boundedLeadingNumber(bytes) else { return .some(nil) }
        let next = number.end < bytes.count ? bytes[number.end] : 0
        var value = number.value
        if next == UInt8(ascii: "s") || next == 0 {
            value *= 1_000_000
        } else if next == UInt8(ascii: "m") {
            value *= 1_000
        }
        guard value <= UInt64(UInt32.max) else { return .some(nil) }
        return .some(value)
    }

    /// The leading number read like strtoull base 0; nil when it is 0 or above 2^32-1 (libxlu
    /// reports both as overflow).
    private static func boundedLeadingNumber(_ bytes: [UInt8]) -> (value: UInt64, end: Int)? {
        guard let number = CInteger.scan(bytes, from: 0, base: 0, allowBlanksAndSign: false),
              !number.overflow, number.magnitude != 0, number.magnitude <= UInt64(UInt32.max) else { return nil }
        return (number.magnitude, number.end)
    }
}

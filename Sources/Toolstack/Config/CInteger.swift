/// C's `strtol`/`strtoul` number syntax, which xl uses for every number it reads: optional
/// leading blanks and sign, then with base 0 `0x`/`0X` for hex, a leading `0` for octal,
/// otherwise decimal. Reimplemented (not called) so behaviour does not depend on the locale.
enum CInteger {
    enum Outcome: Equatable {
        case value(Int64)
        /// No digits, or text left over after them.
        case invalid
        /// Does not fit in a C `long` (ERANGE).
        case outOfRange
    }

    /// `strtol(text, &end, 0)` that must consume all of `text`, as libxlu's
    /// `xlu_cfg_get_long` requires.
    static func parseLong(_ text: String) -> Outcome {
        let bytes = Array(text.utf8)
        guard let prefix = scan(bytes, from: 0, base: 0, allowBlanksAndSign: true),
              prefix.end == bytes.count else { return .invalid }
        if prefix.overflow { return .outOfRange }
        if prefix.negative {
            guard prefix.magnitude <= UInt64(Int64.max) + 1 else { return .outOfRange }
            return .value(prefix.magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(prefix.magnitude))
        }
        guard prefix.magnitude <= UInt64(Int64.max) else { return .outOfRange }
        return .value(Int64(prefix.magnitude))
    }

    struct Prefix {
        var magnitude: UInt64
        var negative: Bool
        var overflow: Bool
        /// Index just past the last digit used.
        var end: Int
    }

    /// The longest number at `start` (`strtoull` without the final sign flip). Nil when there
    /// are no digits at all (C would then leave the end pointer at the start).
    static func scan(_ bytes: [UInt8], from start: Int, base: Int, allowBlanksAndSign: Bool) -> Prefix? {
        var i = start
        var negative = false
        if allowBlanksAndSign {
            while i < bytes.count, [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D].contains(bytes[i]) { i += 1 }
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
                negative = bytes[i] == UInt8(ascii: "-")
                i += 1
            }
        }
        var radix = base
        // "0x" counts as a prefix only when a hex digit follows; otherwise C reads just "0".
        if radix == 0 || radix == 16, i + 2 < bytes.count, bytes[i] == UInt8(ascii: "0"),
           bytes[i + 1] == UInt8(ascii: "x") || bytes[i + 1] == UInt8(ascii: "X"),
           let digit = digitValue(bytes[i + 2]), digit < 16 {
            radix = 16
            i += 2
        } else if radix == 0 {
            radix = i < bytes.count && bytes[i] == UInt8(ascii: "0") ? 8 : 10
        }
        let digitsStart = i
        var magnitude: UInt64 = 0
        var overflow = false
        while i < bytes.count, let digit = digitValue(bytes[i]), digit < radix {
            let (times, o1) = magnitude.multipliedReportingOverflow(by: UInt64(radix))
            let (plus, o2) = times.addingReportingOverflow(UInt64(digit))
            if o1 || o2 { overflow = true }
            magnitude = plus
            i += 1
        }
        guard i > digitsStart else { return nil }
        return Prefix(magnitude: magnitude, negative: negative, overflow: overflow, end: i)
    }

    static func digitValue(_ b: UInt8) -> Int? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return Int(b - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return Int(b - UInt8(ascii: "A")) + 10
        default: return nil
        }
    }

    /// True if `text` is one or more ASCII decimal digits.
    static func isDecimalDigits(_ text: Substring) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}

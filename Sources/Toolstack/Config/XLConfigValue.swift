/// A value on the right of `=` in an xl config file.
///
/// libxlu keeps numbers as the text that was written and only converts them when a setting is
/// read as a number, so `memory = 128` and `memory = "128"` mean the same; `number` keeps the
/// text exactly (`0x10`, `010`) for the same reason.
public indirect enum XLConfigValue: Equatable, Sendable {
    /// A quoted string, escapes already decoded.
    case string(String)
    /// An unquoted number token as written (`[0-9][0-9a-fx]*`), e.g. `"0x10"`.
    case number(String)
    /// A bracketed list; elements may themselves be lists.
    case list([XLConfigValue])

    /// The text of a string or number (libxlu treats both as strings); nil for a list.
    public var atomText: String? {
        switch self {
        case .string(let text), .number(let text): return text
        case .list: return nil
        }
    }

    /// The list elements; nil for a string or number.
    public var listElements: [XLConfigValue]? {
        if case .list(let elements) = self { return elements }
        return nil
    }

    /// "string", "number" or "list", for messages.
    public var kindName: String {
        switch self {
        case .string: return "string"
        case .number: return "number"
        case .list: return "list"
        }
    }

    /// The value written back in xl config syntax: strings double-quoted with C escapes,
    /// numbers as written, lists as `[a, b]`. Parsing this text gives the same value back.
    public var configText: String {
        switch self {
        case .number(let text):
            return text
        case .list(let elements):
            return "[" + elements.map(\.configText).joined(separator: ", ") + "]"
        case .string(let text):
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\t": out += "\\t"
                case "\r": out += "\\r"
                case "\u{07}": out += "\\a"
                case "\u{08}": out += "\\b"
                case "\u{0C}": out += "\\f"
                case "\u{0B}": out += "\\v"
                default:
                    if scalar.value < 0x20 || scalar.value == 0x7F {
                        out += "\\x" + XLConfigValue.hexByte(UInt8(scalar.value))
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
            return out + "\""
        }
    }

    /// Joins two values the way libxlu's `+=` does: strings (and numbers, which libxlu stores
    /// as strings) concatenate, lists concatenate; nil when one is a list and the other not.
    func appending(_ other: XLConfigValue) -> XLConfigValue? {
        switch (self, other) {
        case (.list(let a), .list(let b)):
            return .list(a + b)
        case (.number(let a), .number(let b)):
            return .number(a + b)
        case (.list, _), (_, .list):
            return nil
        default:
            return .string((atomText ?? "") + (other.atomText ?? ""))
        }
    }

    static func hexByte(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }
}

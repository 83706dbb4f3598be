/// Splits xl config text into tokens with libxlu's lexical rules (libxlu_cfg_l.l):
///
/// - names are `[a-z][._0-9a-z]*` (lowercase only, as in xl);
/// - numbers are `[0-9][0-9a-fx]*`, kept as written;
/// - strings are in `'...'` or `"..."`, on one line, with C escapes;
/// - `#` starts a comment to the end of the line;
/// - only space and tab are blanks: a carriage return is an error, as it is in xl.
///
/// Text xl rejects with a bare "lexical error" becomes an `invalid` token, so the parser can
/// say what it expected there; only broken strings are reported by the lexer itself.
struct XLConfigLexer {
    enum Kind: Equatable {
        case identifier(String)
        case number(String)
        case string(String)
        case assign          // =
        case append          // +=
        case comma
        case openBracket
        case closeBracket
        case semicolon
        case newline
        case endOfFile
        /// Something xl cannot lex: how to name it, and an optional hint.
        case invalid(String, hint: String?)
    }

    struct Token: Equatable {
        var kind: Kind
        var location: XLConfigLocation
    }

    private let bytes: [UInt8]
    private let file: String
    private var index = 0
    private var line = 1
    private var lineStart = 0

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    mutating func next() throws -> Token {
        skipBlanksAndComments()
        let start = location(at: index)
        guard index < bytes.count else { return Token(kind: .endOfFile, location: start) }
        let byte = bytes[index]
        switch byte {
        case UInt8(ascii: "\n"):
            index += 1
            line += 1
            lineStart = index
            return Token(kind: .newline, location: start)
        case UInt8(ascii: "="):
            index += 1
            return Token(kind: .assign, location: start)
        case UInt8(ascii: ","):
            index += 1
            return Token(kind: .comma, location: start)
        case UInt8(ascii: "["):
            index += 1
            return Token(kind: .openBracket, location: start)
        case UInt8(ascii: "]"):
            index += 1
            return Token(kind: .closeBracket, location: start)
        case UInt8(ascii: ";"):
            index += 1
            return Token(kind: .semicolon, location: start)
        case UInt8(ascii: "+"):
            if index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "=") {
                index += 2
                return Token(kind: .append, location: start)
            }
            index += 1
            return Token(kind: .invalid("'+'", hint: "only '+=' is an operator"), location: start)
        case UInt8(ascii: "'"), UInt8(ascii: "\""):
            return Token(kind: .string(try lexString(quote: byte, start: start)), location: start)
        case UInt8(ascii: "a")...UInt8(ascii: "z"):
            return Token(kind: lexName(), location: start)
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return Token(kind: lexNumber(), location: start)
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"):
            let word = takeWord()
            return Token(kind: .invalid("'\(word)'", hint: XLConfigLexer.nameHint), location: start)
        case UInt8(ascii: "\r"):
            index += 1
            return Token(
                kind: .invalid(
                    "a carriage return",
                    hint: "xl config files must have Unix line endings (\\n), not DOS ones (\\r\\n)"),
                location: start)
        default:
            return Token(kind: .invalid(takeCharacter(), hint: nil), location: start)
        }
    }

    static let nameHint = "setting names are lowercase: [a-z][a-z0-9_.]*"

    // MARK: - Pieces

    private mutating func skipBlanksAndComments() {
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: " "), UInt8(ascii: "\t"):
                index += 1
            case UInt8(ascii: "#"):
                // The newline ends the statement, so it stays for the next token. xl also
                // insists on that newline at the very end of the file; accepting a final
                // comment without one costs nothing and rejects no valid xl config.
                while index < bytes.count, bytes[index] != UInt8(ascii: "\n") { index += 1 }
            default:
                return
            }
        }
    }

    private static func isNameByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
            || b == UInt8(ascii: "_") || b == UInt8(ascii: ".")
    }

    private static func isWordByte(_ b: UInt8) -> Bool {
        isNameByte(b) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
    }

    /// `[a-z][._0-9a-z]*`; a name running into capitals is reported whole rather than split
    /// where xl would split it, which names the same mistake more clearly.
    private mutating func lexName() -> Kind {
        let start = index
        while index < bytes.count, XLConfigLexer.isNameByte(bytes[index]) { index += 1 }
        if index < bytes.count, XLConfigLexer.isWordByte(bytes[index]) {
            index = start
            return .invalid("'\(takeWord())'", hint: XLConfigLexer.nameHint)
        }
        return .identifier(String(decoding: bytes[start..<index], as: UTF8.self))
    }

    /// `[0-9][0-9a-fx]*` as xl lexes it; if letters or dots follow (`0x1F`, `1.5`, `12k`) the
    /// whole word is reported as one bad number instead of xl's split tokens.
    private mutating func lexNumber() -> Kind {
        let start = index
        while index < bytes.count, XLConfigLexer.isNumberByte(bytes[index]) { index += 1 }
        if index < bytes.count, XLConfigLexer.isWordByte(bytes[index]) {
            index = start
            return .invalid(
                "invalid number '\(takeWord())'",
                hint: "numbers are decimal, 0x hex with lowercase digits, or 0-prefixed octal; quote other text")
        }
        return .number(String(decoding: bytes[start..<index], as: UTF8.self))
    }

    private static func isNumberByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "f"))
            || b == UInt8(ascii: "x")
    }

    private mutating func takeWord() -> String {
        let start = index
        while index < bytes.count, XLConfigLexer.isWordByte(bytes[index]) { index += 1 }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// One character (a whole UTF-8 sequence), described for a message.
    private mutating func takeCharacter() -> String {
        let start = index
        index += 1
        while index < bytes.count, bytes[index] & 0xC0 == 0x80 { index += 1 }
        let slice = Array(bytes[start..<index])
        if let text = String(validating: slice, as: UTF8.self) {
            if let scalar = text.unicodeScalars.first, scalar.value < 0x20 || scalar.value == 0x7F {
                return "control character 0x" + XLConfigValue.hexByte(UInt8(scalar.value))
            }
            return "'\(text)'"
        }
        return "byte 0x" + XLConfigValue.hexByte(bytes[start]) + " (not UTF-8)"
    }

    /// A quoted string with libxlu's escapes. xl's own decoder mangles numeric escapes (it
    /// rejects every `\x` and drops `\NNN`); here they mean what C says: `\xHH` is exactly two
    /// hex digits and `\NNN` one to three octal digits, giving one byte.
    private mutating func lexString(quote: UInt8, start: XLConfigLocation) throws -> String {
        let quoteText = quote == UInt8(ascii: "'") ? "'" : "\""
        var out: [UInt8] = []
        index += 1
        while true {
            guard index < bytes.count, bytes[index] != UInt8(ascii: "\n") else {
                let end = index < bytes.count ? "end of line" : "end of file"
                throw XLConfigError("unterminated string: no closing \(quoteText) before \(end)", at: start)
            }
            let byte = bytes[index]
            if byte == quote {
                index += 1
                break
            }
            if byte == 0 {
                throw XLConfigError("NUL bytes are not allowed in strings", at: location(at: index))
            }
            if byte != UInt8(ascii: "\\") {
                out.append(byte)
                index += 1
                continue
            }
            let escapeLocation = location(at: index)
            index += 1
            guard index < bytes.count, bytes[index] != UInt8(ascii: "\n") else {
                let end = index < bytes.count ? "end of line" : "end of file"
                throw XLConfigError("unterminated string: no closing \(quoteText) before \(end)", at: start)
            }
            let escape = bytes[index]
            index += 1
            switch escape {
            case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "\\"): out.append(escape)
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "x"):
                guard index + 1 < bytes.count, let high = XLConfigLexer.hexValue(bytes[index]),
                      let low = XLConfigLexer.hexValue(bytes[index + 1]) else {
                    throw XLConfigError("invalid escape in string: \\x must be followed by two hex digits", at: escapeLocation)
                }
                index += 2
                try appendEscapedByte(high << 4 | low, to: &out, at: escapeLocation)
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var value = Int(escape - UInt8(ascii: "0"))
                var digits = 1
                while digits < 3, index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "7") {
                    value = value * 8 + Int(bytes[index] - UInt8(ascii: "0"))
                    index += 1
                    digits += 1
                }
                guard value <= 0xFF else {
                    throw XLConfigError("invalid escape in string: octal escape is larger than \\377", at: escapeLocation)
                }
                try appendEscapedByte(UInt8(value), to: &out, at: escapeLocation)
            default:
                let shown = escape < 0x80 && escape >= 0x20 ? String(UnicodeScalar(escape)) : "0x" + XLConfigValue.hexByte(escape)
                throw XLConfigError(
                    "invalid escape '\\\(shown)' in string (valid: \\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH \\NNN)",
                    at: escapeLocation)
            }
        }
        guard let text = String(validating: out, as: UTF8.self) else {
            throw XLConfigError("string is not valid UTF-8", at: start)
        }
        return text
    }

    private func appendEscapedByte(_ byte: UInt8, to out: inout [UInt8], at location: XLConfigLocation) throws {
        // xl hands strings to C, where a NUL byte would silently cut the string short.
        guard byte != 0 else { throw XLConfigError("invalid escape in string: NUL bytes are not allowed", at: location) }
        out.append(byte)
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Columns count Unicode scalars, so they match what an editor shows for UTF-8 text.
    private func location(at offset: Int) -> XLConfigLocation {
        var column = 1
        var i = lineStart
        while i < offset {
            if bytes[i] & 0xC0 != 0x80 { column += 1 }
            i += 1
        }
        return XLConfigLocation(file: file, line: line, column: column)
    }
}

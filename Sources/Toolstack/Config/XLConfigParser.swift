import LinuxHost

/// Parses xl config files with libxlu's grammar (libxlu_cfg_y.y):
///
///     file       := { statement } [ assignment ]      -- the last one may lack a terminator
///     statement  := [ assignment ] ( NEWLINE | ';' )
///     assignment := NAME ( '=' | '+=' ) value
///     value      := STRING | NUMBER | '[' { NEWLINE } [ values [ ',' { NEWLINE } ] ] ']'
///     values     := value { NEWLINE } { ',' { NEWLINE } value { NEWLINE } }
///
/// Newlines are allowed anywhere inside a list but not between a name, its operator and the
/// value. Every error carries FILE:LINE:COLUMN and says what was expected and what was found.
public enum XLConfigParser {
    /// Parses config text; `file` names it in locations and errors.
    public static func parse(_ text: String, file: String) throws -> XLConfigFile {
        try parse(bytes: Array(text.utf8), file: file)
    }

    /// Parses config bytes (xl reads files as bytes; strings must decode as UTF-8).
    public static func parse(bytes: [UInt8], file: String) throws -> XLConfigFile {
        var parser = Parser(lexer: XLConfigLexer(bytes: bytes, file: file), file: file)
        return try parser.parseFile()
    }

    /// Reads and parses the file at `path`; locations use `path` as given. An unreadable file
    /// gives an error naming the path and the system's reason, as xl does.
    public static func parseFile(path: String) throws -> XLConfigFile {
        try parse(bytes: readFile(path: path), file: path)
    }

    /// The whole file, or an error "PATH: unable to open configuration file: REASON" (or
    /// "unable to read"), REASON being the system's text for the errno, as xl prints it.
    static func readFile(path: String) throws -> [UInt8] {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, [.readOnly, .closeOnExec])
        } catch let e as SystemError {
            throw XLConfigError("\(path): unable to open configuration file: \(e.errno.message)")
        }
        defer { fd.close() }
        var data: [UInt8] = []
        while true {
            let chunk: [UInt8]
            do {
                chunk = try fd.read(upTo: 65536)
            } catch let e as SystemError {
                throw XLConfigError("\(path): unable to read configuration file: \(e.errno.message)")
            }
            if chunk.isEmpty { break }
            data.append(contentsOf: chunk)
        }
        return data
    }
}

/// The recursive-descent parser behind `XLConfigParser`, one token of lookahead.
private struct Parser {
    var lexer: XLConfigLexer
    let file: String
    var lookahead: XLConfigLexer.Token?

    init(lexer: XLConfigLexer, file: String) {
        self.lexer = lexer
        self.file = file
    }

    mutating func peek() throws -> XLConfigLexer.Token {
        if let lookahead { return lookahead }
        let token = try lexer.next()
        lookahead = token
        return token
    }

    mutating func take() throws -> XLConfigLexer.Token {
        let token = try peek()
        lookahead = nil
        return token
    }

    mutating func parseFile() throws -> XLConfigFile {
        var config = XLConfigFile(file: file, settings: [])
        while true {
            let token = try take()
            switch token.kind {
            case .endOfFile:
                return config
            case .newline, .semicolon:
                continue
            case .identifier(let key):
                let setting = try parseAssignment(key: key, at: token.location)
                try config.checkAppend(setting)
                config.settings.append(setting)
                let end = try take()
                switch end.kind {
                case .newline, .semicolon: break
                case .endOfFile: return config
                default:
                    throw unexpected(end, expected: "end of line or ';' after the value of '\(key)'")
                }
            default:
                throw unexpected(token, expected: "a setting name")
            }
        }
    }

    mutating func parseAssignment(key: String, at location: XLConfigLocation) throws -> XLConfigSetting {
        let op = try take()
        let isAppend: Bool
        switch op.kind {
        case .assign: isAppend = false
        case .append: isAppend = true
        default: throw unexpected(op, expected: "'=' or '+=' after '\(key)'")
        }
        let valueStart = try peek().location
        let (value, elementLocations) = try parseValue(
            expected: "a value (string, number or list) after '\(isAppend ? "+=" : "=")'")
        return XLConfigSetting(
            key: key, value: value, isAppend: isAppend, location: location,
            valueLocation: valueStart, elementLocations: elementLocations)
    }

    /// A value; for a list, also where each top-level element starts.
    mutating func parseValue(expected: String) throws -> (XLConfigValue, [XLConfigLocation]) {
        let token = try take()
        switch token.kind {
        case .string(let text): return (.string(text), [])
        case .number(let text): return (.number(text), [])
        case .openBracket: return try parseList(openedAt: token.location)
        default: throw unexpected(token, expected: expected)
        }
    }

    mutating func parseList(openedAt open: XLConfigLocation) throws -> (XLConfigValue, [XLConfigLocation]) {
        var elements: [XLConfigValue] = []
        var locations: [XLConfigLocation] = []
        try skipNewlines()
        if case .closeBracket = try peek().kind {
            _ = try take()
            return (.list([]), [])
        }
        while true {
            locations.append(try peek().location)
            let (element, _) = try parseValue(expected: "a list element (string, number or list) or ']'")
            elements.append(element)
            try skipNewlines()
            let separator = try take()
            switch separator.kind {
            case .closeBracket:
                return (.list(elements), locations)
            case .comma:
                try skipNewlines()
                if case .closeBracket = try peek().kind {  // trailing comma
                    _ = try take()
                    return (.list(elements), locations)
                }
            default:
                throw unexpected(separator, expected: "',' or ']' in the list opened at \(open.line):\(open.column)")
            }
        }
    }

    mutating func skipNewlines() throws {
        while case .newline = try peek().kind { _ = try take() }
    }

    func unexpected(_ token: XLConfigLexer.Token, expected: String) -> XLConfigError {
        var message = "expected \(expected) but found \(Parser.describe(token.kind))"
        switch token.kind {
        case .invalid(_, let hint?):
            message += " (\(hint))"
        case .identifier(let name):
            if expected.hasPrefix("a value") || expected.hasPrefix("a list element") {
                message += " (strings must be quoted: \"\(name)\")"
            }
        default:
            break
        }
        return XLConfigError(message, at: token.location)
    }

    static func describe(_ kind: XLConfigLexer.Kind) -> String {
        switch kind {
        case .identifier(let name): return "name '\(name)'"
        case .number(let text): return "number \(text)"
        case .string(let text):
            let shown = text.count > 40 ? String(text.prefix(40)) + "..." : text
            return "string \(XLConfigValue.string(shown).configText)"
        case .assign: return "'='"
        case .append: return "'+='"
        case .comma: return "','"
        case .openBracket: return "'['"
        case .closeBracket: return "']'"
        case .semicolon: return "';'"
        case .newline: return "end of line"
        case .endOfFile: return "end of file"
        case .invalid(let what, _): return what
        }
    }
}

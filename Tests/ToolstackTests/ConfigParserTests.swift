import Foundation
import Testing
import Toolstack

/// The xl.cfg grammar (libxlu_cfg_l.l / libxlu_cfg_y.y) through the public parser API.
/// Expected results were checked against Xen 4.17's libxlutil where the two agree by design.
@Suite("xl.cfg parser")
struct ConfigParserTests {
    private func parse(_ text: String) throws -> XLConfigFile {
        try XLConfigParser.parse(text, file: "t.cfg")
    }

    private func errorText(_ text: String) -> String? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return String(describing: error)
        }
    }

    @Test("settings keep order, operator, raw numbers and locations")
    func settingsAndLocations() throws {
        let file = try parse("name = \"a\"\n  memory=0x10 ; vcpus += 010\n\tdisk = [ 'x',\n 'y' ]\n")
        #expect(file.settings.map(\.key) == ["name", "memory", "vcpus", "disk"])
        #expect(file.settings.map(\.isAppend) == [false, false, true, false])
        #expect(file.settings[1].value == .number("0x10"))
        #expect(file.settings[2].value == .number("010"))
        #expect(file.settings[1].location == XLConfigLocation(file: "t.cfg", line: 2, column: 3))
        #expect(file.settings[1].valueLocation == XLConfigLocation(file: "t.cfg", line: 2, column: 10))
        #expect(file.settings[2].location == XLConfigLocation(file: "t.cfg", line: 2, column: 17))
        #expect(file.settings[3].location == XLConfigLocation(file: "t.cfg", line: 3, column: 2))
        #expect(file.settings[3].elementLocations == [
            XLConfigLocation(file: "t.cfg", line: 3, column: 11),
            XLConfigLocation(file: "t.cfg", line: 4, column: 2),
        ])
    }

    @Test("columns count characters, not bytes")
    func unicodeColumns() throws {
        let file = try parse("extra = \"café\"; root = 'x'\n")
        #expect(file.location("root") == XLConfigLocation(file: "t.cfg", line: 1, column: 17))
    }

    @Test("value(): last = wins, += appends lists and strings, += alone acts as =")
    func effectiveValues() throws {
        let file = try parse("""
            a = "x"
            a = "y"
            a += "z"
            l = [1]
            l += [ "2", [3] ]
            l += []
            n += [ 'first' ]
            m = 1
            m += 2
            """)
        #expect(file.value("a") == .string("yz"))
        #expect(file.value("l") == .list([.number("1"), .string("2"), .list([.number("3")])]))
        #expect(file.value("n") == .list([.string("first")]))
        #expect(file.value("m") == .number("12"))
        #expect(file.value("missing") == nil)
        #expect(file.location("a") == XLConfigLocation(file: "t.cfg", line: 3, column: 1))
        #expect(file.keys == ["a", "l", "n", "m"])
    }

    @Test("lists: empty, trailing comma, nested, spread over lines with comments")
    func lists() throws {
        let file = try parse("""
            e = []
            t = [ 1, 2, ]
            n = [ [], [ 'a', [ "b" ] ], ]
            m = [
              # leading comment
              'x',   # trailing comment

              'y'
            ]
            """)
        #expect(file.value("e") == .list([]))
        #expect(file.value("t") == .list([.number("1"), .number("2")]))
        #expect(file.value("n") == .list([.list([]), .list([.string("a"), .list([.string("b")])])]))
        #expect(file.value("m") == .list([.string("x"), .string("y")]))
    }

    @Test("separators: newline, ';', empty statements, missing final terminator, final comment")
    func separators() throws {
        let file = try parse(";;\n\na=1;b=2;;\n;c = 3 # end")
        #expect(file.settings.map(\.key) == ["a", "b", "c"])
        #expect(try parse("").settings.isEmpty)
        #expect(try parse("# only a comment").settings.isEmpty)
    }

    @Test("names are xl's: lowercase, digits, '_' and '.'")
    func names() throws {
        let file = try parse("device_model_args_hvm = []\na.b = 1\nx9 = 2\n")
        #expect(file.keys == ["device_model_args_hvm", "a.b", "x9"])
    }

    @Test("string escapes", arguments: [
        (#"'a\nb'"#, "a\nb"), (#""\t\\\"\'""#, "\t\\\"'"), (#"'\a\b\f\r\v'"#, "\u{07}\u{08}\u{0C}\r\u{0B}"),
        (#"'\x41\x7a'"#, "Az"), (#"'\101\60\7'"#, "A0\u{07}"), (#"'\1011'"#, "A1"), (#""it's""#, "it's"),
        (#"'say "hi"'"#, "say \"hi\""), ("'caf\u{E9} \u{1F600}'", "caf\u{E9} \u{1F600}"), ("''", ""),
    ])
    func escapes(source: String, expected: String) throws {
        #expect(try parse("s = \(source)\n").value("s") == .string(expected))
    }

    @Test("configText writes values back in a form that parses to the same value")
    func configTextRoundTrip() throws {
        let value = XLConfigValue.list([
            .string("quote\" back\\ nl\n tab\t bell\u{07} del\u{7F} é"), .number("0x1f"), .list([]),
            .list([.string(""), .number("7")]),
        ])
        let reparsed = try parse("v = \(value.configText)\n").value("v")
        #expect(reparsed == value)
        #expect(XLConfigValue.string("a\"b").configText == #""a\"b""#)
    }

    @Test("syntax errors name file:line:column, what was expected and what was found", arguments: [
        ("memory = ]\n", "t.cfg:1:10: expected a value (string, number or list) after '=' but found ']'"),
        ("a = [ , ]\n", "t.cfg:1:7: expected a list element (string, number or list) or ']' but found ','"),
        ("a = [ 1 2 ]\n", "t.cfg:1:9: expected ',' or ']' in the list opened at 1:5 but found number 2"),
        ("a = [ 1,\n 2\n", "t.cfg:3:1: expected ',' or ']' in the list opened at 1:5 but found end of file"),
        ("a = 1 2\n", "t.cfg:1:7: expected end of line or ';' after the value of 'a' but found number 2"),
        ("a\n= 1\n", "t.cfg:1:2: expected '=' or '+=' after 'a' but found end of line"),
        ("a =\n1\n", "t.cfg:1:4: expected a value (string, number or list) after '=' but found end of line"),
        ("a += \n", "t.cfg:1:6: expected a value (string, number or list) after '+=' but found end of line"),
        ("= 1\n", "t.cfg:1:1: expected a setting name but found '='"),
        ("12 = 1\n", "t.cfg:1:1: expected a setting name but found number 12"),
        ("'a' = 1\n", "t.cfg:1:1: expected a setting name but found string \"a\""),
        ("Name = 1\n", "t.cfg:1:1: expected a setting name but found 'Name' (setting names are lowercase: [a-z][a-z0-9_.]*)"),
        ("_x = 1\n", "t.cfg:1:1: expected a setting name but found '_x' (setting names are lowercase: [a-z][a-z0-9_.]*)"),
        ("memOry = 1\n", "t.cfg:1:1: expected a setting name but found 'memOry' (setting names are lowercase: [a-z][a-z0-9_.]*)"),
        ("a = b\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found name 'b' (strings must be quoted: \"b\")"),
        ("a = 0x1F\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found invalid number '0x1F' (numbers are decimal, 0x hex with lowercase digits, or 0-prefixed octal; quote other text)"),
        ("a = 1.5\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found invalid number '1.5' (numbers are decimal, 0x hex with lowercase digits, or 0-prefixed octal; quote other text)"),
        ("a = -1\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found '-'"),
        ("a = 1 + 2\n", "t.cfg:1:7: expected end of line or ';' after the value of 'a' but found '+' (only '+=' is an operator)"),
        ("a = f(1)\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found name 'f' (strings must be quoted: \"f\")"),
        ("a = @\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found '@'"),
        ("a = é\n", "t.cfg:1:5: expected a value (string, number or list) after '=' but found 'é'"),
        ("a = 1\u{01}\n", "t.cfg:1:6: expected end of line or ';' after the value of 'a' but found control character 0x01"),
        ("a = 1\r\n", "t.cfg:1:6: expected end of line or ';' after the value of 'a' but found a carriage return (xl config files must have Unix line endings (\\n), not DOS ones (\\r\\n))"),
    ])
    func syntaxErrors(text: String, expected: String) {
        #expect(errorText(text) == expected)
    }

    @Test("string errors point at the string or the escape", arguments: [
        ("a = 'abc\nb = 1\n", "t.cfg:1:5: unterminated string: no closing ' before end of line"),
        ("x = 1\na = \"abc", "t.cfg:2:5: unterminated string: no closing \" before end of file"),
        ("a = 'ab\\\n'\n", "t.cfg:1:5: unterminated string: no closing ' before end of line"),
        ("a = 'a\\qb'\n", "t.cfg:1:7: invalid escape '\\q' in string (valid: \\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH \\NNN)"),
        ("a = 'a\\x4'\n", "t.cfg:1:7: invalid escape in string: \\x must be followed by two hex digits"),
        ("a = '\\400'\n", "t.cfg:1:6: invalid escape in string: octal escape is larger than \\377"),
        ("a = '\\0'\n", "t.cfg:1:6: invalid escape in string: NUL bytes are not allowed"),
        ("a = '\\xff'\n", "t.cfg:1:5: string is not valid UTF-8"),
    ])
    func stringErrors(text: String, expected: String) {
        #expect(errorText(text) == expected)
    }

    @Test("+= must not join a list and a string (libxlu rejects it while parsing)")
    func appendTypeMismatch() {
        #expect(errorText("a = 1\na += [2]\n") == "t.cfg:2:6: can't add a list to 'a' with '+=': it already holds a number")
        #expect(errorText("d = []\nd += 'x'\n") == "t.cfg:2:6: can't add a string to 'd' with '+=': it already holds a list")
    }

    @Test("appending(): command-line settings go after the file's, += included")
    func appendingFiles() throws {
        let file = try parse("disk = [ 'a' ]\nmemory = 128\n")
        let extras = try XLConfigParser.parse("memory=256\ndisk += [ 'b' ]", file: "command line")
        let merged = try file.appending(extras)
        #expect(merged.value("memory") == .number("256"))
        #expect(merged.value("disk") == .list([.string("a"), .string("b")]))
        #expect(merged.location("memory") == XLConfigLocation(file: "command line", line: 1, column: 1))
        let bad = try XLConfigParser.parse("memory += [1]", file: "command line")
        #expect(throws: XLConfigError("can't add a list to 'memory' with '+=': it already holds a number",
                                      at: XLConfigLocation(file: "command line", line: 1, column: 11))) {
            try file.appending(bad)
        }
    }

    @Test("XLConfigError.description has FILE:LINE:COLUMN only with a location")
    func errorDescription() {
        #expect(XLConfigError("boom", at: XLConfigLocation(file: "f", line: 2, column: 3)).description == "f:2:3: boom")
        #expect(XLConfigError("boom").description == "boom")
    }

    @Test("parseFile reads files and reports unreadable ones with the path and the reason")
    func parseFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cfgtest-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("guest.cfg").path
        try "name = \"g\"\nmemory = 64\n".write(toFile: path, atomically: true, encoding: .utf8)

        let file = try XLConfigParser.parseFile(path: path)
        #expect(file.file == path)
        #expect(file.location("memory") == XLConfigLocation(file: path, line: 2, column: 1))

        let missing = directory.appendingPathComponent("missing.cfg").path
        #expect(throws: XLConfigError("\(missing): unable to open configuration file: No such file or directory")) {
            try XLConfigParser.parseFile(path: missing)
        }
        #expect(throws: XLConfigError("\(directory.path): unable to read configuration file: Is a directory")) {
            try XLConfigParser.parseFile(path: directory.path)
        }
    }
}

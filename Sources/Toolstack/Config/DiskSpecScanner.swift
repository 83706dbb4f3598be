/// Reads a disk spec the way libxlu's flex scanner (libxlu_disk_l.l) does, so odd specs give
/// the same result as in xl: at each position every rule is tried, the longest match wins
/// (counting trailing context such as the `/.*` after deprecated prefixes, which is how those
/// prefixes beat positional parameters), and the earlier rule wins a tie.
struct DiskSpecScanner {
    /// The spec as xl's parser leaves it, before the final checks `DiskSpec.parse` makes.
    struct Result {
        var target: String?
        var vdev: String?
        var format: DiskFormat?
        var readWrite = true
        var isCDROM = false
        var backend: String?
        var backendType: String?
        var specification: String?
        var script: String?
        var discard: Bool?
        var directIOSafe = false
        var trusted: Bool?
        var hadDeprecatedPrefix = false
        var accessSet = false
    }

    /// What a rule does with the text it matched (trailing context already cut off).
    private enum Action {
        case whitespace
        case format, access, backend, backendType, specification, vdev, script
        case cdrom, devtypeCDROM, devtypeDisk, devtypeOther
        case directIOSafe, discard, noDiscard, trusted, untrusted
        case colo
        case target
        case unknownParameter
        case formatPrefix, scriptPrefix, ignoredPrefix, unknownPrefix
        case positional
        case bad
    }

    private var spec: String
    private var bytes: [UInt8]
    private var result = Result()

    init(spec: String) {
        self.spec = spec
        self.bytes = Array(spec.utf8)
    }

    /// Scans the whole spec; the first error xl would print is thrown.
    static func scan(_ spec: String) throws -> Result {
        try scan(components: [spec])
    }

    /// Scans the components of one spec given as several strings (`xl block-attach DOM A B C`),
    /// as xlu_disk_parse does: each is scanned on its own (so `target=` ends with its string),
    /// into one result (positional parameters continue across them); errors quote the
    /// component they are in.
    static func scan(components: [String]) throws -> Result {
        var scanner = DiskSpecScanner(spec: components.first ?? "")
        for component in components {
            scanner.spec = component
            scanner.bytes = Array(component.utf8)
            try scanner.run()
        }
        return scanner.result
    }

    /// "config parsing error in disk specification: WHAT: near `TEXT' in `SPEC'", xl's words.
    static func error(_ what: String, near text: String?, spec: String, hint: String? = nil) -> XLConfigError {
        var message = "config parsing error in disk specification: \(what)"
        if let text { message += ": near `\(text)'" }
        message += " in `\(spec)'"
        if let hint { message += " (\(hint))" }
        return XLConfigError(message)
    }

    private func error(_ what: String, near text: String?, hint: String? = nil) -> XLConfigError {
        DiskSpecScanner.error(what, near: text, spec: spec, hint: hint)
    }

    // MARK: - Matching

    private mutating func run() throws {
        var i = 0
        while i < bytes.count {
            var best: (total: Int, head: Int, action: Action)?
            for (total, head, action) in candidates(at: i) where total > (best?.total ?? 0) {
                best = (total, head, action)
            }
            guard let best else {
                // Only reachable for text flex would also jam on; report it like "bad syntax".
                throw error("bad disk syntax", near: text(i, bytes.count))
            }
            if case .bad = best.action {
                // flex's `.` then `<LEXERR>.*`: the bad character plus the rest of the line.
                let end = bytes[i...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
                throw error("bad disk syntax", near: text(i, end))
            }
            try perform(best.action, text: text(i, i + best.head))
            i += best.head
        }
    }

    /// Every rule that matches at `i`, in the scanner's rule order, as (length counted for
    /// longest match, length consumed, action).
    private func candidates(at i: Int) -> [(Int, Int, Action)] {
        var out: [(Int, Int, Action)] = []
        func add(_ length: Int?, _ action: Action) {
            if let length { out.append((length, length, action)) }
        }
        // [ \t\n]+/([^ \t\n].*)?
        let blanks = run(from: i) { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A }
        if blanks > 0 {
            var total = blanks
            let next = i + blanks
            if next < bytes.count { total += 1 + lineRest(from: next + 1) }
            out.append((total, blanks, .whitespace))
        }
        add(keyValue(i, "format="), .format)
        add(literal(i, "cdrom"), .cdrom)
        add(literal(i, "devtype=cdrom"), .devtypeCDROM)
        add(literal(i, "devtype=disk"), .devtypeDisk)
        add(keyValue(i, "devtype="), .devtypeOther)
        add(keyValue(i, "access="), .access)
        add(keyValue(i, "backend="), .backend)
        add(keyValue(i, "backendtype="), .backendType)
        add(keyValue(i, "specification="), .specification)
        add(keyValue(i, "vdev="), .vdev)
        add(keyValue(i, "script="), .script)
        add(literal(i, "direct-io-safe"), .directIOSafe)
        add(literal(i, "discard"), .discard)
        add(literal(i, "no-discard"), .noDiscard)
        add(literal(i, "colo"), .colo)
        add(literal(i, "no-colo"), .colo)
        for key in ["colo-host=", "colo-port=", "colo-export=", "active-disk=", "hidden-disk="] {
            add(keyValue(i, key), .colo)
        }
        add(literal(i, "trusted"), .trusted)
        add(literal(i, "untrusted"), .untrusted)
        // target=.*  (eats the rest of the line, commas included)
        if starts(i, "target=") { add(7 + lineRest(from: i + 7), .target) }
        // [a-z][-a-z0-9]*=[^,],?
        if let name = nameRun(i, allowHyphen: true), i + name < bytes.count, bytes[i + name] == UInt8(ascii: "=") {
            let value = i + name + 1
            if value < bytes.count, bytes[value] != UInt8(ascii: ",") {
                var length = name + 2
                if value + 1 < bytes.count, bytes[value + 1] == UInt8(ascii: ",") { length += 1 }
                add(length, .unknownParameter)
            }
        }
        // Deprecated prefixes PREFIX:/.* count the whole rest of the line.
        for (prefixes, action) in [
            (["raw:", "qcow:", "qcow2:", "vhd:"], Action.formatPrefix),
            (["iscsi:", "nbd:", "enbd:", "drbd:"], .scriptPrefix),
            (["tapdisk:"], .ignoredPrefix), (["tap:", "tap2:"], .ignoredPrefix), (["aio:"], .ignoredPrefix),
            (["ioemu:"], .ignoredPrefix), (["file:"], .ignoredPrefix), (["phy:"], .ignoredPrefix),
        ] {
            for prefix in prefixes where starts(i, prefix) {
                let head = prefix.utf8.count
                out.append((head + lineRest(from: i + head), head, action))
            }
        }
        // [a-z][a-z0-9]*:/([^a-z0-9].*)?
        if let name = nameRun(i, allowHyphen: false), i + name < bytes.count, bytes[i + name] == UInt8(ascii: ":") {
            let head = name + 1
            var total = head
            let next = i + head
            if next < bytes.count, !DiskSpecScanner.isLowerAlnum(bytes[next]) {
                total += 1 + lineRest(from: next + 1)
            }
            out.append((total, head, .unknownPrefix))
        }
        // [^=,]*,|[^=,]+,?
        let plain = run(from: i) { $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: ",") }
        if i + plain < bytes.count, bytes[i + plain] == UInt8(ascii: ",") {
            add(plain + 1, .positional)
        } else if plain > 0 {
            add(plain, .positional)
        }
        // .  (anything but a newline) starts the error state.
        if bytes[i] != 0x0A { add(1, .bad) }
        return out
    }

    private func run(from i: Int, while predicate: (UInt8) -> Bool) -> Int {
        var j = i
        while j < bytes.count, predicate(bytes[j]) { j += 1 }
        return j - i
    }

    /// Length of `.*` from `i`: up to (not including) a newline.
    private func lineRest(from i: Int) -> Int {
        run(from: i) { $0 != 0x0A }
    }

    private func starts(_ i: Int, _ prefix: String) -> Bool {
        let p = Array(prefix.utf8)
        return i + p.count <= bytes.count && Array(bytes[i..<(i + p.count)]) == p
    }

    /// `WORD,?`
    private func literal(_ i: Int, _ word: String) -> Int? {
        guard starts(i, word) else { return nil }
        let end = i + word.utf8.count
        return word.utf8.count + (end < bytes.count && bytes[end] == UInt8(ascii: ",") ? 1 : 0)
    }

    /// `KEY=[^,]*,?`
    private func keyValue(_ i: Int, _ key: String) -> Int? {
        guard starts(i, key) else { return nil }
        let valueStart = i + key.utf8.count
        let value = run(from: valueStart) { $0 != UInt8(ascii: ",") }
        let end = valueStart + value
        return key.utf8.count + value + (end < bytes.count ? 1 : 0)
    }

    /// `[a-z][-a-z0-9]*` or `[a-z][a-z0-9]*`.
    private func nameRun(_ i: Int, allowHyphen: Bool) -> Int? {
        guard i < bytes.count, bytes[i] >= UInt8(ascii: "a"), bytes[i] <= UInt8(ascii: "z") else { return nil }
        return 1 + run(from: i + 1) { DiskSpecScanner.isLowerAlnum($0) || (allowHyphen && $0 == UInt8(ascii: "-")) }
    }

    private static func isLowerAlnum(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
    }

    private func text(_ from: Int, _ to: Int) -> String {
        String(decoding: bytes[from..<to], as: UTF8.self)
    }

    // MARK: - Actions (libxlu's, in its words)

    private mutating func perform(_ action: Action, text matched: String) throws {
        var text = matched
        func stripComma() { if text.hasSuffix(",") { text.removeLast() } }
        func valueAfterEquals() -> String {
            stripComma()
            return String(text[text.index(after: text.firstIndex(of: "=")!)...])
        }
        switch action {
        case .whitespace:
            break
        case .format:
            try setFormat(valueAfterEquals())
        case .cdrom, .devtypeCDROM:
            result.isCDROM = true
        case .devtypeDisk:
            result.isCDROM = false
        case .devtypeOther:
            throw error("unknown value for type", near: text, hint: "supported: devtype=cdrom, devtype=disk")
        case .access:
            try setAccess(valueAfterEquals())
        case .backend:
            try save(\.backend, "backend", valueAfterEquals())
        case .backendType:
            let value = valueAfterEquals()
            guard ["phy", "tap", "qdisk", "standalone"].contains(value) else {
                throw error("unknown value for backendtype", near: value, hint: "supported: phy, qdisk, standalone, tap")
            }
            try setOnce(\.backendType, "backendtype", value)
        case .specification:
            let value = valueAfterEquals()
            guard ["xen", "virtio"].contains(value) else {
                throw error("unknown value for specification", near: value, hint: "supported: xen, virtio")
            }
            try setOnce(\.specification, "specification", value)
        case .vdev:
            try save(\.vdev, "vdev", valueAfterEquals())
        case .script:
            try save(\.script, "script", valueAfterEquals())
        case .directIOSafe:
            result.directIOSafe = true
        case .discard:
            result.discard = true
        case .noDiscard:
            result.discard = false
        case .trusted:
            result.trusted = true
        case .untrusted:
            result.trusted = false
        case .colo:
            stripComma()
            throw error("COLO disk replication is not supported by Procvisor", near: text)
        case .target:
            try save(\.target, "target", valueAfterEquals())
        case .unknownParameter:
            throw error("unknown parameter", near: text)
        case .formatPrefix:
            text.removeLast()  // the ':'
            result.hadDeprecatedPrefix = true
            try setFormat(text)
        case .scriptPrefix:
            text.removeLast()
            result.hadDeprecatedPrefix = true
            try save(\.script, "script", "block-" + text)
        case .ignoredPrefix:
            result.hadDeprecatedPrefix = true
        case .unknownPrefix:
            throw error("unknown deprecated disk prefix", near: text)
        case .positional:
            stripComma()
            try positional(text)
        case .bad:
            throw error("bad disk syntax", near: text)
        }
    }

    /// Fills the next unset positional parameter: target, format, vdev, access.
    private mutating func positional(_ text: String) throws {
        if result.target == nil {
            try save(\.target, "target", text)
        } else if !result.hadDeprecatedPrefix && result.format == nil {
            // xend's empty-CD-ROM form ",hdc:cdrom,r" has the vdev where the format goes.
            if result.target == "", try vdevAndDeviceType(text) {
                result.format = .empty
            } else {
                try setFormat(text)
            }
        } else if result.vdev == nil {
            if try !vdevAndDeviceType(text) {
                try save(\.vdev, "vdev", text)
            }
        } else if !result.accessSet {
            result.accessSet = true
            try setAccess(text)
        } else {
            throw error("too many positional parameters", near: text)
        }
    }

    /// The deprecated "VDEV:cdrom" / "VDEV:disk" form; false if there is no colon.
    private mutating func vdevAndDeviceType(_ text: String) throws -> Bool {
        guard let colon = text.lastIndex(of: ":") else { return false }
        try save(\.vdev, "vdev", String(text[..<colon]))
        let type = String(text[text.index(after: colon)...])
        switch type {
        case "cdrom": result.isCDROM = true
        case "disk": result.isCDROM = false
        default: throw error("unknown deprecated type", near: type, hint: "supported: cdrom, disk")
        }
        return true
    }

    private mutating func setFormat(_ value: String) throws {
        let format: DiskFormat
        if value.isEmpty {
            format = .raw
        } else if let known = DiskFormat(rawValue: value) {
            format = known
        } else {
            throw error("unknown value for format", near: value, hint: "supported: raw, qcow, qcow2, vhd, qed, empty")
        }
        if let current = result.format, current != format {
            throw error("format respecified", near: value)
        }
        result.format = format
    }

    private mutating func setAccess(_ value: String) throws {
        switch value {
        case "r", "ro": result.readWrite = false
        case "rw", "w", "": result.readWrite = true
        default: throw error("unknown value for access", near: value, hint: "supported: ro, r, rw, w")
        }
    }

    /// libxlu's `savestring`: a second non-empty value is an error, an empty one may be replaced.
    private mutating func save(_ field: WritableKeyPath<Result, String?>, _ name: String, _ value: String) throws {
        if let current = result[keyPath: field], !current.isEmpty {
            throw error("\(name) respecified", near: value)
        }
        result[keyPath: field] = value
    }

    /// libxlu's `DSET` for enum-like strings: the same value twice is fine, a different one is not.
    private mutating func setOnce(_ field: WritableKeyPath<Result, String?>, _ name: String, _ value: String) throws {
        if let current = result[keyPath: field], current != value {
            throw error("\(name) respecified", near: value)
        }
        result[keyPath: field] = value
    }
}

/// A domain's configuration, built from an xl config file with xl's rules and defaults.
public struct DomainConfig: Codable, Equatable, Sendable {
    /// `name`: required; `nameProblem` says what a valid one is.
    public var name: String
    /// `uuid`, lowercased; nil means generate one at create time (xl's default).
    public var uuid: String?
    /// `type`: "pv" (default), "pvh" or "hvm"; the deprecated `builder` is mapped onto it.
    public var type: String
    /// `kernel`: the guest image.
    public var kernel: String?
    /// `ramdisk`.
    public var ramdisk: String?
    /// `cmdline`: the whole guest command line; takes precedence over `root` and `extra`.
    public var cmdline: String?
    /// `root`: becomes "root=..." at the front of the command line.
    public var root: String?
    /// `extra`: appended to the command line.
    public var extra: String?
    /// `memory` in MiB. Without it libxl uses `maxmem`, or 32 when neither is set.
    public var memory: Int
    /// `maxmem` in MiB; defaults to `memory` and may not be below it.
    public var maxmem: Int
    /// `vcpus` online at boot; default 1.
    public var vcpus: Int
    /// `maxvcpus`; defaults to `vcpus` and may not be below it.
    public var maxvcpus: Int
    /// `cpu_weight`: the credit schedulers' weight, 1–65535; nil is Xen's default (256).
    public var cpuWeight: Int? = nil
    /// `cap`: how much CPU the domain may use, in percent of one CPU (0 = no cap); at most 100
    /// per vCPU (`maxvcpus`), as libxl checks.
    public var cap: Int? = nil
    /// `on_poweroff`; default destroy.
    public var onPoweroff: ShutdownAction
    /// `on_reboot`; default restart.
    public var onReboot: ShutdownAction
    /// `on_crash`; default destroy.
    public var onCrash: ShutdownAction
    /// `disk`, in order.
    public var disks: [DiskSpec]
    /// `vif`, in order (a vif's default devid is its index).
    public var vifs: [VifSpec]
    /// `driver_domain=1`: the domain may serve other domains' devices (be named by `backend=`)
    /// and is given their disk images and taps.
    public var driverDomain: Bool = false

    /// libxl's default memory for a guest that sets neither `memory` nor `maxmem`.
    public static let defaultMemoryMiB = 32
    /// Longest accepted domain name, in UTF-8 bytes. Xen sets no limit of its own; names end up
    /// in XenStore paths, host names and process titles here, so they are kept short.
    public static let maxNameLength = 64

    /// The one rule for domain names, for config files, `xl create` and `xl rename` alike: not
    /// empty, at most `maxNameLength` UTF-8 bytes, no '/' (it would split a XenStore path), no
    /// control character, and not all digits (xl would take it for a domid). nil when `name` is
    /// valid, else what is wrong with it.
    public static func nameProblem(_ name: String) -> String? {
        if name.isEmpty { return "domain name must not be empty" }
        if name.contains("/") { return "domain name '\(name)' must not contain '/'" }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "domain name \(XLConfigValue.string(name).configText) must not contain control characters"
        }
        if name.utf8.count > maxNameLength {
            return "domain name is \(name.utf8.count) bytes long; the limit is \(maxNameLength)"
        }
        if name.allSatisfy(\.isASCII) && name.allSatisfy(\.isNumber) {
            return "domain name \"\(name)\" is all digits and would be taken for a domid"
        }
        return nil
    }

    /// The guest command line as libxl builds it: `cmdline` if set, else "root=ROOT EXTRA"
    /// from whichever of `root` and `extra` are set; "" if none is.
    public var commandLine: String {
        if let cmdline { return cmdline }
        switch (root, extra) {
        case let (root?, extra?): return "root=\(root) \(extra)"
        case let (root?, nil): return "root=\(root)"
        case let (nil, extra?): return extra
        case (nil, nil): return ""
        }
    }

    /// A PV domain with every other setting at its default.
    public init(name: String, kernel: String?) {
        self.name = name
        self.uuid = nil
        self.type = "pv"
        self.kernel = kernel
        self.ramdisk = nil
        self.cmdline = nil
        self.root = nil
        self.extra = nil
        self.memory = DomainConfig.defaultMemoryMiB
        self.maxmem = DomainConfig.defaultMemoryMiB
        self.vcpus = 1
        self.maxvcpus = 1
        self.onPoweroff = .destroy
        self.onReboot = .restart
        self.onCrash = .destroy
        self.disks = []
        self.vifs = []
    }

    /// Builds from a parsed file. Unknown keys are not fatal: one warning each,
    /// "FILE:LINE: warning: unknown key 'foo' ignored". Wrong types or values throw an
    /// `XLConfigError` at the key (or, for disk and vif specs, at the list element).
    public init(_ file: XLConfigFile, warnings: inout [String]) throws {
        let reader = SettingReader(file: file)
        for key in file.keys where !XLKnownKeys.all.contains(key) {
            let location = file.settings.first(where: { $0.key == key })!.location
            warnings.append("\(location.file):\(location.line): warning: unknown key '\(key)' ignored")
        }

        let type = try reader.domainType()
        guard let name = try reader.string("name") else {
            throw XLConfigError("Domain name must be specified.")
        }
        try reader.checkName(name)
        self.init(name: name, kernel: try reader.string("kernel"))
        self.type = type
        if let uuid = try reader.string("uuid") {
            self.uuid = try reader.checkUUID(uuid)
        }

        // Sizes are bounded so that KiB and byte counts derived from them cannot overflow.
        let memory = try reader.integer("memory", in: 1...(1 << 32))
        let maxmem = try reader.integer("maxmem", in: 1...(1 << 32))
        self.memory = memory ?? maxmem ?? DomainConfig.defaultMemoryMiB
        self.maxmem = maxmem ?? self.memory
        if self.maxmem < self.memory {
            throw XLConfigError(
                "maxmem (\(self.maxmem) MiB) is less than memory (\(self.memory) MiB)", at: file.location("maxmem"))
        }
        let vcpus = try reader.integer("vcpus", in: 1...4096)
        let maxvcpus = try reader.integer("maxvcpus", in: 1...4096)
        self.vcpus = vcpus ?? 1
        self.maxvcpus = maxvcpus ?? self.vcpus
        if self.maxvcpus < self.vcpus {
            throw XLConfigError(
                "maxvcpus (\(self.maxvcpus)) is less than vcpus (\(self.vcpus))", at: file.location("maxvcpus"))
        }
        cpuWeight = try reader.integer("cpu_weight", in: 1...65535)
        cap = try reader.integer("cap", in: 0...(100 * self.maxvcpus))

        driverDomain = (try reader.integer("driver_domain", in: 0...1) ?? 0) == 1
        onPoweroff = try reader.action("on_poweroff") ?? .destroy
        onReboot = try reader.action("on_reboot") ?? .restart
        // A driver domain comes back by default (its frontends reconnect to the new process).
        onCrash = try reader.action("on_crash") ?? (driverDomain ? .restart : .destroy)
        try reader.checkXenAction("on_watchdog")
        try reader.checkXenAction("on_soft_reset")

        ramdisk = try reader.string("ramdisk")
        cmdline = try reader.string("cmdline")
        root = try reader.string("root")
        extra = try reader.string("extra")
        if cmdline != nil, root != nil || extra != nil, let location = file.location("cmdline") {
            warnings.append("\(location.file):\(location.line): warning: ignoring 'root' and 'extra' in favour of 'cmdline'")
        }
        if type != "hvm", kernel == nil, try reader.string("bootloader") == nil, try reader.string("firmware") == nil {
            throw XLConfigError("Neither kernel nor bootloader specified")
        }

        disks = try reader.stringList("disk").map { entry in
            do {
                return try DiskSpec.parse(entry.text)
            } catch let error as XLConfigError {
                throw XLConfigError(error.message, at: entry.location)
            }
        }
        try reader.checkDistinctVdevs(disks)
        vifs = try reader.stringList("vif").map { entry in
            do {
                return try VifSpec.parse(entry.text)
            } catch let error as XLConfigError {
                throw XLConfigError(error.message, at: entry.location)
            }
        }
    }

    /// Reads `path`, appends each of `extraSettings` as a further config line (like
    /// `xl create cfg KEY=VALUE...`: they come after the file, so they override it and `+=`
    /// extends it; errors in them are located at "command line:N:COL", N being the setting's
    /// position), then builds.
    public static func load(path: String, extraSettings: [String], warnings: inout [String]) throws -> DomainConfig {
        let file = try XLConfigParser.parseFile(path: path)
        return try DomainConfig(file.appending(extras(extraSettings)), warnings: &warnings)
    }

    /// Same as `load(path:...)` from in-memory text (tests, `xl create` reading stdin).
    public static func load(
        text: String, file: String, extraSettings: [String], warnings: inout [String]
    ) throws -> DomainConfig {
        let parsed = try XLConfigParser.parse(text, file: file)
        return try DomainConfig(parsed.appending(extras(extraSettings)), warnings: &warnings)
    }

    /// The source name errors and warnings in command-line settings carry. xl itself appends
    /// them to the file's text and so blames the file; naming them apart says where to look.
    public static let commandLineSourceName = "command line"

    /// Command-line settings, one per line, so line N is the Nth setting.
    private static func extras(_ settings: [String]) throws -> XLConfigFile {
        try XLConfigParser.parse(settings.joined(separator: "\n"), file: commandLineSourceName)
    }
}

/// Typed access to settings with libxlu's rules and messages, throwing at the key's location.
private struct SettingReader {
    let file: XLConfigFile

    func location(_ key: String) -> XLConfigLocation? { file.location(key) }

    /// A string setting; numbers are accepted as their text, as in xl.
    func string(_ key: String) throws -> String? {
        guard let value = file.value(key) else { return nil }
        guard let text = value.atomText else {
            throw XLConfigError("parameter '\(key)' is a list but should be a single value", at: location(key))
        }
        return text
    }

    /// A number read like libxlu's `xlu_cfg_get_long` (C strtol base 0, whole text), then
    /// checked against `range`.
    func integer(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text = try string(key) else { return nil }
        if file.lastSetting(key)?.isAppend == true {
            throw XLConfigError("can't use += with numbers for parameter '\(key)'", at: location(key))
        }
        switch CInteger.parseLong(text) {
        case .invalid:
            throw XLConfigError("parameter '\(key)' is not a valid number: \(XLConfigValue.string(text).configText)", at: location(key))
        case .outOfRange:
            throw XLConfigError("parameter '\(key)' could not be parsed as a number: Numerical result out of range", at: location(key))
        case .value(let value):
            guard value >= Int64(range.lowerBound), value <= Int64(range.upperBound) else {
                throw XLConfigError(
                    "parameter '\(key)' is \(value) but must be between \(range.lowerBound) and \(range.upperBound)",
                    at: location(key))
            }
            return Int(value)
        }
    }

    /// The strings of a list setting, each with where it was written.
    func stringList(_ key: String) throws -> [(text: String, location: XLConfigLocation)] {
        guard let (value, locations) = file.effective(key) else { return [] }
        guard let elements = value.listElements else {
            throw XLConfigError("parameter '\(key)' is a single value but should be a list", at: location(key))
        }
        return try zip(elements, locations).enumerated().map { index, pair in
            guard let text = pair.0.atomText else {
                throw XLConfigError("element \(index + 1) of '\(key)' is a list but should be a string", at: pair.1)
            }
            return (text, pair.1)
        }
    }

    /// `type`, reconciled with the deprecated `builder` as xl does.
    func domainType() throws -> String {
        var type: String?
        if let text = try string("type") {
            guard ["pv", "pvh", "hvm"].contains(text) else {
                throw XLConfigError("Invalid domain type \"\(text)\" (supported: pv, pvh, hvm)", at: location("type"))
            }
            type = text
        }
        if let builder = try string("builder") {
            let builderType: String
            switch builder {
            case "hvm": builderType = "hvm"
            case "generic": builderType = "pv"
            default:
                throw XLConfigError("Invalid builder \"\(builder)\" (supported: generic, hvm; builder is deprecated, use type)", at: location("builder"))
            }
            if let type, type != builderType {
                throw XLConfigError("Contradicting \"builder\" and \"type\" options specified.", at: location("builder"))
            }
            type = builderType
        }
        return type ?? "pv"
    }

    func checkName(_ name: String) throws {
        if let problem = DomainConfig.nameProblem(name) { throw XLConfigError(problem, at: location("name")) }
    }

    /// 8-4-4-4-12 hex digits, returned lowercased; xl's wording on failure.
    func checkUUID(_ text: String) throws -> String {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12], groups.allSatisfy({ $0.allSatisfy(\.isHexDigit) }) else {
            throw XLConfigError("Failed to parse UUID: \(text)", at: location("uuid"))
        }
        return text.lowercased()
    }

    /// A supported `on_*` action; Xen-only ones get a clear "not supported" error.
    func action(_ key: String) throws -> ShutdownAction? {
        guard let text = try string(key) else { return nil }
        if let action = ShutdownAction(rawValue: text) { return action }
        if ShutdownAction.xenActionNames.contains(text) {
            throw XLConfigError(
                "\(key) action \"\(text)\" is not supported by Procvisor (supported: \(ShutdownAction.supportedList))",
                at: location(key))
        }
        throw XLConfigError(
            "Unknown \(key) action \"\(text)\" specified (supported: \(ShutdownAction.supportedList))", at: location(key))
    }

    /// Settings Procvisor does not act on but xl validates: reject what xl would reject.
    func checkXenAction(_ key: String) throws {
        guard let text = try string(key) else { return }
        guard ShutdownAction.xenActionNames.contains(text) else {
            throw XLConfigError(
                "Unknown \(key) action \"\(text)\" specified (xl accepts: \(ShutdownAction.xenActionNames.joined(separator: ", ")))",
                at: location(key))
        }
    }

    /// Two disks with the same device number would collide in the guest (libxl refuses too).
    func checkDistinctVdevs(_ disks: [DiskSpec]) throws {
        var seen: [UInt32: String] = [:]
        let locations = (try? stringList("disk").map(\.location)) ?? []
        for (index, disk) in disks.enumerated() {
            guard let number = disk.vdevNumber else { continue }
            if let first = seen[number] {
                let at = index < locations.count ? locations[index] : location("disk")
                let same = first == disk.vdev ? "" : " (the same device as '\(first)')"
                throw XLConfigError("disk vdev '\(disk.vdev)' is used twice\(same)", at: at)
            }
            seen[number] = disk.vdev
        }
    }
}

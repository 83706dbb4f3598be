/// A parsed xl config: every statement in order, with libxlu's rules for reading a key back.
public struct XLConfigFile: Sendable {
    /// The name the text was parsed under.
    public var file: String
    /// Every statement, in the order written (file first, then command-line extras).
    public var settings: [XLConfigSetting]

    /// Creates a config from statements.
    public init(file: String, settings: [XLConfigSetting]) {
        self.file = file
        self.settings = settings
    }

    /// The effective value of `key`, as libxlu computes it: the last `=` wins, and each later
    /// `+=` appends to what is there (lists concatenate, strings concatenate); a `+=` with
    /// nothing before it acts as `=`. Nil when the key is not set.
    public func value(_ key: String) -> XLConfigValue? {
        effective(key)?.value
    }

    /// Where the statement that last set `key` starts (libxlu reports this line too).
    public func location(_ key: String) -> XLConfigLocation? {
        settings.last(where: { $0.key == key })?.location
    }

    /// The last statement for `key`: its `isAppend` decides whether a number may be read
    /// (libxlu refuses numbers built with `+=`).
    public func lastSetting(_ key: String) -> XLConfigSetting? {
        settings.last(where: { $0.key == key })
    }

    /// Every key that is set, once each, in order of first appearance.
    public var keys: [String] {
        var seen = Set<String>()
        return settings.compactMap { seen.insert($0.key).inserted ? $0.key : nil }
    }

    /// This config followed by `other`'s statements, as if `other`'s text came after this
    /// file's (how `xl create cfg KEY=VALUE...` works). Throws if a `+=` in `other` joins a
    /// list to a string or the other way round, which libxlu rejects while parsing.
    public func appending(_ other: XLConfigFile) throws -> XLConfigFile {
        var merged = self
        for setting in other.settings {
            try merged.checkAppend(setting)
            merged.settings.append(setting)
        }
        return merged
    }

    /// The effective value with, for lists, where each element came from.
    func effective(_ key: String) -> (value: XLConfigValue, elementLocations: [XLConfigLocation])? {
        var current: (value: XLConfigValue, elementLocations: [XLConfigLocation])?
        for setting in settings where setting.key == key {
            let locations = XLConfigFile.elementLocations(of: setting)
            if setting.isAppend, let previous = current,
               let joined = previous.value.appending(setting.value) {
                current = (joined, previous.elementLocations + locations)
            } else {
                current = (setting.value, locations)
            }
        }
        return current
    }

    /// Rejects a `+=` whose value does not have the type of what it appends to.
    func checkAppend(_ setting: XLConfigSetting) throws {
        guard setting.isAppend, let previous = value(setting.key) else { return }
        let previousIsList = previous.listElements != nil
        let newIsList = setting.value.listElements != nil
        guard previousIsList != newIsList else { return }
        let what = newIsList ? "a list" : "a \(setting.value.kindName)"
        let has = previousIsList ? "a list" : "a \(previous.kindName)"
        throw XLConfigError(
            "can't add \(what) to '\(setting.key)' with '+=': it already holds \(has)",
            at: setting.valueLocation)
    }

    private static func elementLocations(of setting: XLConfigSetting) -> [XLConfigLocation] {
        guard let elements = setting.value.listElements else { return [] }
        if setting.elementLocations.count == elements.count { return setting.elementLocations }
        // Hand-built settings may lack element locations: fall back to the value's.
        return Array(repeating: setting.valueLocation, count: elements.count)
    }
}

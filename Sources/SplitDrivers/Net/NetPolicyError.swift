/// A configuration value netback cannot use: which setting, the text given, and what it should be.
public struct NetPolicyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The setting, as named in XenStore or xl.cfg (`ip`, `rate`).
    public var setting: String
    /// The text as given.
    public var value: String
    /// What is wrong and what is expected.
    public var reason: String

    public init(setting: String, value: String, reason: String) {
        self.setting = setting
        self.value = value
        self.reason = reason
    }

    public var description: String { "\(setting)=\"\(value)\": \(reason)" }
}

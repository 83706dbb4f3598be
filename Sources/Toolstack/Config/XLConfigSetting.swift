/// One `KEY = VALUE` or `KEY += VALUE` statement, in file order.
public struct XLConfigSetting: Equatable, Sendable {
    /// The setting name, e.g. `memory`.
    public var key: String
    /// The value as written in this statement (before any `+=` joining).
    public var value: XLConfigValue
    /// True for `+=`.
    public var isAppend: Bool
    /// Where the key starts.
    public var location: XLConfigLocation
    /// Where the value starts.
    public var valueLocation: XLConfigLocation
    /// Where each top-level element of a list value starts (empty for strings and numbers),
    /// so errors in one disk or vif spec can point at that spec.
    public var elementLocations: [XLConfigLocation]

    /// Creates a setting; the value location defaults to the key's.
    public init(
        key: String, value: XLConfigValue, isAppend: Bool, location: XLConfigLocation,
        valueLocation: XLConfigLocation? = nil, elementLocations: [XLConfigLocation] = []
    ) {
        self.key = key
        self.value = value
        self.isAppend = isAppend
        self.location = location
        self.valueLocation = valueLocation ?? location
        self.elementLocations = elementLocations
    }
}

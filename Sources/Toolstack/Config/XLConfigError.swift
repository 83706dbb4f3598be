/// An error in an xl config file, a disk spec or a vif spec.
///
/// Errors found while reading a config file carry the location of the offending text;
/// errors from `DiskSpec.parse` and `VifSpec.parse` carry none (the spec string is quoted
/// in the message instead) and `DomainConfig` adds the location of the list element.
public struct XLConfigError: Error, Equatable, CustomStringConvertible {
    /// Where the problem is, when known.
    public var location: XLConfigLocation?
    /// What is wrong, without the location prefix.
    public var message: String

    /// Creates an error.
    public init(location: XLConfigLocation?, message: String) {
        self.location = location
        self.message = message
    }

    /// Creates an error; the location comes last so call sites read like the message.
    public init(_ message: String, at location: XLConfigLocation? = nil) {
        self.init(location: location, message: message)
    }

    /// "FILE:LINE:COLUMN: message", or just the message when there is no location.
    public var description: String {
        guard let location else { return message }
        return "\(location): \(message)"
    }
}

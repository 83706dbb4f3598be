/// What the caller asked for.
public enum BlkfrontOperation: Sendable, Equatable, CustomStringConvertible {
    case read, write, flush, discard

    public var description: String {
        switch self {
        case .read: return "read"
        case .write: return "write"
        case .flush: return "flush"
        case .discard: return "discard"
        }
    }
}

/// A finished request: its tag, what it was, and the bytes a read returned.
public struct BlkfrontCompletion {
    public let tag: UInt64
    public let operation: BlkfrontOperation
    public let sector: UInt64
    /// Sectors (512 bytes) of the request; 0 for a flush.
    public let count: Int
    /// A read's bytes (`count * 512`); nil for other operations and for reads into a caller's buffer.
    public let result: Result<[UInt8]?, BlkfrontError>

    /// The error, if it failed.
    public var error: BlkfrontError? {
        if case let .failure(e) = result { return e }
        return nil
    }
}

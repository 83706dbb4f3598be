import DomainRuntime

/// `XenStoreClient` as a `XenbusStore`. Its `read` and `write` take a transaction with a default
/// value, which does not satisfy the protocol's requirements, hence this thin wrapper.
public final class XenStoreClientXenbus: XenbusStore {
    public let client: XenStoreClient

    public init(_ client: XenStoreClient) { self.client = client }

    public func read(_ path: String) throws -> String { try client.read(path) }
    public func write(_ path: String, _ value: String) throws { try client.write(path, value) }
    public func watch(_ path: String, token: String, _ handler: @escaping (String) -> Void) throws {
        try client.watch(path, token: token, handler)
    }
    public func unwatch(_ path: String, token: String) throws { try client.unwatch(path, token: token) }
}

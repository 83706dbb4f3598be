/// The subset of XenStore the xenbus state machine needs, so it runs against the guest's
/// `XenStoreClient` (through `XenStoreClientXenbus`) and against an in-memory store in tests.
/// As with XenStore, a watch's handler runs once soon after it is set and then on every change
/// of the path or below it, on a thread of the store's choosing, never inside `write`.
public protocol XenbusStore: AnyObject {
    func read(_ path: String) throws -> String
    func write(_ path: String, _ value: String) throws
    func watch(_ path: String, token: String, _ handler: @escaping (String) -> Void) throws
    func unwatch(_ path: String, token: String) throws
}

/// How `BlockIO` chooses an engine (from a driver domain's settings: `DriverSettings`).
public struct BlockIOSettings: Equatable, Sendable {
    /// `PROCVISOR_FORCE_NO_IOURING=1`: the thread pool even where io_uring is allowed.
    public var forceThreadPool: Bool

    public init(forceThreadPool: Bool = false) {
        self.forceThreadPool = forceThreadPool
    }
}

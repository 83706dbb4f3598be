import DomainRuntime
import LinuxHost

/// One end of a split device over XenStore: its own `state`, the other end's, and the Linux
/// transitions between them.
///
/// Use it from a driver's own thread, not from inside a watch callback of the same store:
/// `waitForOtherEnd` sleeps until that store's watch thread delivers an event.
public final class XenbusEnd {
    public enum Role: Sendable { case frontend, backend }

    /// What the driver does at each transition; the state switch follows it.
    public struct Hooks {
        /// Frontend: publish the transport (`ring-ref`, `event-channel`, `feature-*` …) before
        /// Initialised.
        public var initialise: () throws -> Void
        /// Frontend: read the backend's properties before Connected. Backend: map the
        /// frontend's rings and publish the device properties before Connected.
        public var connect: () throws -> Void
        /// Unmap rings and finish or fail in-flight requests, before Closed (idempotent).
        public var disconnect: () -> Void
        /// Backend: the device is gone; release it.
        public var remove: () -> Void
        /// A hook failed, or the other end wrote garbage; this end has switched to Closing.
        public var failed: (Error) -> Void

        public init(initialise: @escaping () throws -> Void = {}, connect: @escaping () throws -> Void = {},
                    disconnect: @escaping () -> Void = {}, remove: @escaping () -> Void = {},
                    failed: @escaping (Error) -> Void = { _ in }) {
            self.initialise = initialise
            self.connect = connect
            self.disconnect = disconnect
            self.remove = remove
            self.failed = failed
        }
    }

    public let device: XenbusDevice
    public let role: Role
    public let store: XenbusStore
    /// Held across every switch and every reaction to the other end, so a decision is never
    /// made on a state another thread is about to change (recursive: hooks may switch).
    private let lock = XenbusCondition(recursive: true)
    private var current: XenbusState
    private var hooks: Hooks?
    private var driveToken: String?
    private static let tokenCounter = XenbusCounter()

    /// This end of `device`. Its state starts as what its `state` node holds (the toolstack's
    /// Initialising), Unknown when unreadable.
    public init(device: XenbusDevice, role: Role, store: XenbusStore) {
        self.device = device
        self.role = role
        self.store = store
        let path = (role == .frontend ? device.frontendPath : device.backendPath) + "/state"
        current = (try? store.read(path)).flatMap { XenbusState(storeValue: $0) } ?? .unknown
    }

    /// This end's directory.
    public var path: String { role == .frontend ? device.frontendPath : device.backendPath }
    /// The other end's directory.
    public var otherEndPath: String { role == .frontend ? device.backendPath : device.frontendPath }
    public var statePath: String { path + "/state" }
    public var otherEndStatePath: String { otherEndPath + "/state" }

    /// The state this end last switched to.
    public var state: XenbusState { lock.locked { current } }

    /// `xenbus_switch_state`: writes `state` as its decimal number. Nothing happens when this
    /// end is already there. Throws `XenbusError.deviceGone` if the node has been removed, as
    /// Linux refuses to recreate it.
    public func switchState(_ new: XenbusState) throws {
        try lock.locked {
            if current == new { return }
            do {
                _ = try store.read(statePath)
            } catch {
                throw XenbusError.deviceGone(path: statePath)
            }
            try store.write(statePath, new.storeValue)
            current = new
        }
    }

    /// The other end's state. A missing or unreadable node reads as Unknown (Linux's
    /// `xenbus_read_driver_state`); anything else that is not a state throws `badState`.
    public func otherEndState() throws -> XenbusState {
        let value: String
        do { value = try store.read(otherEndStatePath) } catch { return .unknown }
        return try XenbusState(storeValue: value, path: otherEndStatePath)
    }

    /// Sleeps until the other end is in one of `states` (checked at once, then at every change
    /// of its `state` node, through a watch) and returns it. Throws `timeout` after `timeout`
    /// seconds, and `badState` as soon as the other end writes garbage.
    @discardableResult
    public func waitForOtherEnd(states: Set<XenbusState>, timeout: Double) throws -> XenbusState {
        precondition(!states.isEmpty, "waiting for no state")
        let token = "xenbus-wait-\(Self.tokenCounter.next())"
        let waiter = XenbusCondition()
        var seen: Result<XenbusState, Error> = .success(.unknown)
        var done = false
        let check: () -> Void = { [self] in
            let r = Result { try otherEndState() }
            waiter.locked {
                guard !done else { return }
                seen = r
                if case let .success(s) = r, !states.contains(s) { return }
                done = true
                waiter.broadcast()
            }
        }
        try store.watch(otherEndStatePath, token: token) { _ in check() }
        defer { try? store.unwatch(otherEndStatePath, token: token) }
        check()  // a store whose watches do not fire on registration is still caught up
        let deadline = SystemTime.nanoseconds() + UInt64(max(0, timeout) * 1e9)
        return try waiter.locked {
            while !done {
                if !waiter.wait(until: deadline) && !done {
                    let last = (try? seen.get()) ?? .unknown
                    throw XenbusError.timeout(path: otherEndStatePath, waitingFor: states.sorted { $0.rawValue < $1.rawValue },
                                              last: last, seconds: timeout)
                }
            }
            return try seen.get()
        }
    }

    /// Drives this end: watches the other end's `state` and performs Linux's transitions
    /// (`XenbusAction`), calling `hooks` before each switch. Hooks run on the store's watch
    /// thread with this end's lock held: they may switch this end's state, but must not wait
    /// for the store's watches. A backend should have published
    /// its features and switched to InitWait first; a frontend starts from Initialising.
    public func start(_ hooks: Hooks) throws {
        let token = "xenbus-\(role == .frontend ? "front" : "back")-\(Self.tokenCounter.next())"
        lock.locked {
            precondition(driveToken == nil, "\(path): already started")
            self.hooks = hooks
            driveToken = token
        }
        try store.watch(otherEndStatePath, token: token) { [weak self] _ in self?.otherEndChanged() }
    }

    /// Stops driving (the states are left as they are).
    public func stop() {
        guard let token = lock.locked({ () -> String? in
            defer { driveToken = nil; hooks = nil }
            return driveToken
        }) else { return }
        try? store.unwatch(otherEndStatePath, token: token)
    }

    /// Switches to Closing (a driver that wants to go away, or a fatal error); the backend
    /// follows and this end then closes in `otherEndChanged`.
    public func close() throws { try switchState(.closing) }

    private func otherEndChanged() {
        lock.locked { react() }
    }

    private func react() {
        guard let hooks else { return }
        let other: XenbusState
        do {
            other = try otherEndState()
        } catch {
            fail(error, hooks)
            return
        }
        let own = current
        let action: XenbusAction
        switch role {
        case .frontend:
            action = .frontend(own: own, backend: other)
        case .backend:
            let online = (try? store.read("\(path)/online")).map { $0 != "0" } ?? true
            action = .backend(own: own, frontend: other, online: online)
        }
        do {
            switch action {
            case .none:
                break
            case .initialise:
                try hooks.initialise()
                try switchState(.initialised)
            case .connect:
                try hooks.connect()
                try switchState(.connected)
            case .closing:
                try switchState(.closing)
            case .close:
                hooks.disconnect()
                try switchState(.closed)
            case .reconnect:
                try switchState(.initWait)
            case .remove:
                hooks.disconnect()
                try? switchState(.closed)  // the node may be gone with the device
                hooks.remove()
                stop()
            case .reset:
                hooks.disconnect()
                try switchState(.initialising)
            case .reinitialise:
                hooks.disconnect()
                try hooks.initialise()
                try switchState(.initialised)
            }
        } catch {
            fail(error, hooks)
        }
    }

    /// `xenbus_dev_fatal`: report and switch to Closing.
    private func fail(_ error: Error, _ hooks: Hooks) {
        try? switchState(.closing)
        hooks.failed(error)
    }
}

import DomainRuntime
import Glibc
import LinuxHost

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

/// What went wrong between the two ends of a device.
public enum XenbusError: Error, Equatable, CustomStringConvertible {
    /// The other end wrote something that is not a xenbus state to its `state` node.
    case badState(path: String, value: String)
    /// A cross-link (`backend`, `backend-id`, `frontend`, `frontend-id`) does not name the
    /// standard path of this device.
    case badLink(path: String, value: String, expected: String)
    /// The other end did not reach one of `states` in time.
    case timeout(path: String, waitingFor: [XenbusState], last: XenbusState, seconds: Double)
    /// This end's `state` node is gone (the toolstack removed the device): Linux's
    /// `xenbus_switch_state` does not recreate it, nor does this.
    case deviceGone(path: String)

    public var description: String {
        switch self {
        case let .badState(path, value):
            return "\(path): '\(value)' is not a xenbus state (a number from 0 to 8)"
        case let .badLink(path, value, expected):
            return "\(path): '\(value)' is not this device's other end (expected '\(expected)')"
        case let .timeout(path, states, last, seconds):
            return "\(path): still \(last) after \(seconds) s waiting for \(states.map(\.description).joined(separator: " or "))"
        case let .deviceGone(path):
            return "\(path): the device's state node is gone"
        }
    }
}

/// A split device: its type (`vbd`, `vif`), its devid, the two domains and the standard
/// XenStore directories that link them (as `libxl__device_frontend_path` and
/// `libxl__device_backend_path` build them).
public struct XenbusDevice: Equatable, Hashable, Sendable {
    public var type: String
    public var devid: UInt32
    public var frontendDomid: UInt16
    public var backendDomid: UInt16

    public init(type: String, devid: UInt32, frontendDomid: UInt16, backendDomid: UInt16) {
        self.type = type
        self.devid = devid
        self.frontendDomid = frontendDomid
        self.backendDomid = backendDomid
    }

    /// `/local/domain/F/device/<type>/<devid>`.
    public var frontendPath: String { "/local/domain/\(frontendDomid)/device/\(type)/\(devid)" }
    /// `/local/domain/B/backend/<type>/<F>/<devid>`.
    public var backendPath: String { "/local/domain/\(backendDomid)/backend/\(type)/\(frontendDomid)/\(devid)" }

    /// The nodes the toolstack writes before either end starts (libxl's `device_generic_add`
    /// cross-links plus both states at Initialising); the device's own keys (`virtual-device`,
    /// `params` …) are the toolstack's business.
    public var toolstackNodes: [(path: String, value: String)] {
        [
            ("\(frontendPath)/backend", backendPath),
            ("\(frontendPath)/backend-id", String(backendDomid)),
            ("\(frontendPath)/state", XenbusState.initialising.storeValue),
            ("\(backendPath)/frontend", frontendPath),
            ("\(backendPath)/frontend-id", String(frontendDomid)),
            ("\(backendPath)/state", XenbusState.initialising.storeValue),
        ]
    }

    /// Writes `toolstackNodes`.
    public func writeToolstackNodes(to store: XenbusStore) throws {
        for (path, value) in toolstackNodes { try store.write(path, value) }
    }

    /// The device as its frontend in domain `domid` finds it: `backend-id` and `backend` read
    /// from its directory (Linux's `xenbus_read_otherend_details`) and checked to be the
    /// standard backend path.
    public static func frontend(store: XenbusStore, domid: UInt16, type: String, devid: UInt32) throws -> XenbusDevice {
        let dir = "/local/domain/\(domid)/device/\(type)/\(devid)"
        let idPath = "\(dir)/backend-id"
        let idText = try store.read(idPath)
        guard let backend = UInt16(idText) else {
            throw XenbusError.badLink(path: idPath, value: idText, expected: "a domid")
        }
        let device = XenbusDevice(type: type, devid: devid, frontendDomid: domid, backendDomid: backend)
        let linkPath = "\(dir)/backend"
        let link = try store.read(linkPath)
        guard link == device.backendPath else {
            throw XenbusError.badLink(path: linkPath, value: link, expected: device.backendPath)
        }
        return device
    }

    /// The device as its backend in domain `domid` finds it: `frontend-id` and `frontend`
    /// read from the backend directory and checked to be the standard frontend path.
    public static func backend(store: XenbusStore, domid: UInt16, type: String, frontendDomid: UInt16,
                               devid: UInt32) throws -> XenbusDevice {
        let device = XenbusDevice(type: type, devid: devid, frontendDomid: frontendDomid, backendDomid: domid)
        let idPath = "\(device.backendPath)/frontend-id"
        let idText = try store.read(idPath)
        guard UInt16(idText) == frontendDomid else {
            throw XenbusError.badLink(path: idPath, value: idText, expected: String(frontendDomid))
        }
        let linkPath = "\(device.backendPath)/frontend"
        let link = try store.read(linkPath)
        guard link == device.frontendPath else {
            throw XenbusError.badLink(path: linkPath, value: link, expected: device.frontendPath)
        }
        return device
    }
}

/// What an end does when the other end's state changes: the transitions of Linux's blkfront
/// (`blkback_changed`) and blkback (`frontend_changed`), which netfront/netback share.
public enum XenbusAction: Equatable, Sendable {
    /// Nothing to do.
    case none
    /// Frontend: the backend waits (InitWait) — publish the transport (ring-ref, event-channel,
    /// features) and switch to Initialised (`talk_to_blkback`). Also the first half of a
    /// reconnection after Closed.
    case initialise
    /// Frontend: the backend is Connected — read its properties and switch to Connected
    /// (`blkfront_connect`; again when the backend rewrites Connected, e.g. a resize).
    /// Backend: the frontend is Initialised or Connected — map its rings and switch to
    /// Connected (`connect_ring`, `connect`).
    case connect
    /// Backend: the frontend is closing — switch to Closing (in-flight requests complete).
    case closing
    /// Disconnect and switch to Closed: the frontend when the backend closes
    /// (`blkfront_closing`), the backend when the frontend is Closed.
    case close
    /// Backend: the frontend came back to Initialising after Closed — switch to InitWait
    /// ("prepare for reconnect").
    case reconnect
    /// Backend: the frontend is gone (Unknown), or Closed while the toolstack has set the
    /// device offline (`online` = 0, a detach) — disconnect, switch to Closed and release it.
    case remove
    /// Frontend: a restarted backend is back at Initialising while this end was set up —
    /// disconnect and return to Initialising, to connect again at its InitWait.
    case reset
    /// Frontend: a restarted backend already waits (InitWait) while this end was Connected —
    /// disconnect, publish a new transport and switch to Initialised.
    case reinitialise

    /// The frontend's reaction to the backend entering `backend` while it is in `own`.
    public static func frontend(own: XenbusState, backend: XenbusState) -> XenbusAction {
        switch backend {
        case .initWait:
            switch own {
            case .initialising, .closed: return .initialise
            // A backend goes from Connected back to InitWait only by restarting; Linux would
            // stall here when the watch coalesced away its Initialising.
            case .connected: return .reinitialise
            default: return .none
            }
        case .initialising:
            return own == .initialised || own == .connected ? .reset : .none
        case .connected:
            return own == .closing || own == .closed ? .none : .connect
        case .closing, .closed:
            return own == .closed ? .none : .close
        case .unknown, .initialised, .reconfiguring, .reconfigured:
            return .none
        }
    }

    /// The backend's reaction to the frontend entering `frontend` while it is in `own`.
    /// `online` is the backend's `online` node: a device the toolstack still wants survives its
    /// frontend closing, so the frontend can reconnect.
    public static func backend(own: XenbusState, frontend: XenbusState, online: Bool = true) -> XenbusAction {
        switch frontend {
        case .initialising:
            return own == .closed ? .reconnect : .none
        case .initialised, .connected:
            return own == .connected || own == .closing ? .none : .connect
        case .closing:
            return own == .closing || own == .closed ? .none : .closing
        case .closed:
            if !online { return .remove }
            return own == .closed ? .none : .close
        case .unknown:
            return .remove
        case .initWait, .reconfiguring, .reconfigured:
            return .none
        }
    }
}

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

/// A lock and a condition variable on `CLOCK_MONOTONIC` (LinuxHost's, at stable addresses).
final class XenbusCondition {
    private let mutex: Lock
    private let cond = Condition()

    init(recursive: Bool = false) { mutex = Lock(recursive: recursive) }

    func locked<R>(_ body: () throws -> R) rethrows -> R { try mutex.withLock(body) }

    /// With the lock held: sleeps until signalled or `deadline` (monotonic ns); false on timeout.
    func wait(until deadline: UInt64) -> Bool { cond.wait(mutex, until: deadline) }

    func broadcast() { cond.broadcast() }
}

/// Unique watch tokens within the process.
final class XenbusCounter {
    private let lock = XenbusCondition()
    private var n: UInt64 = 0
    func next() -> UInt64 { lock.locked { n += 1; return n } }
}

/// A frontend handshake's time limit, shared by every wait of one `connect`.
public struct XenbusDeadline {
    private let end: UInt64

    public init(seconds: Double) { end = SystemTime.nanoseconds() + UInt64(max(0, seconds) * 1e9) }

    /// Seconds left (0 once passed).
    public var left: Double {
        let now = SystemTime.nanoseconds()
        return Double(end > now ? end - now : 0) / 1e9
    }

    /// Why a handshake failed, in words for its error: a timeout names the node and the states
    /// waited for, and asks whether the backend domain runs.
    public static func reason(_ error: Error) -> String {
        if case let XenbusError.timeout(path, states, last, seconds) = error {
            return "\(path) still \(last) after \(seconds) s waiting for \(states.map(\.description).joined(separator: " or ")) (is the backend domain running?)"
        }
        return "\(error)"
    }
}

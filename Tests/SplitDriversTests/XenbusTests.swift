import Dispatch
import DomainRuntime
import Glibc
import SplitDrivers
import Testing

/// An in-memory XenStore with xenstored's watch semantics: a watch fires once when set and
/// then on every write or removal of its path or anything below, delivered in order on one
/// thread of its own (as XenStoreClient's watch thread), never inside `write`.
final class FakeXenbusStore: XenbusStore {
    struct Missing: Error, Equatable { var path: String }
    private var nodes: [String: String] = [:]
    private var watches: [String: String] = [:]           // token → path
    private var handlers: [String: (String) -> Void] = [:]
    private let mutex = NSLockish()
    private let events = DispatchQueue(label: "fake-xenstore-watches")
    private(set) var writes: [(String, String)] = []

    func read(_ path: String) throws -> String {
        try mutex.locked {
            guard let v = nodes[path] else { throw Missing(path: path) }
            return v
        }
    }

    func write(_ path: String, _ value: String) throws {
        mutex.locked {
            nodes[path] = value
            writes.append((path, value))
        }
        fire(path, removal: false)
    }

    /// Removes `path` and everything below it (the toolstack deleting a device).
    func remove(_ path: String) {
        mutex.locked { nodes = nodes.filter { $0.key != path && !$0.key.hasPrefix(path + "/") } }
        fire(path, removal: true)
    }

    func watch(_ path: String, token: String, _ handler: @escaping (String) -> Void) throws {
        mutex.locked {
            watches[token] = path
            handlers[token] = handler
        }
        deliver(token: token, path: path)
    }

    func unwatch(_ path: String, token: String) throws {
        mutex.locked {
            watches[token] = nil
            handlers[token] = nil
        }
    }

    var watchCount: Int { mutex.locked { watches.count } }

    func writes(to path: String) -> [String] { mutex.locked { writes.filter { $0.0 == path }.map(\.1) } }

    /// Watches on the path or above it fire; a removal also fires the watches below it.
    private func fire(_ path: String, removal: Bool) {
        let hit = mutex.locked {
            watches.filter { path == $0.value || path.hasPrefix($0.value + "/") || (removal && $0.value.hasPrefix(path + "/")) }
        }
        for (token, _) in hit.sorted(by: { $0.key < $1.key }) { deliver(token: token, path: path) }
    }

    private func deliver(token: String, path: String) {
        events.async { [self] in
            // A watch removed meanwhile gets nothing more, as with XenStoreClient.
            guard let h = mutex.locked({ handlers[token] }) else { return }
            h(path)
        }
    }

    /// Waits until every event queued so far has been handled (and what they queued in turn).
    func drain() {
        for _ in 0..<50 { events.sync {} }
    }
}

/// A pthread mutex for the fake (Foundation is not linked here).
final class NSLockish {
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(m, nil) }
    deinit { pthread_mutex_destroy(m); m.deallocate() }
    func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}

/// What the hooks of one end were asked to do, in order.
final class HookLog {
    private let lock = NSLockish()
    private var entries: [String] = []
    var errors: [Error] = []
    func add(_ s: String) { lock.locked { entries.append(s) } }
    var all: [String] { lock.locked { entries } }
    func hooks(_ name: String, failConnect: Bool = false) -> XenbusEnd.Hooks {
        XenbusEnd.Hooks(
            initialise: { self.add("\(name).initialise") },
            connect: {
                self.add("\(name).connect")
                if failConnect { throw XenbusError.deviceGone(path: "test") }
            },
            disconnect: { self.add("\(name).disconnect") },
            remove: { self.add("\(name).remove") },
            failed: { e in self.lock.locked { self.errors.append(e) }; self.add("\(name).failed") })
    }
}

@Suite struct XenbusTests {
    static let vbd = XenbusDevice(type: "vbd", devid: 51712, frontendDomid: 3, backendDomid: 1)

    /// A store with the toolstack's nodes for `vbd`, and its two ends.
    static func setUp() throws -> (FakeXenbusStore, XenbusEnd, XenbusEnd) {
        let store = FakeXenbusStore()
        try vbd.writeToolstackNodes(to: store)
        try store.write("\(vbd.backendPath)/online", "1")
        let front = XenbusEnd(device: try XenbusDevice.frontend(store: store, domid: 3, type: "vbd", devid: 51712), role: .frontend, store: store)
        let back = XenbusEnd(device: try XenbusDevice.backend(store: store, domid: 1, type: "vbd", frontendDomid: 3, devid: 51712),
                             role: .backend, store: store)
        return (store, front, back)
    }

    // MARK: states and paths

    @Test func statesHaveXensNumbersAndNames() throws {
        #expect(XenbusState.allCases.map(\.rawValue) == Array(0...8))
        #expect(XenbusState.allCases.map(\.description)
                == ["Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed", "Reconfiguring", "Reconfigured"])
        #expect(XenbusState.initWait.xenName == "XenbusStateInitWait")
        #expect(XenbusState.connected.storeValue == "4")
        #expect(try XenbusState(storeValue: "6", path: "/x/state") == .closed)
        for bad in ["", "9", "-1", "abc", "4 ", " 4", "0x4", "99999999999999999999"] {
            let e = try #require(throws: XenbusError.self) { try XenbusState(storeValue: bad, path: "/x/state") }
            #expect(e == .badState(path: "/x/state", value: bad))
        }
        #expect(XenbusError.badState(path: "/p/state", value: "abc").description == "/p/state: 'abc' is not a xenbus state (a number from 0 to 8)")
    }

    @Test func devicePathsAreLibxls() throws {
        #expect(Self.vbd.frontendPath == "/local/domain/3/device/vbd/51712")
        #expect(Self.vbd.backendPath == "/local/domain/1/backend/vbd/3/51712")
        let nodes = Dictionary(uniqueKeysWithValues: Self.vbd.toolstackNodes.map { ($0.path, $0.value) })
        #expect(nodes == [
            "/local/domain/3/device/vbd/51712/backend": "/local/domain/1/backend/vbd/3/51712",
            "/local/domain/3/device/vbd/51712/backend-id": "1",
            "/local/domain/3/device/vbd/51712/state": "1",
            "/local/domain/1/backend/vbd/3/51712/frontend": "/local/domain/3/device/vbd/51712",
            "/local/domain/1/backend/vbd/3/51712/frontend-id": "3",
            "/local/domain/1/backend/vbd/3/51712/state": "1",
        ])
        let (_, front, back) = try Self.setUp()
        #expect(front.device == Self.vbd && back.device == Self.vbd)
        #expect(front.statePath == "/local/domain/3/device/vbd/51712/state")
        #expect(front.otherEndStatePath == "/local/domain/1/backend/vbd/3/51712/state")
        #expect(back.otherEndPath == Self.vbd.frontendPath)
        #expect(front.state == .initialising && back.state == .initialising)
    }

    @Test func crossLinksAreChecked() throws {
        let store = FakeXenbusStore()
        try Self.vbd.writeToolstackNodes(to: store)
        try store.write("\(Self.vbd.frontendPath)/backend", "/local/domain/0/backend/vbd/3/51712")
        var e = try #require(throws: XenbusError.self) { try XenbusDevice.frontend(store: store, domid: 3, type: "vbd", devid: 51712) }
        #expect(e == .badLink(path: "/local/domain/3/device/vbd/51712/backend", value: "/local/domain/0/backend/vbd/3/51712",
                              expected: "/local/domain/1/backend/vbd/3/51712"))
        try store.write("\(Self.vbd.frontendPath)/backend-id", "one")
        e = try #require(throws: XenbusError.self) { try XenbusDevice.frontend(store: store, domid: 3, type: "vbd", devid: 51712) }
        #expect(e == .badLink(path: "/local/domain/3/device/vbd/51712/backend-id", value: "one", expected: "a domid"))
        try store.write("\(Self.vbd.backendPath)/frontend-id", "4")
        e = try #require(throws: XenbusError.self) { try XenbusDevice.backend(store: store, domid: 1, type: "vbd", frontendDomid: 3, devid: 51712) }
        #expect(e == .badLink(path: "/local/domain/1/backend/vbd/3/51712/frontend-id", value: "4", expected: "3"))
    }

    // MARK: switching and reading states

    @Test func switchStateWritesTheDecimalNumberOnce() throws {
        let (store, front, _) = try Self.setUp()
        try front.switchState(.initialised)
        try front.switchState(.initialised)
        try front.switchState(.connected)
        #expect(store.writes(to: front.statePath) == ["1", "3", "4"])
        #expect(front.state == .connected)
        #expect(try store.read(front.statePath) == "4")
    }

    @Test func switchStateDoesNotRecreateARemovedDevice() throws {
        let (store, front, _) = try Self.setUp()
        store.remove(Self.vbd.frontendPath)
        let e = try #require(throws: XenbusError.self) { try front.switchState(.closed) }
        #expect(e == .deviceGone(path: front.statePath))
        #expect((try? store.read(front.statePath)) == nil)
        #expect(front.state == .initialising)
    }

    @Test func otherEndStateReadsGarbageAsAnError() throws {
        let (store, front, back) = try Self.setUp()
        #expect(try front.otherEndState() == .initialising)
        try back.switchState(.initWait)
        #expect(try front.otherEndState() == .initWait)
        for garbage in ["banana", "12", "-3", ""] {
            try store.write(back.statePath, garbage)
            let e = try #require(throws: XenbusError.self) { try front.otherEndState() }
            #expect(e == .badState(path: "/local/domain/1/backend/vbd/3/51712/state", value: garbage))
        }
        store.remove(Self.vbd.backendPath)
        #expect(try front.otherEndState() == .unknown)  // as Linux's xenbus_read_driver_state
    }

    // MARK: waiting

    @Test func waitReturnsAtOnceWhenTheOtherEndIsThere() throws {
        let (store, front, back) = try Self.setUp()
        try back.switchState(.initWait)
        #expect(try front.waitForOtherEnd(states: [.initWait, .connected], timeout: 5) == .initWait)
        store.drain()
        #expect(store.watchCount == 0)
    }

    @Test func waitWakesOnTheWatch() throws {
        let (store, front, back) = try Self.setUp()
        let start = SystemTime.nanoseconds()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(100)) {
            try? back.switchState(.initWait)
            try? back.switchState(.connected)
        }
        #expect(try front.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        #expect(SystemTime.nanoseconds() - start < 5_000_000_000)
        store.drain()
        #expect(store.watchCount == 0)
    }

    @Test func waitTimesOut() throws {
        let (store, front, back) = try Self.setUp()
        try back.switchState(.initWait)
        let start = SystemTime.nanoseconds()
        let e = try #require(throws: XenbusError.self) { try front.waitForOtherEnd(states: [.connected, .closed], timeout: 0.2) }
        let elapsed = SystemTime.nanoseconds() - start
        #expect(e == .timeout(path: back.statePath, waitingFor: [.connected, .closed], last: .initWait, seconds: 0.2))
        #expect(e.description == "/local/domain/1/backend/vbd/3/51712/state: still InitWait after 0.2 s waiting for Connected or Closed")
        #expect(elapsed >= 200_000_000 && elapsed < 3_000_000_000)
        store.drain()
        #expect(store.watchCount == 0)
    }

    @Test func waitReportsGarbageAtOnce() throws {
        let (store, front, back) = try Self.setUp()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) { try? store.write(back.statePath, "x7") }
        let start = SystemTime.nanoseconds()
        let e = try #require(throws: XenbusError.self) { try front.waitForOtherEnd(states: [.connected], timeout: 10) }
        #expect(e == .badState(path: back.statePath, value: "x7"))
        #expect(SystemTime.nanoseconds() - start < 5_000_000_000)
    }

    // MARK: Linux's transitions

    @Test func frontendTransitionsAreBlkfronts() {
        typealias A = XenbusAction
        #expect(A.frontend(own: .initialising, backend: .initWait) == .initialise)
        #expect(A.frontend(own: .closed, backend: .initWait) == .initialise)
        #expect(A.frontend(own: .initialised, backend: .initWait) == .none)
        #expect(A.frontend(own: .connected, backend: .initWait) == .reinitialise)
        #expect(A.frontend(own: .initialised, backend: .connected) == .connect)
        #expect(A.frontend(own: .connected, backend: .connected) == .connect)  // resize: re-read
        #expect(A.frontend(own: .closed, backend: .connected) == .none)
        #expect(A.frontend(own: .connected, backend: .closing) == .close)
        #expect(A.frontend(own: .closing, backend: .closed) == .close)
        #expect(A.frontend(own: .closed, backend: .closed) == .none)
        #expect(A.frontend(own: .connected, backend: .initialising) == .reset)
        #expect(A.frontend(own: .initialising, backend: .initialising) == .none)
        #expect(A.frontend(own: .connected, backend: .unknown) == .none)
    }

    @Test func backendTransitionsAreBlkbacks() {
        typealias A = XenbusAction
        #expect(A.backend(own: .initWait, frontend: .initialising) == .none)
        #expect(A.backend(own: .initWait, frontend: .initialised) == .connect)
        #expect(A.backend(own: .initWait, frontend: .connected) == .connect)
        #expect(A.backend(own: .connected, frontend: .connected) == .none)
        #expect(A.backend(own: .connected, frontend: .closing) == .closing)
        #expect(A.backend(own: .closing, frontend: .closing) == .none)
        #expect(A.backend(own: .closing, frontend: .closed) == .close)
        #expect(A.backend(own: .closed, frontend: .closed) == .none)
        #expect(A.backend(own: .closed, frontend: .closed, online: false) == .remove)
        #expect(A.backend(own: .connected, frontend: .closed, online: false) == .remove)
        #expect(A.backend(own: .closed, frontend: .initialising) == .reconnect)
        #expect(A.backend(own: .connected, frontend: .unknown) == .remove)
        #expect(A.backend(own: .initWait, frontend: .reconfiguring) == .none)
    }

    // MARK: both ends driven

    /// Starts both ends with logging hooks; the backend publishes and waits, as blkback's probe.
    static func connect() throws -> (FakeXenbusStore, XenbusEnd, XenbusEnd, HookLog) {
        let (store, front, back) = try setUp()
        let log = HookLog()
        try back.start(log.hooks("back"))
        try front.start(log.hooks("front"))
        try back.switchState(.initWait)
        #expect(try front.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        #expect(try back.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        store.drain()
        return (store, front, back, log)
    }

    @Test func connectGoesThroughInitWaitAndInitialised() throws {
        let (store, front, back, log) = try Self.connect()
        #expect(front.state == .connected && back.state == .connected)
        #expect(store.writes(to: back.statePath) == ["1", "2", "4"])
        #expect(store.writes(to: front.statePath) == ["1", "3", "4"])
        #expect(log.all == ["front.initialise", "back.connect", "front.connect"])
        front.stop()
        back.stop()
    }

    @Test func frontendInitiatedTeardownAndReconnection() throws {
        let (store, front, back, log) = try Self.connect()
        try front.close()
        #expect(try back.waitForOtherEnd(states: [.closed], timeout: 10) == .closed)
        #expect(try front.waitForOtherEnd(states: [.closed], timeout: 10) == .closed)
        store.drain()
        #expect(front.state == .closed && back.state == .closed)
        #expect(store.writes(to: front.statePath).suffix(2) == ["5", "6"])
        #expect(store.writes(to: back.statePath).suffix(2) == ["5", "6"])
        #expect(log.all.suffix(2) == ["front.disconnect", "back.disconnect"])

        // The frontend comes back (a guest re-probing): the backend prepares for reconnect.
        try front.switchState(.initialising)
        #expect(try front.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        #expect(try back.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        store.drain()
        #expect(store.writes(to: back.statePath).suffix(3) == ["6", "2", "4"])
        #expect(log.all.suffix(3) == ["front.initialise", "back.connect", "front.connect"])
        front.stop()
        back.stop()
    }

    @Test func toolstackDetachClosesAndRemoves() throws {
        let (store, front, back, log) = try Self.connect()
        // libxl__initiate_device_generic_remove: online = 0, backend state = Closing.
        try store.write("\(Self.vbd.backendPath)/online", "0")
        try store.write(back.statePath, XenbusState.closing.storeValue)
        #expect(try front.waitForOtherEnd(states: [.closed], timeout: 10) == .closed)
        store.drain()
        #expect(front.state == .closed && back.state == .closed)
        #expect(try store.read(front.statePath) == "6")
        #expect(log.all.suffix(3) == ["front.disconnect", "back.disconnect", "back.remove"])
        front.stop()
    }

    @Test func restartedBackendIsReconnected() throws {
        let (store, front, back, log) = try Self.connect()
        back.stop()
        // A new backend instance: the toolstack rewrites Initialising, the driver domain starts over.
        try store.write(back.statePath, XenbusState.initialising.storeValue)
        #expect(try back.waitForOtherEnd(states: [.initialising], timeout: 10) == .initialising)
        let back2 = XenbusEnd(device: Self.vbd, role: .backend, store: store)
        #expect(back2.state == .initialising)
        try back2.start(log.hooks("back2"))
        try back2.switchState(.initWait)
        #expect(try front.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        #expect(try back2.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        store.drain()
        #expect(log.all.suffix(4) == ["front.disconnect", "front.initialise", "back2.connect", "front.connect"])
        front.stop()
        back2.stop()
    }

    @Test func backendRestartThatSkipsInitialisingStillReconnects() throws {
        let (store, front, back, log) = try Self.connect()
        back.stop()
        try store.write(back.statePath, XenbusState.initWait.storeValue)
        let back2 = XenbusEnd(device: Self.vbd, role: .backend, store: store)
        try back2.start(log.hooks("back2"))
        #expect(try back2.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        #expect(try front.waitForOtherEnd(states: [.connected], timeout: 10) == .connected)
        store.drain()
        #expect(log.all.suffix(4) == ["front.disconnect", "front.initialise", "back2.connect", "front.connect"])
        front.stop()
        back2.stop()
    }

    @Test func garbageFromTheOtherEndClosesThisEnd() throws {
        let (store, front, back, log) = try Self.connect()
        back.stop()
        try store.write(back.statePath, "connected")
        #expect(try back.waitForOtherEnd(states: [.closing], timeout: 10) == .closing)
        store.drain()
        #expect(front.state == .closing)
        #expect(log.all.last == "front.failed")
        let errors = log.errors.compactMap { $0 as? XenbusError }
        #expect(errors == [.badState(path: back.statePath, value: "connected")])
        front.stop()
    }

    @Test func aFailingConnectHookClosesThisEnd() throws {
        let (store, front, back) = try Self.setUp()
        let log = HookLog()
        try back.start(log.hooks("back", failConnect: true))
        try front.start(log.hooks("front"))
        try back.switchState(.initWait)
        #expect(try front.waitForOtherEnd(states: [.closing, .closed], timeout: 10) != .connected)
        store.drain()
        #expect(back.state == .closed)  // Closing, then Closed once the frontend closed
        #expect(front.state == .closed)
        #expect(log.all.contains("back.failed"))
        front.stop()
        back.stop()
    }

    @Test func stopRemovesTheWatch() throws {
        let (store, front, back, _) = try Self.connect()
        front.stop()
        back.stop()
        store.drain()
        #expect(store.watchCount == 0)
        try store.write(back.statePath, "5")
        store.drain()
        #expect(front.state == .connected)
    }
}

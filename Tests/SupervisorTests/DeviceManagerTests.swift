import Glibc
import LinuxHost
import Logging
import ProcvisorABI
import Testing
import Toolstack
import XenStore
@testable import Supervisor

/// The device manager on its own: a real XenStore engine and event loop, no domain process.
/// What an attach writes (the nodes every type shares, the type's own, their permissions), and
/// libxl's removal: safe, forced, and auto-forced after the timeout, with xl answered once.
@Suite struct DeviceManagerTests {
    static let frontend: DomID = 2
    static let backend: DomID = 1

    final class Fixture {
        let loop: EventLoop
        let xenstore: XenStoreServer
        let manager: DeviceManager
        var dmesg: [String] = []
        /// xl's end of the connection removals answer on.
        let xl: FileDescriptor
        let connection: ControlConnection

        init(removeTimeoutMs: UInt64 = 200) throws {
            loop = try EventLoop()
            xenstore = XenStoreServer(loop: loop, logger: Logger(label: "test"))
            manager = DeviceManager(xenstore: xenstore, loop: loop, removeTimeoutMs: removeTimeoutMs, logger: Logger(label: "test"))
            let (a, b) = try UnixSocket.pair()
            xl = a
            connection = ControlConnection(fd: b)
            manager.log = { [unowned self] in dmesg.append($0) }
        }

        deinit {
            connection.close()
            xl.close()
        }

        func disk(_ spec: String) throws -> VirtualBlockDevice {
            let parsed = try DiskSpec.parse(spec)
            return VirtualBlockDevice(frontend: frontend, devid: try #require(parsed.vdevNumber), backend: backend,
                                      settings: BlockDeviceSettings(parsed, target: parsed.target ?? ""))
        }

        func read(_ path: String) -> String? {
            (try? xenstore.engine.read(path)).map { String(decoding: $0, as: UTF8.self) }
        }

        func write(_ path: String, _ value: String) throws {
            xenstore.deliver(try xenstore.engine.write(path, Array(value.utf8)))
        }

        /// Runs the event loop until `done` or `ms` pass.
        func run(for ms: UInt64, until done: () -> Bool = { false }) throws {
            let end = MonotonicClock.nanoseconds() + ms * 1_000_000
            while !done() && MonotonicClock.nanoseconds() < end { try loop.runOnce(maxWaitMs: 20) }
        }

        /// The responses xl has been sent so far.
        func answers() -> [ControlResponse] {
            var buffer: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(xl.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n <= 0 { break }
                buffer += chunk[..<n]
            }
            var out: [ControlResponse] = []
            while let r = try? ControlFraming.decode(ControlResponse.self, from: &buffer) { out.append(r) }
            return out
        }
    }

    @Test func anAttachWritesTheSharedAndTheTypesNodesWithTheirPermissions() throws {
        let f = try Fixture()
        let vbd = try f.disk("vdev=xvdb, access=ro, target=/var/tmp/image")
        f.manager.attach(vbd)
        let b = "/local/domain/1/backend/vbd/2/51728", fr = "/local/domain/2/device/vbd/51728"
        #expect(vbd.backendPath == b && vbd.frontendPath == fr)
        for (k, v) in [("frontend", fr), ("frontend-id", "2"), ("online", "1"), ("state", "1"), ("params", "/var/tmp/image"),
                       ("type", "file"), ("mode", "r"), ("dev", "xvdb"), ("device-type", "disk")] {
            #expect(f.read(b + "/" + k) == v, "\(b)/\(k)")
        }
        for (k, v) in [("backend", b), ("backend-id", "1"), ("state", "1"), ("virtual-device", "51728"), ("device-type", "disk")] {
            #expect(f.read(fr + "/" + k) == v, "\(fr)/\(k)")
        }
        #expect(try f.xenstore.engine.permissions(b) == [XSPermission(domid: 1, access: .none), XSPermission(domid: 2, access: .read)])
        #expect(try f.xenstore.engine.permissions(fr) == [XSPermission(domid: 2, access: .none), XSPermission(domid: 1, access: .read)])
        #expect(f.manager.vbd(2, 51728) === vbd)
        #expect(f.manager.devices(of: 2).count == 1 && f.manager.devices(of: 2, .network).isEmpty)
        #expect(f.dmesg.last == "dom2: disk xvdb (51728) → /var/tmp/image ro, backend dom1")
    }

    @Test func aVifsGuestOnlyReadsItsMTUAndAddresses() throws {
        let f = try Fixture()
        let spec = try VifSpec.parse(components: ["mac=00:16:3e:00:00:01", "bridge=br7", "ip=10.0.0.2/24", "gateway=10.0.0.1", "mtu=9000"])
        let vif = VirtualNetworkDevice(frontend: 2, devid: 0, backend: 1,
                                       settings: NetworkDeviceSettings(mac: "00:16:3e:00:00:01", bridge: "br7", spec: spec))
        f.manager.attach(vif)
        let fr = "/local/domain/2/device/vif/0"
        #expect(f.read(fr + "/mac") == "00:16:3e:00:00:01" && f.read(fr + "/mtu") == "9000" && f.read(fr + "/ip") == "10.0.0.2/24")
        #expect(f.read("/local/domain/1/backend/vif/2/0/bridge") == "br7")
        let guestOnlyReads = [XSPermission(domid: 1, access: .none), XSPermission(domid: 2, access: .read)]
        for k in ["mtu", "ip", "gateway"] { #expect(try f.xenstore.engine.permissions(fr + "/" + k) == guestOnlyReads, "\(k)") }
        #expect(try f.xenstore.engine.permissions(fr + "/mac") == [XSPermission(domid: 2, access: .none), XSPermission(domid: 1, access: .read)])
        #expect(f.manager.vif(2, 0) === vif && f.manager.vbd(2, 0) == nil)
    }

    @Test func aSafeRemovalEndsWhenTheBackendCloses() throws {
        let f = try Fixture(removeTimeoutMs: 5000)
        let vbd = try f.disk("vdev=xvdb, target=/var/tmp/image")
        f.manager.attach(vbd)
        try f.write(vbd.backendPath + "/state", "4")
        f.manager.startRemoval(vbd, force: .off, from: f.connection)
        #expect(f.read(vbd.backendPath + "/online") == "0" && f.read(vbd.backendPath + "/state") == "5")
        #expect(f.read(vbd.frontendPath + "/state") == "1", "a safe removal leaves the frontend's nodes until the end")
        try f.run(for: 100)
        #expect(f.manager.vbd(2, 51728) === vbd, "done before the backend closed")
        try f.write(vbd.backendPath + "/state", "6")
        try f.run(for: 2000) { f.manager.vbd(2, 51728) == nil }
        #expect(f.manager.vbd(2, 51728) == nil)
        #expect(f.read(vbd.backendPath) == nil && f.read(vbd.frontendPath) == nil)
        // libxl__xs_path_cleanup: the emptied parent (the frontend's directory in the backend) goes too.
        #expect(f.read("/local/domain/1/backend/vbd/2") == nil && f.read("/local/domain/1/backend/vbd") != nil)
        #expect(f.answers() == [.ok])
        #expect(f.dmesg.contains("dom2: disk xvdb (51728) detached from backend dom1"))
    }

    @Test func aSafeRemovalThatTimesOutLeavesTheDevice() throws {
        let f = try Fixture(removeTimeoutMs: 100)
        let vbd = try f.disk("vdev=xvdb, target=/var/tmp/image")
        f.manager.attach(vbd)
        try f.write(vbd.backendPath + "/state", "4")
        f.manager.startRemoval(vbd, force: .off, from: f.connection)
        try f.run(for: 2000) { vbd.removal == nil }
        #expect(f.manager.vbd(2, 51728) === vbd && f.read(vbd.frontendPath + "/state") == "1")
        guard case let .error(why)? = f.answers().first else { Issue.record("xl was not told the removal failed"); return }
        #expect(why.hasSuffix("the guest did not release the device (xl block-detach -f forces the removal)"), "\(why)")
    }

    @Test func anAutoRemovalIsForcedAfterTheTimeoutAndThenRemovesEverything() throws {
        let f = try Fixture(removeTimeoutMs: 100)
        let spec = try VifSpec.parse(components: ["mac=00:16:3e:00:00:01"])
        let vif = VirtualNetworkDevice(frontend: 2, devid: 1, backend: 1,
                                       settings: NetworkDeviceSettings(mac: "00:16:3e:00:00:01", bridge: "xenbr0", spec: spec))
        f.manager.attach(vif)
        try f.write(vif.backendPath + "/state", "4")
        f.manager.startRemoval(vif, force: .auto, from: f.connection)
        // A second detach joins the first and is answered with it.
        f.manager.startRemoval(vif, force: .auto, from: f.connection)
        try f.run(for: 3000) { vif.removal == nil }
        #expect(f.manager.vif(2, 1) == nil && f.read(vif.backendPath) == nil && f.read(vif.frontendPath) == nil)
        let answers = f.answers()
        #expect(answers.count == 2)
        guard case let .error(why)? = answers.first else { Issue.record("xl was not told of the timeout"); return }
        #expect(why.contains("within 100 ms, nor within 100 ms more once the removal was forced (state 5); its nodes were removed anyway"), "\(why)")
        #expect(f.dmesg.contains { $0.contains("timeout reached, initiating forced remove") })
    }

    @Test func aGoneFrontendsDevicesLoseTheirBackendNodesOnly() throws {
        let f = try Fixture()
        let a = try f.disk("vdev=xvda, target=/var/tmp/a"), b = try f.disk("vdev=xvdb, target=/var/tmp/b")
        f.manager.attach(a)
        f.manager.attach(b)
        f.manager.detachAll(frontend: 2)
        #expect(f.manager.devices(of: 2).isEmpty)
        #expect(f.read(a.backendPath) == nil && f.read(b.backendPath) == nil)
        #expect(f.read(a.frontendPath + "/state") == "1", "the frontend's nodes go with its tree, not here")
    }
}

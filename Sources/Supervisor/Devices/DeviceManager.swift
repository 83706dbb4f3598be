import LinuxHost
import Logging
import ProcvisorABI
import Toolstack
import XenStore

/// A detach in progress (`xl block-detach`, `xl network-detach`): libxl's device removal,
/// waiting (from the event loop) for the backend to reach Closed.
final class DeviceRemoval {
    /// libxl's force flag (`LIBXL__FORCE_*`).
    enum Force {
        /// libxl_device_disk_safe_remove: after the timeout the removal fails and the device stays.
        case off
        /// libxl_device_*_destroy: the frontend's nodes go first; after the timeout everything
        /// goes anyway.
        case on
        /// libxl_device_nic_remove: as `off` until the timeout, then it becomes `on` and waits
        /// once more.
        case auto
    }

    var force: Force
    /// `auto` turned `on` after a timeout.
    var escalated = false
    /// The `xl` connections to answer when it is over.
    var waiters: [ControlConnection]
    /// The watch on the backend's `state`.
    var watch: XSConnectionID?
    var timer: UInt64?

    init(force: Force, waiter: ControlConnection) {
        self.force = force
        waiters = [waiter]
    }
}

/// Every split device of every domain (libxl's device layer): it writes the nodes of an attach,
/// runs a detach to its end (libxl's device removal, watching the backend's `state` from the
/// event loop), and removes a device's nodes when it goes. Types know only their own nodes.
final class DeviceManager {
    private(set) var devices: [DeviceKey: SplitDevice] = [:]
    private let xenstore: XenStoreServer
    private let loop: EventLoop
    private let removeTimeoutMs: UInt64
    private let logger: Logger
    /// A line in `xl dmesg`.
    var log: (String) -> Void = { _ in }
    /// How a domain is named in logs: `dom2 (g)`.
    var domainLabel: (DomID) -> String = { "dom\($0)" }

    init(xenstore: XenStoreServer, loop: EventLoop, removeTimeoutMs: UInt64, logger: Logger) {
        self.xenstore = xenstore
        self.logger = logger
        self.loop = loop
        self.removeTimeoutMs = removeTimeoutMs
    }

    /// A device a live update handed over: recorded, nothing written (its nodes are in the store).
    func adopt(_ dev: SplitDevice) { devices[dev.key] = dev }

    func device(_ type: SplitDeviceType, frontend: DomID, devid: UInt32) -> SplitDevice? {
        devices[DeviceKey(kind: type.kind, frontend: frontend, devid: devid)]
    }

    /// A frontend's devices of one type (every type when nil), in devid order.
    func devices(of frontend: DomID, _ type: SplitDeviceType? = nil) -> [SplitDevice] {
        devices.values.filter { $0.frontend == frontend && (type == nil || $0.type == type) }.sorted { $0.devid < $1.devid }
    }

    /// Every device of a type, whatever its frontend.
    func all(_ type: SplitDeviceType) -> [SplitDevice] {
        devices.values.filter { $0.type == type }
    }

    /// Applies an update to the store and delivers what it fires; a failure is logged.
    func update(_ body: (XenStoreEngine) throws -> [(XSConnectionID, XSMessage)]) {
        do {
            xenstore.deliver(try body(xenstore.engine))
        } catch {
            logger.error("xenstore update failed", metadata: ["error": "\(error)"])
        }
    }

    /// A node read as libxl's getinfo functions read it (`strtoul`: the leading digits, 0 when
    /// there are none); nil when the node is missing.
    func number(_ path: String) -> Int? {
        guard let v = try? xenstore.engine.read(path) else { return nil }
        return Int(String(decoding: v.prefix { $0 >= 0x30 && $0 <= 0x39 }.prefix(18), as: UTF8.self)) ?? 0
    }

    /// Whether a devid is taken in the store already (by a device this table does not hold).
    func frontendExists(_ type: SplitDeviceType, frontend: DomID, devid: UInt32) -> String? {
        let path = "/local/domain/\(frontend)/device/\(type.kind)/\(devid)"
        return (try? xenstore.engine.read(path)) != nil ? path : nil
    }

    /// The devids a frontend's store holds for a type.
    func storedDevids(_ type: SplitDeviceType, frontend: DomID) -> [Int] {
        ((try? xenstore.engine.directory("/local/domain/\(frontend)/device/\(type.kind)")) ?? []).compactMap { Int($0) }
    }

    /// Records a device and writes its nodes as libxl__device_generic_add and the type's
    /// set_xenstore function do, with their permissions (frontend directory: owner F, read B;
    /// backend directory: owner B, read F), in one store update.
    func attach(_ dev: SplitDevice) {
        devices[dev.key] = dev
        let fperm = [XSPermission(domid: dev.frontend.rawValue, access: .none), XSPermission(domid: dev.backend.rawValue, access: .read)]
        let bperm = [XSPermission(domid: dev.backend.rawValue, access: .none), XSPermission(domid: dev.frontend.rawValue, access: .read)]
        let f = dev.frontendPath, b = dev.backendPath, own = dev.nodes
        let back = [("frontend", f), ("frontend-id", "\(dev.frontend)"), ("online", "1"), ("state", "1")] + own.backend
        let front = [("backend", b), ("backend-id", "\(dev.backend)"), ("state", "1")] + own.frontend
        update { e in
            var out = try e.mkdir(b, perms: bperm)
            for (k, v) in back { out += try e.write(b + "/" + k, Array(v.utf8)) }
            out += try e.mkdir(f, perms: fperm)
            for (k, v) in front { out += try e.write(f + "/" + k, Array(v.utf8)) }
            for (k, v) in own.frontendReadOnly { out += try e.write(f + "/" + k, Array(v.utf8), perms: bperm) }
            return out
        }
        log("\(domainLabel(dev.frontend)): \(dev.attachSummary), backend dom\(dev.backend)")
    }

    /// The log label of a device: `dom2 (g): disk xvdb (51728)`.
    func label(_ dev: SplitDevice) -> String {
        "\(domainLabel(dev.frontend)): \(dev.what)"
    }

    // MARK: detach

    /// Starts a detach (or joins the one in progress: a forced request forces it).
    func startRemoval(_ dev: SplitDevice, force: DeviceRemoval.Force, from c: ControlConnection) {
        if let r = dev.removal {
            r.waiters.append(c)
            if force == .on && r.force != .on {
                r.force = .on
                log("\(label(dev)): removal forced while waiting for the backend")
                update { e in try Self.removeWithEmptyParent(e, dev.frontendPath) }
            }
            return
        }
        dev.removal = DeviceRemoval(force: force, waiter: c)
        initiateRemoval(dev)
    }

    /// libxl__initiate_device_generic_remove. In one go (the supervisor's store updates are
    /// atomic, as libxl's transaction): when forced, the frontend's nodes are removed first; the
    /// backend gets `online` = 0 and, unless already Closed, `state` = 5 (Closing). Then the
    /// backend's `state` is watched until it reads 6 (Closed) or vanishes, with the device
    /// removal timeout running.
    private func initiateRemoval(_ dev: SplitDevice) {
        guard let r = dev.removal else { return }
        let forced = r.force == .on
        let b = dev.backendPath
        var backendState: String?
        update { e in
            var out = forced ? try Self.removeWithEmptyParent(e, dev.frontendPath) : []
            guard let v = try? e.read(b + "/state") else { return out }
            backendState = String(decoding: v, as: UTF8.self)
            out += try e.write(b + "/online", Array("0".utf8))
            if backendState != "6" { out += try e.write(b + "/state", Array("5".utf8)) }
            return out
        }
        guard backendState != nil else {
            log("\(label(dev)): backend \(b) already removed, cleanup frontend only")
            return finishRemoval(dev)
        }
        let timeout = removeTimeoutMs
        log("\(label(dev)): \(forced ? "forced removal" : "removal"): backend online=0, state Closing; waiting up to \(timeout) ms for Closed")
        loop.cancel(r.timer)
        r.timer = loop.after(ms: timeout) { [weak self, weak dev] in
            guard let self, let dev else { return }
            self.removalTimedOut(dev)
        }
        if r.watch == nil {
            r.watch = xenstore.watch(b + "/state") { [weak self, weak dev] _ in
                guard let self, let dev else { return }
                self.removalProgress(dev)
            }
        } else {
            removalProgress(dev)
        }
    }

    /// The backend's state changed: done once it is Closed or gone.
    private func removalProgress(_ dev: SplitDevice) {
        guard dev.removal != nil else { return }
        let state = (try? xenstore.engine.read(dev.backendPath + "/state")).map { String(decoding: $0, as: UTF8.self) }
        if state == nil || state == "6" { finishRemoval(dev) }
    }

    private func finishRemoval(_ dev: SplitDevice) {
        log("dom\(dev.frontend): \(dev.what) detached from backend dom\(dev.backend)")
        forget(dev, removeFrontend: true)
        endRemoval(dev, error: nil)
    }

    private func removalTimedOut(_ dev: SplitDevice) {
        guard let r = dev.removal else { return }
        r.timer = nil
        let ms = removeTimeoutMs
        let state = (try? xenstore.engine.read(dev.backendPath + "/state")).map { String(decoding: $0, as: UTF8.self) } ?? "gone"
        let within = r.escalated ? "within \(ms) ms, nor within \(ms) ms more once the removal was forced" : "within \(ms) ms"
        let why = "unable to remove device with path \(dev.backendPath): the backend did not reach Closed (6) \(within) (state \(state))"
        let label = "dom\(dev.frontend): \(dev.what)"
        switch r.force {
        case .auto:
            // libxl: "Timeout reached, initiating forced remove".
            log("\(label): the backend did not reach Closed (6) within \(ms) ms (state \(state)): timeout reached, initiating forced remove")
            r.force = .on
            r.escalated = true
            initiateRemoval(dev)
        case .on:
            log("\(label): \(why); forced: removing its nodes anyway")
            forget(dev, removeFrontend: true)
            endRemoval(dev, error: "\(why); its nodes were removed anyway")
        case .off:
            log("\(label): \(why): dom\(dev.frontend) did not release the device, which stays attached")
            endRemoval(dev, error: "\(why): the guest did not release the device (xl \(dev.type.detachCommand) -f forces the removal)")
        }
    }

    /// Ends a removal in progress (if any): its watch and timer go, its waiters are answered.
    private func endRemoval(_ dev: SplitDevice, error: String?) {
        guard let r = dev.removal else { return }
        dev.removal = nil
        loop.cancel(r.timer)
        if let w = r.watch { xenstore.unwatch(w) }
        for c in r.waiters { c.send(error.map { .error($0) } ?? .ok) }
    }

    /// The devices `backend` serves.
    func served(by backend: DomID) -> [SplitDevice] {
        devices.values.filter { $0.backend == backend }.sorted { ($0.frontend.rawValue, $0.devid) < ($1.frontend.rawValue, $1.devid) }
    }

    /// Their backend is gone for good (a driver domain past its restart limit): each backend
    /// `state` goes to Closed, so the frontend fails what it had outstanding, and the reason is
    /// written where xenbus_dev_fatal puts a device's error (`error/device/KIND/DEVID/error` in
    /// the frontend's tree: "errno message").
    func backendGone(_ devs: [SplitDevice], why: String) {
        update { e in
            var out: [(XSConnectionID, XSMessage)] = []
            for dev in devs {
                out += (try? e.write("/local/domain/\(dev.frontend)/error/device/\(dev.type.kind)/\(dev.devid)/error",
                                     Array("\(XenErrno.ENODEV.rawValue) \(why)".utf8))) ?? []
                out += (try? e.write(dev.backendPath + "/state", Array("6".utf8))) ?? []
            }
            return out
        }
    }

    /// The frontend is gone: its devices are forgotten and their backend nodes removed (the
    /// backend sees its directory vanish and tears the device down). The frontend's own nodes
    /// go with its tree.
    func detachAll(frontend: DomID) {
        for dev in devices(of: frontend) {
            forget(dev, removeFrontend: false)
            endRemoval(dev, error: nil)
        }
    }

    /// Drops a device from the table and removes its nodes as libxl__device_destroy does: the
    /// device's directory, then its parent if now empty (libxl__xs_path_cleanup), for the
    /// backend and, when asked, the frontend.
    private func forget(_ dev: SplitDevice, removeFrontend: Bool) {
        if devices[dev.key] === dev { devices[dev.key] = nil }
        update { e in
            var out = removeFrontend ? try Self.removeWithEmptyParent(e, dev.frontendPath) : []
            out += try Self.removeWithEmptyParent(e, dev.backendPath)
            return out
        }
    }

    /// `path` and, if that leaves it empty, its parent.
    static func removeWithEmptyParent(_ e: XenStoreEngine, _ path: String) throws -> [(XSConnectionID, XSMessage)] {
        var out = (try? e.rm(path)) ?? []
        let parent = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        if (try? e.directory(parent))?.isEmpty == true { out += try e.rm(parent) }
        return out
    }
}

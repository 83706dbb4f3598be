import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// A split device the toolstack attached (a vbd or a vif): its frontend and backend nodes in
/// XenStore and what the supervisor remembers of it.
protocol SplitDevice: AnyObject {
    var frontend: UInt16 { get }
    var devid: UInt32 { get }
    var backend: UInt16 { get }
    /// `/local/domain/F/device/KIND/DEVID`.
    var frontendPath: String { get }
    /// `/local/domain/B/backend/KIND/F/DEVID`.
    var backendPath: String { get }
    /// How logs and errors name it: `disk xvdb (51728)`, `vif 0 (00:16:3e:12:34:56)`.
    var what: String { get }
    /// A detach in progress.
    var removal: DeviceRemoval? { get set }
}

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

/// Hot plug: `xl block-attach`, `xl block-detach`, `xl block-list`.
extension Supervisor {
    /// `xl block-attach`: the checks of `xl create`, then the vdev must be free in that domain;
    /// then the nodes `xl create` writes. The guest finds the device with its own watch on
    /// `device/vbd`.
    func blockAttach(_ spec: String, _ disk: DiskSpec) -> ControlResponse {
        guard let dom = find(spec) else {
            if spec == "0" || spec == "Domain-0" {
                return .error("Domain-0 cannot take virtual block devices here (it is the supervisor)")
            }
            return unknownDomain(spec)
        }
        guard dom.hasProcess, !dom.released, dom.phase == .running || dom.phase == .booting else {
            return .error("domain \(dom.domid) (\(dom.name)) is not running")
        }
        let what = "disk \(disk.vdev)"
        do {
            let checked = try checkDisk(disk)
            let key = DeviceKey(frontend: dom.domid, devid: checked.devid)
            let frontendPath = "/local/domain/\(dom.domid)/device/vbd/\(checked.devid)"
            if let other = blockDevices[key] {
                let alias = other.vdev == disk.vdev ? "" : " (attached as \(other.vdev))"
                throw CreateError("\(what): vdev \(disk.vdev) is already in use by \(dom.label)\(alias): device \(checked.devid) already exists in xenstore")
            }
            if (try? xenstore.engine.read(frontendPath)) != nil {
                throw CreateError("\(what): vdev \(disk.vdev) is already in use by \(dom.label): \(frontendPath) already exists in xenstore")
            }
            if checked.backend === dom {
                throw CreateError("\(what): \(dom.label) cannot be its own backend")
            }
            let planned = try resolveBackends([checked])
            if planned.first?.backend === dom {
                throw CreateError("\(what): \(dom.label) cannot be its own backend")
            }
            attachDisks(dom, planned)
            return .ok
        } catch {
            log("\(dom.label): block-attach \(disk.vdev) refused: \(error)")
            return .error("\(error)")
        }
    }

    /// `xl block-list`: what libxl_device_disk_getinfo reads, from the store now.
    func blockList(_ spec: String) -> ControlResponse {
        if spec == "0" || spec == "Domain-0" { return .blockDevices([]) }
        guard let dom = find(spec) else { return unknownDomain(spec) }
        let number = storeNumber
        let rows = blockDevices.values.filter { $0.frontend == dom.domid }.sorted { $0.devid < $1.devid }.map { vbd in
            let f = vbd.frontendPath
            return BlockDeviceInfo(devid: vbd.devid, vdev: vbd.vdev, backendID: vbd.backend, frontendID: vbd.frontend,
                                   state: number(f + "/state") ?? -1, eventChannel: number(f + "/event-channel") ?? -1,
                                   ringRef: number(f + "/ring-ref") ?? number(f + "/ring-ref0") ?? -1,
                                   backendPath: vbd.backendPath)
        }
        return .blockDevices(rows)
    }

    /// `xl block-detach [-f]`: libxl__initiate_device_generic_remove. In one go (the supervisor's
    /// store updates are atomic, as libxl's transaction): with `force` the frontend's nodes are
    /// removed first; the backend gets `online` = 0 and, unless already Closed, `state` = 5
    /// (Closing). Then, asynchronously, the backend's `state` is watched until it reads 6
    /// (Closed) or vanishes; the nodes of both ends are removed (libxl__device_destroy) and xl is
    /// answered. If that takes longer than the device removal timeout: a safe removal fails and
    /// leaves the device as it is (libxl_device_disk_safe_remove); a forced one removes the nodes
    /// anyway and reports the timeout (libxl_device_disk_destroy).
    func blockDetach(_ spec: String, _ device: String, force: Bool, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else {
            // xl's find_domain takes any number as a domid; a name must exist.
            let numeric = !spec.isEmpty && spec.allSatisfy(\.isNumber)
            return c.send(.error(numeric ? "Error: Device \(device) not connected." : "\(spec) is an invalid domain identifier (rc=-6)"))
        }
        guard let devid = try? VirtualDevice.devid(device), let vbd = blockDevices[DeviceKey(frontend: dom.domid, devid: devid)] else {
            return c.send(.error("Error: Device \(device) not connected."))
        }
        startRemoval(vbd, force: force ? .on : .off, from: c)
    }

    /// A node read as libxl's getinfo functions read it (`strtoul`: the leading digits, 0 when
    /// there are none); nil when the node is missing.
    func storeNumber(_ path: String) -> Int? {
        guard let v = try? xenstore.engine.read(path) else { return nil }
        return Int(String(decoding: v.prefix { $0 >= 0x30 && $0 <= 0x39 }.prefix(18), as: UTF8.self)) ?? 0
    }

    /// The log label of a device: `dom2 (g): disk xvdb (51728)`.
    func label(_ dev: SplitDevice) -> String {
        "\(domains[dev.frontend]?.label ?? "dom\(dev.frontend)"): \(dev.what)"
    }

    /// Starts a detach (or joins the one in progress: a forced request forces it).
    func startRemoval(_ dev: SplitDevice, force: DeviceRemoval.Force, from c: ControlConnection) {
        if let r = dev.removal {
            r.waiters.append(c)
            if force == .on && r.force != .on {
                r.force = .on
                log("\(label(dev)): removal forced while waiting for the backend")
                store { e in try Self.removeWithEmptyParent(e, dev.frontendPath) }
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
    func initiateRemoval(_ dev: SplitDevice) {
        guard let r = dev.removal else { return }
        let forced = r.force == .on
        let b = dev.backendPath
        var backendState: String?
        store { e in
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
        let timeout = options.deviceRemoveTimeoutMs
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
    func removalProgress(_ dev: SplitDevice) {
        guard dev.removal != nil else { return }
        let state = (try? xenstore.engine.read(dev.backendPath + "/state")).map { String(decoding: $0, as: UTF8.self) }
        if state == nil || state == "6" { finishRemoval(dev) }
    }

    func finishRemoval(_ dev: SplitDevice) {
        log("dom\(dev.frontend): \(dev.what) detached from backend dom\(dev.backend)")
        forgetDevice(dev, removeFrontend: true)
        endRemoval(dev, error: nil)
    }

    func removalTimedOut(_ dev: SplitDevice) {
        guard let r = dev.removal else { return }
        r.timer = nil
        let ms = options.deviceRemoveTimeoutMs
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
            forgetDevice(dev, removeFrontend: true)
            endRemoval(dev, error: "\(why); its nodes were removed anyway")
        case .off:
            log("\(label): \(why): dom\(dev.frontend) did not release the device, which stays attached")
            endRemoval(dev, error: "\(why): the guest did not release the device (xl block-detach -f forces the removal)")
        }
    }

    /// Ends a removal in progress (if any): its watch and timer go, its waiters are answered.
    func endRemoval(_ dev: SplitDevice, error: String?) {
        guard let r = dev.removal else { return }
        dev.removal = nil
        loop.cancel(r.timer)
        if let w = r.watch { xenstore.unwatch(w) }
        for c in r.waiters { c.send(error.map { .error($0) } ?? .ok) }
    }

    /// The frontend is gone: its devices (vbds and vifs) are forgotten and their backend nodes
    /// removed (the backend sees its directory vanish and tears the device down). The
    /// frontend's own nodes go with its tree.
    func detachDevices(_ dom: DomainRecord) {
        let devices: [SplitDevice] = blockDevices.values.filter { $0.frontend == dom.domid }
            + networkDevices.values.filter { $0.frontend == dom.domid }
        for dev in devices {
            forgetDevice(dev, removeFrontend: false)
            endRemoval(dev, error: nil)
        }
    }

    /// Drops a device from its table and removes its nodes as libxl__device_destroy does: the
    /// device's directory, then its parent if now empty (libxl__xs_path_cleanup), for the
    /// backend and, when asked, the frontend.
    func forgetDevice(_ dev: SplitDevice, removeFrontend: Bool) {
        let key = DeviceKey(frontend: dev.frontend, devid: dev.devid)
        if let vbd = dev as? VirtualBlockDevice, blockDevices[key] === vbd { blockDevices[key] = nil }
        if let vif = dev as? VirtualNetworkDevice, networkDevices[key] === vif { networkDevices[key] = nil }
        store { e in
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

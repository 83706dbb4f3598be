import Glibc
import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// An `xl block-detach` in progress: libxl's device removal, waiting (from the event loop) for
/// the backend to reach Closed.
final class DeviceRemoval {
    /// libxl_device_disk_destroy (`xl block-detach -f`) rather than libxl_device_disk_safe_remove.
    var force: Bool
    /// The `xl` connections to answer when it is over.
    var waiters: [ControlConnection]
    /// The watch on the backend's `state`.
    var watch: XSConnectionID?
    var timer: UInt64?

    init(force: Bool, waiter: ControlConnection) {
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
        func number(_ path: String) -> Int? {
            guard let v = try? xenstore.engine.read(path) else { return nil }
            // strtoul: the leading digits, 0 when there are none.
            return Int(String(decoding: v.prefix { $0 >= 0x30 && $0 <= 0x39 }.prefix(18), as: UTF8.self)) ?? 0
        }
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
        let label = "\(dom.label): disk \(vbd.vdev) (\(vbd.devid))"
        if let r = vbd.removal {
            r.waiters.append(c)
            if force && !r.force {
                r.force = true
                log("\(label): removal forced while waiting for the backend")
                store { e in try Self.removeWithEmptyParent(e, vbd.frontendPath) }
            }
            return
        }
        let r = DeviceRemoval(force: force, waiter: c)
        vbd.removal = r
        let b = vbd.backendPath
        var backendState: String?
        store { e in
            var out = force ? try Self.removeWithEmptyParent(e, vbd.frontendPath) : []
            guard let v = try? e.read(b + "/state") else { return out }
            backendState = String(decoding: v, as: UTF8.self)
            out += try e.write(b + "/online", Array("0".utf8))
            if backendState != "6" { out += try e.write(b + "/state", Array("5".utf8)) }
            return out
        }
        guard backendState != nil else {
            log("\(label): backend \(b) already removed, cleanup frontend only")
            return finishRemoval(vbd)
        }
        let timeout = options.deviceRemoveTimeoutMs
        log("\(label): \(force ? "forced removal" : "removal"): backend online=0, state Closing; waiting up to \(timeout) ms for Closed")
        r.watch = xenstore.watch(b + "/state") { [weak self, weak vbd] _ in
            guard let self, let vbd else { return }
            self.removalProgress(vbd)
        }
        r.timer = loop.after(ms: timeout) { [weak self, weak vbd] in
            guard let self, let vbd else { return }
            self.removalTimedOut(vbd)
        }
    }

    /// The backend's state changed: done once it is Closed or gone.
    func removalProgress(_ vbd: VirtualBlockDevice) {
        guard vbd.removal != nil else { return }
        let state = (try? xenstore.engine.read(vbd.backendPath + "/state")).map { String(decoding: $0, as: UTF8.self) }
        if state == nil || state == "6" { finishRemoval(vbd) }
    }

    func finishRemoval(_ vbd: VirtualBlockDevice) {
        log("dom\(vbd.frontend): disk \(vbd.vdev) (\(vbd.devid)) detached from backend dom\(vbd.backend)")
        forgetDevice(vbd, removeFrontend: true)
        endRemoval(vbd, error: nil)
    }

    func removalTimedOut(_ vbd: VirtualBlockDevice) {
        guard let r = vbd.removal else { return }
        r.timer = nil
        let state = (try? xenstore.engine.read(vbd.backendPath + "/state")).map { String(decoding: $0, as: UTF8.self) } ?? "gone"
        let why = "unable to remove device with path \(vbd.backendPath): the backend did not reach Closed (6) within \(options.deviceRemoveTimeoutMs) ms (state \(state))"
        let label = "dom\(vbd.frontend): disk \(vbd.vdev) (\(vbd.devid))"
        if r.force {
            log("\(label): \(why); forced: removing its nodes anyway")
            forgetDevice(vbd, removeFrontend: true)
            endRemoval(vbd, error: "\(why); its nodes were removed anyway")
        } else {
            log("\(label): \(why): dom\(vbd.frontend) did not release the device, which stays attached")
            endRemoval(vbd, error: "\(why): the guest did not release the device (xl block-detach -f forces the removal)")
        }
    }

    /// Ends a removal in progress (if any): its watch and timer go, its waiters are answered.
    func endRemoval(_ vbd: VirtualBlockDevice, error: String?) {
        guard let r = vbd.removal else { return }
        vbd.removal = nil
        loop.cancel(r.timer)
        if let w = r.watch { xenstore.unwatch(w) }
        for c in r.waiters { c.send(error.map { .error($0) } ?? .ok) }
    }
}

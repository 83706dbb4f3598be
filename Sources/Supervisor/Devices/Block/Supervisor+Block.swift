import LinuxHost
import ProcvisorABI
import Toolstack

extension DeviceRegistration {
    /// Virtual block devices: `disk=` entries, `xl block-attach/-detach/-list`, and the image a
    /// backend asks for (`deviceFD(.vbd)`).
    static let block = DeviceRegistration(
        type: .block,
        plan: { supervisor, config in try config.disks.map { try supervisor.checkDisk($0) } },
        descriptors: [.vbd: { $0.vbdFD($1, $2) }])
}

extension DeviceManager {
    func vbd(_ frontend: DomID, _ devid: UInt32) -> VirtualBlockDevice? {
        device(.block, frontend: frontend, devid: devid) as? VirtualBlockDevice
    }
}

extension Supervisor {
    /// The checks of one disk (`xl create` and `xl block-attach` alike): the backend domain,
    /// the image (it must exist, and be writable for `access=rw`), the device number.
    func checkDisk(_ disk: DiskSpec) throws -> PlannedDevice {
        let what = "disk \(disk.vdev)"
        guard let devid = disk.vdevNumber else { throw CreateError("\(what): invalid virtual device name") }
        if let spec = disk.specification, spec != "xen" {
            throw CreateError("\(what): specification=\(spec) is not supported: disks here are Xen PV disks (specification=xen)")
        }
        guard let target = disk.target, !target.isEmpty else {
            throw CreateError("\(what): empty CD-ROM drives are not supported (give target=)")
        }
        let backend = try disk.backend.map { try namedBackend($0, for: what, booting: false) }
        let st: FileStatus
        do {
            st = try FileStatus(path: target)
        } catch let e as SystemError {
            throw CreateError("\(what): \(target): \(e.errno.description)")
        }
        guard st.isRegular || st.isBlockDevice else { throw CreateError("\(what): \(target) is not a regular file or block device") }
        // Open it as the backend will get it: a read-only image (mode, mount, immutable file)
        // with access=rw is refused now rather than when the guest first writes.
        let rw = disk.access == .readWrite && !disk.isCDROM
        do {
            try FileDescriptor.open(target, [rw ? .readWrite : .readOnly, .closeOnExec]).close()
        } catch let e as SystemError where rw && [.permissionDenied, .readOnlyFileSystem, .notPermitted].contains(e.errno) {
            throw CreateError("\(what): \(target) is read-only but the disk has access=rw (\(e.errno.description))")
        } catch let e as SystemError {
            throw CreateError("\(what): \(target): \(e.errno.description)")
        }
        let settings = BlockDeviceSettings(disk, target: target)
        return PlannedDevice(type: .block, devid: devid, what: what, backend: backend) { frontend, backend in
            VirtualBlockDevice(frontend: frontend, devid: devid, backend: backend, settings: settings)
        }
    }

    /// `deviceFD(.vbd)`: a backend asks for the image of a device it serves.
    func vbdFD(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let (frontend, devid) = Self.deviceKeyArguments(r) else { return .error(.EINVAL) }
        guard let vbd = devices.vbd(frontend, devid) else { return .error(.ENOENT) }
        guard vbd.backend == dom.domid else {
            log("\(dom.label): asked for dom\(vbd.frontend)'s disk \(vbd.vdev), which dom\(vbd.backend) serves: refused")
            return .error(.EACCES)
        }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(vbd.target, [vbd.readOnly ? .readOnly : .readWrite, .closeOnExec])
        } catch let e as SystemError {
            log("\(dom.label): cannot open \(vbd.target) for dom\(vbd.frontend)'s disk \(vbd.vdev): \(e.errno.description)")
            return .error(XenErrno(rawValue: Int64(e.errno.rawValue)) ?? .EIO)
        } catch {
            return .error(.EIO)
        }
        return .ok(0, fds: [fd], owned: [fd])
    }

    /// Before a new incarnation of a crashed backend serves these devices again: no write of the
    /// old one may still be on its way to a disk, or it could land after the new one has
    /// reissued it and the guest has written the sector again. Its threads are gone (the process
    /// was reaped), but direct I/O its io_uring submitted completes on its own: wait for it on
    /// every writable image (`waitForDirectIO`). Returns what could not be fenced.
    func fenceDiskWrites(_ served: [SplitDevice]) -> [String] {
        var unfenced: [String] = []
        for case let vbd as VirtualBlockDevice in served where !vbd.readOnly {
            do {
                let fd = try FileDescriptor.open(vbd.target, [.readWrite, .closeOnExec])
                defer { fd.close() }
                let status = try FileStatus(fd)
                // A block device has no fallocate that waits; its writes are the kernel's once
                // submitted, and a restarted backend reissues only what it has not answered.
                guard !status.isBlockDevice, status.size > 0 else { continue }
                try fd.waitForDirectIO(length: min(4096, Int64(status.size)))
            } catch {
                unfenced.append("\(vbd.what) (\(vbd.target)): \(error)")
            }
        }
        return unfenced
    }

    // MARK: xl block-attach / -list / -detach

    /// `xl block-attach`: the checks of `xl create`, then the vdev must be free in that domain;
    /// then the nodes `xl create` writes. The guest finds the device with its own watch on
    /// `device/vbd`.
    func blockAttach(_ spec: String, _ disk: DiskSpec) -> ControlResponse {
        var refusal = ControlResponse.ok
        guard let dom = attachTarget(spec, .block, unknown: unknownDomain, refusal: &refusal) else { return refusal }
        let what = "disk \(disk.vdev)"
        do {
            let checked = try checkDisk(disk)
            if let other = devices.vbd(dom.domid, checked.devid) {
                let alias = other.vdev == disk.vdev ? "" : " (attached as \(other.vdev))"
                throw CreateError("\(what): vdev \(disk.vdev) is already in use by \(dom.label)\(alias): device \(checked.devid) already exists in xenstore")
            }
            if let path = devices.frontendExists(.block, frontend: dom.domid, devid: checked.devid) {
                throw CreateError("\(what): vdev \(disk.vdev) is already in use by \(dom.label): \(path) already exists in xenstore")
            }
            let planned = try resolveBackends([checked])
            if planned.first?.backend === dom {
                throw CreateError("\(what): \(dom.label) cannot be its own backend")
            }
            attachDevices(dom, planned)
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
        let number = devices.number
        let rows = devices.devices(of: dom.domid, .block).compactMap { $0 as? VirtualBlockDevice }.map { vbd in
            let f = vbd.frontendPath
            return BlockDeviceInfo(devid: vbd.devid, vdev: vbd.vdev, backendID: vbd.backend.rawValue, frontendID: vbd.frontend.rawValue,
                                   state: number(f + "/state") ?? -1, eventChannel: number(f + "/event-channel") ?? -1,
                                   ringRef: number(f + "/ring-ref") ?? number(f + "/ring-ref0") ?? -1,
                                   backendPath: vbd.backendPath)
        }
        return .blockDevices(rows)
    }

    /// `xl block-detach [-f]`: libxl__initiate_device_generic_remove through the device
    /// manager. Without `-f` a safe removal (libxl_device_disk_safe_remove): after the device
    /// removal timeout it fails and the device stays. With `-f` (libxl_device_disk_destroy) the
    /// frontend's nodes go first and after the timeout everything goes anyway.
    func blockDetach(_ spec: String, _ device: String, force: Bool, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else {
            // xl's find_domain takes any number as a domid; a name must exist.
            return c.send(noSuchDomain(spec, numeric: "Error: Device \(device) not connected."))
        }
        guard let devid = try? VirtualDevice.devid(device), let vbd = devices.vbd(dom.domid, devid) else {
            return c.send(.error("Error: Device \(device) not connected."))
        }
        devices.startRemoval(vbd, force: force ? .on : .off, from: c)
    }
}

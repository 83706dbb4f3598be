import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// A virtual block device: one `disk=` entry of a frontend, served by a backend domain.
final class VirtualBlockDevice: SplitDevice {
    let frontend: UInt16
    let devid: UInt32
    let vdev: String
    let backend: UInt16
    let target: String
    let readOnly: Bool
    let isCDROM: Bool
    let discard: Bool
    /// `xl block-detach` in progress.
    var removal: DeviceRemoval?

    init(frontend: UInt16, devid: UInt32, vdev: String, backend: UInt16, target: String, readOnly: Bool, isCDROM: Bool, discard: Bool) {
        self.frontend = frontend
        self.devid = devid
        self.vdev = vdev
        self.backend = backend
        self.target = target
        self.readOnly = readOnly
        self.isCDROM = isCDROM
        self.discard = discard
    }

    var frontendPath: String { "/local/domain/\(frontend)/device/vbd/\(devid)" }
    var backendPath: String { "/local/domain/\(backend)/backend/vbd/\(frontend)/\(devid)" }
    var what: String { "disk \(vdev) (\(devid))" }
}

struct DeviceKey: Hashable {
    let frontend: UInt16
    let devid: UInt32
}

/// A disk checked at `xl create` (before the domain exists) or `xl block-attach`.
struct PlannedDisk {
    let spec: DiskSpec
    let devid: UInt32
    /// Nil until resolved: the disk has no `backend=` and goes to the default driver domain.
    var backend: DomainRecord?
    let target: String
}

/// The devices of a domain being created, checked before anything is started.
struct PlannedDevices {
    var disks: [PlannedDisk]
    var vifs: [PlannedVif]
}

extension Supervisor {
    /// The driver domain disks without `backend=` go to, started on demand.
    static let defaultDriverDomainName = "blkback"

    /// Checks every `disk=` and `vif=` entry before anything is started: for disks the backend
    /// domain, the image (it must exist, and be writable for `access=rw`), the device number;
    /// for vifs what `planVifs` checks. Only once every device passed are the default driver
    /// domains (`blkback`, `netback`) found or started, for the devices without `backend=`.
    /// (Named after its first job; `createDomain` calls it.)
    func planDisks(_ config: DomainConfig) throws -> PlannedDevices {
        let disks = try config.disks.map(checkDisk)
        let vifs = try planVifs(config.vifs, frontend: nil)
        return PlannedDevices(disks: try resolveBackends(disks), vifs: try resolveVifBackends(vifs))
    }

    /// The checks of one disk (`xl create` and `xl block-attach` alike).
    func checkDisk(_ disk: DiskSpec) throws -> PlannedDisk {
        let what = "disk \(disk.vdev)"
        guard let devid = disk.vdevNumber else { throw CreateError("\(what): invalid virtual device name") }
        guard let target = disk.target, !target.isEmpty else {
            throw CreateError("\(what): empty CD-ROM drives are not supported (give target=)")
        }
        var backend: DomainRecord?
        if let name = disk.backend {
            guard let b = domains.values.first(where: { $0.name == name }), b.hasProcess, b.phase == .running else {
                throw CreateError("\(what): backend domain \"\(name)\" is not running")
            }
            guard b.config.driverDomain else {
                throw CreateError("\(what): domain \"\(name)\" is not a driver domain (set driver_domain = 1 in its config)")
            }
            backend = b
        }
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
        return PlannedDisk(spec: disk, devid: devid, backend: backend, target: target)
    }

    /// Gives the disks without `backend=` the default driver domain.
    func resolveBackends(_ disks: [PlannedDisk]) throws -> [PlannedDisk] {
        guard let first = disks.first(where: { $0.backend == nil }) else { return disks }
        let dd = try defaultDriverDomain(Self.defaultDriverDomainName, for: "disk \(first.spec.vdev)")
        return disks.map { d in
            var d = d
            if d.backend == nil { d.backend = dd }
            return d
        }
    }

    /// The running (or still booting) driver domain called `name` (`blkback`, `netback`); if
    /// there is none, one is started from the executable of that name next to procvisord
    /// (driver_domain = 1, 64 MiB, 2 vCPUs), as a domain like any other.
    func defaultDriverDomain(_ name: String, for what: String) throws -> DomainRecord {
        if let d = domains.values.first(where: { $0.name == name }) {
            guard d.config.driverDomain, d.hasProcess, d.phase == .running || d.phase == .booting else {
                throw CreateError("\(what): no backend= given, and the default driver domain \"\(name)\" (dom\(d.domid)) is not a running driver domain")
            }
            return d
        }
        let exe = Process.executablePath() ?? "/proc/self/exe"
        let kernel = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/" + name
        guard FileIO.isExecutable(kernel) else {
            throw CreateError("\(what): no backend= given and the default driver domain cannot be started: \(kernel) is missing or not executable (install \(name) next to procvisord, or start a driver domain and name it with backend=)")
        }
        var config = DomainConfig(name: name, kernel: kernel)
        config.driverDomain = true
        config.memory = 64
        config.maxmem = 64
        config.vcpus = 2
        config.maxvcpus = 2
        let dom: DomainRecord
        do {
            dom = try createDomain(config, paused: false, waiter: nil)
        } catch {
            throw CreateError("\(what): no backend= given and the default driver domain could not be started: \(error)")
        }
        log("\(what): no backend= given: started the default driver domain \(dom.label) from \(kernel)")
        return dom
    }

    /// Writes the nodes of the devices `planDisks` checked (`createDomain` calls it once the
    /// domain's tree exists).
    func attachDisks(_ dom: DomainRecord, _ planned: PlannedDevices) {
        attachDisks(dom, planned.disks)
        attachVifs(dom, planned.vifs)
    }

    /// Writes the frontend and backend nodes libxl writes for a vbd, with its permissions
    /// (frontend dir: owner F, read B; backend dir: owner B, read F), and records the device.
    func attachDisks(_ dom: DomainRecord, _ planned: [PlannedDisk]) {
        for p in planned {
            guard let backend = p.backend else { continue }  // resolveBackends gave every disk one
            let vbd = VirtualBlockDevice(frontend: dom.domid, devid: p.devid, vdev: p.spec.vdev, backend: backend.domid,
                                         target: p.target, readOnly: p.spec.access == .readOnly || p.spec.isCDROM,
                                         isCDROM: p.spec.isCDROM, discard: p.spec.discard ?? true)
            blockDevices[DeviceKey(frontend: dom.domid, devid: p.devid)] = vbd
            let fperm = [XSPermission(domid: vbd.frontend, access: .none), XSPermission(domid: vbd.backend, access: .read)]
            let bperm = [XSPermission(domid: vbd.backend, access: .none), XSPermission(domid: vbd.frontend, access: .read)]
            let f = vbd.frontendPath, b = vbd.backendPath
            let isBlock = (try? FileStatus(path: vbd.target))?.isBlockDevice ?? false
            store { e in
                var out = try e.mkdir(b, perms: bperm)
                for (k, v) in [("frontend", f), ("frontend-id", "\(vbd.frontend)"), ("online", "1"), ("state", "1"),
                               ("params", vbd.target), ("type", isBlock ? "phy" : "file"), ("mode", vbd.readOnly ? "r" : "w"),
                               ("removable", vbd.isCDROM ? "1" : "0"), ("bootable", "1"), ("dev", vbd.vdev),
                               ("device-type", vbd.isCDROM ? "cdrom" : "disk"), ("discard-enable", vbd.discard ? "1" : "0")] {
                    out += try e.write(b + "/" + k, Array(v.utf8))
                }
                out += try e.mkdir(f, perms: fperm)
                for (k, v) in [("backend", b), ("backend-id", "\(vbd.backend)"), ("state", "1"),
                               ("virtual-device", "\(vbd.devid)"), ("device-type", vbd.isCDROM ? "cdrom" : "disk")] {
                    out += try e.write(f + "/" + k, Array(v.utf8))
                }
                return out
            }
            log("\(dom.label): disk \(vbd.vdev) (\(vbd.devid)) → \(vbd.target) \(vbd.readOnly ? "ro" : "rw"), backend dom\(vbd.backend)")
        }
    }

    /// `deviceFD(.vbd)`: a backend asks for the image of a device it serves.
    func vbdFD(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard r.args[1] <= UInt64(UInt16.max), r.args[2] <= UInt64(UInt32.max) else {
            return .error(.EINVAL)
        }
        let key = DeviceKey(frontend: UInt16(r.args[1]), devid: UInt32(r.args[2]))
        guard let vbd = blockDevices[key] else { return .error(.ENOENT) }
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
}

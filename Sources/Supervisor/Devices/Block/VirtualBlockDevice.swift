import Glibc
import LinuxHost
import Toolstack

/// A virtual block device: one `disk=` entry of a frontend, served by a backend domain.
final class VirtualBlockDevice: SplitDevice {
    var type: SplitDeviceType { .block }
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

    init(frontend: UInt16, backend: UInt16, planned p: PlannedDisk) {
        self.frontend = frontend
        self.backend = backend
        devid = p.devid
        vdev = p.spec.vdev
        target = p.target
        readOnly = p.spec.access == .readOnly || p.spec.isCDROM
        isCDROM = p.spec.isCDROM
        discard = p.spec.discard ?? true
    }

    var what: String { "disk \(vdev) (\(devid))" }
    var attachSummary: String { "disk \(vdev) (\(devid)) → \(target) \(readOnly ? "ro" : "rw")" }

    /// libxl__set_xenstore_disk's nodes (`type` phy for a block device, file for an image).
    var nodes: DeviceNodes {
        var st = stat()
        let isBlock = stat(target, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
        let deviceType = isCDROM ? "cdrom" : "disk"
        return DeviceNodes(
            backend: [("params", target), ("type", isBlock ? "phy" : "file"), ("mode", readOnly ? "r" : "w"),
                      ("removable", isCDROM ? "1" : "0"), ("bootable", "1"), ("dev", vdev),
                      ("device-type", deviceType), ("discard-enable", discard ? "1" : "0")],
            frontend: [("virtual-device", "\(devid)"), ("device-type", deviceType)])
    }
}

/// A disk checked at `xl create` (before the domain exists) or `xl block-attach`.
struct PlannedDisk {
    let spec: DiskSpec
    let devid: UInt32
    let target: String
}

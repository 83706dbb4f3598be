import LinuxHost
import Toolstack

/// A virtual block device: one `disk=` entry of a frontend, served by a backend domain.
typealias VirtualBlockDevice = Device<BlockDeviceSettings>

/// What a vbd is beyond its ends: the disk as its `disk=` entry gave it.
struct BlockDeviceSettings: DeviceSettings, Codable {
    static var type: SplitDeviceType { .block }
    let vdev: String
    let target: String
    let readOnly: Bool
    let isCDROM: Bool
    let discard: Bool

    init(_ spec: DiskSpec, target: String) {
        vdev = spec.vdev
        self.target = target
        readOnly = spec.access == .readOnly || spec.isCDROM
        isCDROM = spec.isCDROM
        discard = spec.discard ?? true
    }

    func what(devid: UInt32) -> String { "disk \(vdev) (\(devid))" }
    func attachSummary(devid: UInt32) -> String { "disk \(vdev) (\(devid)) → \(target) \(readOnly ? "ro" : "rw")" }

    /// libxl__set_xenstore_disk's nodes (`type` phy for a block device, file for an image).
    func nodes(devid: UInt32) -> DeviceNodes {
        let isBlock = (try? FileStatus(path: target))?.isBlockDevice ?? false
        let deviceType = isCDROM ? "cdrom" : "disk"
        return DeviceNodes(
            backend: [("params", target), ("type", isBlock ? "phy" : "file"), ("mode", readOnly ? "r" : "w"),
                      ("removable", isCDROM ? "1" : "0"), ("bootable", "1"), ("dev", vdev),
                      ("device-type", deviceType), ("discard-enable", discard ? "1" : "0")],
            frontend: [("virtual-device", "\(devid)"), ("device-type", deviceType)])
    }
}

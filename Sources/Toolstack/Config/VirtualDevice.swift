import ProcvisorABI

/// A virtual block device as a config names it (`vdev=xvda`) and the number Xen knows it by: the
/// `virtual-device` node and the `DEVID` of `device/vbd/DEVID`. The encoding is
/// `libxl__device_disk_dev_number` (tools/libs/light/libxl_device.c) and docs/misc/vbd-interface.txt:
///
///     202 << 8 | disk << 4 | partition     xvdX[N] and dNpM, disks and partitions up to 15
///     1 << 28 | disk << 8 | partition      xvd and dNpM beyond (disks < 2^20, partitions < 256)
///     3 << 8 | disk << 6 | partition       hda, hdb (partitions up to 63)
///     22 << 8 | (disk-2) << 6 | partition  hdc, hdd
///     8 << 8 | disk << 4 | partition       sda … sdp (partitions up to 15)
///     a plain number (hex, octal, decimal) up to INT_MAX, taken as is
///
/// Disk letters count in bijective base 26 as Linux names drives (a … z, aa … az, ba …); a
/// partition is a decimal number without leading zero. Where libxl accepts nonsense through
/// `strtoul`/`sscanf` (blanks, signs, an empty name as device 0, a bare `xvd` as a negative
/// number) this refuses it.
public struct VirtualDevice: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The naming scheme of a vdev.
    public enum Kind: Equatable, Hashable, Sendable {
        /// `xvdX[N]` or `dNpM`: a Xen virtual disk.
        case xvd
        /// `hdX[N]`: an IDE disk.
        case ide
        /// `sdX[N]`: a SCSI disk.
        case scsi
        /// A device number written as is.
        case number
    }

    /// The name as written in the config.
    public let name: String
    /// The Xen device number (`virtual-device`, the device directory's name).
    public let devid: UInt32
    public let kind: Kind
    /// The disk index (0 for xvda, hda, sda, d0p…); nil for a plain number.
    public let disk: Int?
    /// The partition, 0 for the whole disk; nil for a plain number.
    public let partition: Int?

    /// The most disks and partitions of each scheme (libxl's limits).
    public static let maxXvdDisk = (1 << 20) - 1
    public static let maxXvdPartition = 255
    public static let maxIDEDisk = 3
    public static let maxIDEPartition = 63
    public static let maxSCSIDisk = 15
    public static let maxSCSIPartition = 15
    /// `1 << 28`: the extended xvd encoding.
    public static let extended: UInt32 = VbdNumber.extended

    /// Parses a vdev name; throws `VirtualDeviceError` naming the input and what is wrong.
    public init(_ name: String) throws {
        self.name = name
        let bytes = Array(name.utf8)
        func fail(_ reason: String) -> VirtualDeviceError { VirtualDeviceError(vdev: name, reason: reason) }
        if bytes.isEmpty { throw fail("the name is empty") }

        if let (disk, partition) = try Self.diskAndPartitionForm(bytes, fail) {
            (kind, self.disk, self.partition) = (.xvd, disk, partition)
            devid = VbdNumber.xvd(disk: disk, partition: partition)
        } else if let (disk, partition) = try Self.letterForm(bytes, prefix: "xvd", scheme: "an xvd",
                                                               maxDisk: Self.maxXvdDisk, maxPartition: Self.maxXvdPartition, fail) {
            (kind, self.disk, self.partition) = (.xvd, disk, partition)
            devid = VbdNumber.xvd(disk: disk, partition: partition)
        } else if let number = CInteger.scan(bytes, from: 0, base: 0, allowBlanksAndSign: false), number.end == bytes.count {
            // strtoul(name, &end, 0) taking the whole name, up to INT_MAX as libxl.
            guard !number.overflow, number.magnitude <= UInt64(Int32.max) else {
                throw fail("device number \(name) is over \(Int32.max)")
            }
            (kind, disk, partition) = (.number, nil, nil)
            devid = UInt32(number.magnitude)
        } else if let (disk, partition) = try Self.letterForm(bytes, prefix: "hd", scheme: "an IDE (hd)",
                                                               maxDisk: Self.maxIDEDisk, maxPartition: Self.maxIDEPartition, fail) {
            (kind, self.disk, self.partition) = (.ide, disk, partition)
            devid = VbdNumber.ide(disk: disk, partition: partition)
        } else if let (disk, partition) = try Self.letterForm(bytes, prefix: "sd", scheme: "a SCSI (sd)",
                                                               maxDisk: Self.maxSCSIDisk, maxPartition: Self.maxSCSIPartition, fail) {
            (kind, self.disk, self.partition) = (.scsi, disk, partition)
            devid = VbdNumber.scsi(disk: disk, partition: partition)
        } else {
            throw fail("not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)")
        }
    }

    /// The device number of a vdev name.
    public static func devid(_ name: String) throws -> UInt32 { try VirtualDevice(name).devid }

    /// The name a device number has, the inverse of `devid(_:)` (`VbdNumber.name(of:)`); nil
    /// for numbers that are none of Xen's encodings.
    public static func name(forDevid devid: UInt32) -> String? { VbdNumber.name(of: devid) }

    /// The name.
    public var description: String { name }

    // MARK: parsing

    /// `d<disk>p<partition>`, the numbers in C `%i` syntax (so `0x10` and octal `020` work) but
    /// without the blanks and signs sscanf would skip. Nil when the name is not of this form.
    private static func diskAndPartitionForm(_ b: [UInt8], _ fail: (String) -> VirtualDeviceError) throws -> (Int, Int)? {
        guard b.first == UInt8(ascii: "d"),
              let disk = CInteger.scan(b, from: 1, base: 0, allowBlanksAndSign: false),
              disk.end < b.count, b[disk.end] == UInt8(ascii: "p"),
              let partition = CInteger.scan(b, from: disk.end + 1, base: 0, allowBlanksAndSign: false),
              partition.end == b.count else { return nil }
        if disk.overflow || disk.magnitude > UInt64(maxXvdDisk) {
            throw fail("disk \(String(decoding: b[1..<disk.end], as: UTF8.self)) is over \(maxXvdDisk)")
        }
        if partition.overflow || partition.magnitude > UInt64(maxXvdPartition) {
            throw fail("partition \(String(decoding: b[(disk.end + 1)...], as: UTF8.self)) is over \(maxXvdPartition)")
        }
        return (Int(disk.magnitude), Int(partition.magnitude))
    }

    /// `<prefix><letters>[<partition>]`. Nil when the name does not start with `prefix`; throws
    /// when it does but the rest is wrong.
    private static func letterForm(_ b: [UInt8], prefix: String, scheme: String, maxDisk: Int, maxPartition: Int,
                                   _ fail: (String) -> VirtualDeviceError) throws -> (Int, Int)? {
        let p = Array(prefix.utf8)
        guard b.starts(with: p) else { return nil }
        var i = p.count
        var disk = -1
        while i < b.count, b[i] >= UInt8(ascii: "a"), b[i] <= UInt8(ascii: "z") {
            disk = (disk + 1) * 26 + Int(b[i] - UInt8(ascii: "a"))
            if disk > maxDisk {
                throw fail("\(scheme) disk name goes up to \(prefix)\(letters(maxDisk)) (disk \(maxDisk))"
                           + (prefix == "sd" ? "; use xvd names for more disks" : ""))
            }
            i += 1
        }
        if disk < 0 { throw fail("no disk letter (a-z) after '\(prefix)' (e.g. \(prefix)a)") }
        if i == b.count { return (disk, 0) }
        let digits = b[i...]
        let text = String(decoding: digits, as: UTF8.self)
        guard digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw fail("'\(text)' after '\(prefix)\(letters(disk))' is not a partition number")
        }
        if digits.first == UInt8(ascii: "0") {
            throw fail("partition '\(text)' has a leading zero (the whole disk is \(prefix)\(letters(disk)))")
        }
        guard digits.count <= 4, let partition = Int(text), partition <= maxPartition else {
            throw fail("partition \(text) is over \(maxPartition), the most \(scheme) disk has")
        }
        return (disk, partition)
    }

    static func letters(_ disk: Int) -> String { VbdNumber.letters(disk) }
}

/// A vdev name that is not a Xen virtual device.
public struct VirtualDeviceError: Error, Equatable, CustomStringConvertible {
    /// The name as given.
    public var vdev: String
    /// What is wrong with it.
    public var reason: String

    public init(vdev: String, reason: String) {
        self.vdev = vdev
        self.reason = reason
    }

    /// "invalid virtual device 'xvda99999': partition is over 255, the most an xvd disk has".
    public var description: String { "invalid virtual device '\(vdev)': \(reason)" }
}

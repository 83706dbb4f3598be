/// One entry of `disk = [ ... ]`, parsed as xl-disk-configuration(5) describes:
///
///     [<key>=<value>|<flag>,]*[<target>,[<format>,[<vdev>,[<access>]]]],[<key>=<value>|<flag>,]*[target=<target>]
///
/// including the deprecated xend forms (`phy:/dev/x,xvda,w`, `raw:`, `iscsi:`, `,hdc:cdrom,r`).
public struct DiskSpec: Codable, Equatable, Sendable {
    /// The image or device path (`target=` or the first positional parameter); "" or nil for an
    /// empty CD-ROM drive. Kept as written: libxl's "prepend /dev" rule is applied by backends.
    public var target: String?
    /// Image format; `raw` unless given, `empty` for a CD-ROM without a target.
    public var format: DiskFormat
    /// The guest's device name, e.g. `xvda`, `hdc`, `sda1`, `d0p1` (mandatory).
    public var vdev: String
    /// `ro` or `rw`; CD-ROMs are always read-only.
    public var access: DiskAccess
    /// `cdrom`, `devtype=cdrom` or the deprecated `VDEV:cdrom`.
    public var isCDROM: Bool
    /// Backend domain name (`backend=`); nil means domain 0.
    public var backend: String?
    /// Backend implementation (`backendtype=`): phy, qdisk, standalone or tap; nil = automatic.
    public var backendType: String?
    /// Hotplug script (`script=`, or `block-iscsi` etc. from a deprecated prefix).
    public var script: String?
    /// nil = backend default; `discard` / `no-discard`.
    public var discard: Bool?
    /// `direct-io-safe` was given.
    public var directIOSafe: Bool
    /// nil = default (trusted); `trusted` / `untrusted`.
    public var trusted: Bool?
    /// Protocol (`specification=`): xen or virtio; nil = xen.
    public var specification: String?
    /// `grant_usage=1` / `grant_usage=0`; nil = default.
    public var grantUsage: Bool?
    /// The spec text as written.
    public var spec: String

    /// Creates a spec from parts; `spec` is rebuilt in canonical key=value form when omitted.
    public init(
        target: String?, format: DiskFormat = .raw, vdev: String, access: DiskAccess = .readWrite,
        isCDROM: Bool = false, backend: String? = nil, backendType: String? = nil, script: String? = nil,
        discard: Bool? = nil, directIOSafe: Bool = false, trusted: Bool? = nil, specification: String? = nil,
        grantUsage: Bool? = nil, spec: String? = nil
    ) {
        self.target = target
        self.format = format
        self.vdev = vdev
        self.access = access
        self.isCDROM = isCDROM
        self.backend = backend
        self.backendType = backendType
        self.script = script
        self.discard = discard
        self.directIOSafe = directIOSafe
        self.trusted = trusted
        self.specification = specification
        self.grantUsage = grantUsage
        self.spec = spec ?? "format=\(format.rawValue),vdev=\(vdev),access=\(access.rawValue)"
            + (isCDROM ? ",devtype=cdrom" : "") + (target.map { ",target=\($0)" } ?? "")
    }

    /// Parses one disk spec. Throws an `XLConfigError` without a location whose message is
    /// xl's ("config parsing error in disk specification: unknown value for format: near `foo'
    /// in `SPEC'") plus, where it helps, the supported values. The vdev is also checked here
    /// (xl leaves that to libxl at create time) so a bad one is reported with the config.
    public static func parse(_ spec: String) throws -> DiskSpec {
        let scanned = try DiskSpecScanner.scan(spec)
        var format = scanned.format ?? .raw
        var readWrite = scanned.readWrite
        if scanned.isCDROM {
            readWrite = false
            if scanned.target == nil || scanned.target == "" { format = .empty }
        }
        guard let vdev = scanned.vdev else {
            throw DiskSpecScanner.error("no vdev specified", near: nil, spec: spec)
        }
        if scanned.target == nil && !scanned.isCDROM {
            throw DiskSpecScanner.error("no target specified (and device not removable)", near: nil, spec: spec)
        }
        guard DiskSpec.deviceNumber(vdev) != nil else {
            throw DiskSpecScanner.error(
                "invalid or unsupported virtual disk identifier", near: vdev, spec: spec,
                hint: "use e.g. xvda, xvdb1, xvdaa, hda, sdb2 or d0p1")
        }
        return DiskSpec(
            target: scanned.target, format: format, vdev: vdev, access: readWrite ? .readWrite : .readOnly,
            isCDROM: scanned.isCDROM, backend: scanned.backend, backendType: scanned.backendType,
            script: scanned.script, discard: scanned.discard, directIOSafe: scanned.directIOSafe,
            trusted: scanned.trusted, specification: scanned.specification, grantUsage: scanned.grantUsage,
            spec: spec)
    }

    /// The Xen virtual block device number for `vdev` (libxl_device_disk_dev_number), see
    /// xen-vbd-interface(7): `xvdX[N]` is 202<<8 | disk<<4 | part while disk and part are at
    /// most 15 and (1<<28) | disk<<8 | part beyond; `hdX[N]` uses majors 3 and 22; `sdX[N]` major 8;
    /// `dNpM` is xvd-style; a plain number is taken as is. Nil if the name is not valid.
    public var vdevNumber: UInt32? { DiskSpec.deviceNumber(vdev) }

    static func deviceNumber(_ vdev: String) -> UInt32? {
        if let (disk, partition) = diskAndPartitionForm(vdev) ?? letterForm(vdev, prefix: "xvd", maxDisk: (1 << 20) - 1, maxPartition: 255) {
            if disk <= 15 && partition <= 15 { return UInt32(202 << 8 | disk << 4 | partition) }
            return UInt32(1 << 28 | disk << 8 | partition)
        }
        // A raw device number (strtoul base 0, up to INT_MAX).
        let bytes = Array(vdev.utf8)
        if let number = CInteger.scan(bytes, from: 0, base: 0, allowBlanksAndSign: false),
           number.end == bytes.count, !number.overflow, number.magnitude <= UInt64(Int32.max) {
            return UInt32(number.magnitude)
        }
        if let (disk, partition) = letterForm(vdev, prefix: "hd", maxDisk: 3, maxPartition: 63) {
            return UInt32((disk < 2 ? 3 : 22) << 8 | (disk & 1) << 6 | partition)
        }
        if let (disk, partition) = letterForm(vdev, prefix: "sd", maxDisk: 15, maxPartition: 15) {
            return UInt32(8 << 8 | disk << 4 | partition)
        }
        return nil
    }

    /// `PREFIX` + drive letters + optional partition. The letters count in bijective base 26
    /// (a..z, aa..az, ...), as Linux names drives; partitions have no leading zero.
    private static func letterForm(_ vdev: String, prefix: String, maxDisk: Int, maxPartition: Int) -> (Int, Int)? {
        guard vdev.hasPrefix(prefix) else { return nil }
        let rest = vdev.utf8.dropFirst(prefix.utf8.count)
        var disk = -1
        var index = rest.startIndex
        while index != rest.endIndex, rest[index] >= UInt8(ascii: "a"), rest[index] <= UInt8(ascii: "z") {
            disk = (disk + 1) * 26 + Int(rest[index] - UInt8(ascii: "a"))
            if disk > maxDisk { return nil }
            index = rest.index(after: index)
        }
        // libxl accepts a bare prefix ("xvd") as disk -1 and computes a nonsense number; here
        // at least one letter is required.
        guard disk >= 0 else { return nil }
        let digits = Substring(rest[index...])
        if digits.isEmpty { return (disk, 0) }
        guard CInteger.isDecimalDigits(digits), digits.first != "0", digits.count <= 4,
              let partition = Int(digits), partition <= maxPartition else { return nil }
        return (disk, partition)
    }

    /// `d<disk>p<partition>` (numbers in C `%i` syntax, so 0x and leading-0 octal work too),
    /// disk below 2^20 and partition below 256.
    private static func diskAndPartitionForm(_ vdev: String) -> (Int, Int)? {
        let bytes = Array(vdev.utf8)
        guard bytes.first == UInt8(ascii: "d"),
              let disk = CInteger.scan(bytes, from: 1, base: 0, allowBlanksAndSign: false), !disk.overflow,
              disk.end < bytes.count, bytes[disk.end] == UInt8(ascii: "p"),
              let partition = CInteger.scan(bytes, from: disk.end + 1, base: 0, allowBlanksAndSign: false),
              !partition.overflow, partition.end == bytes.count,
              disk.magnitude < 1 << 20, partition.magnitude < 256 else { return nil }
        return (Int(disk.magnitude), Int(partition.magnitude))
    }
}

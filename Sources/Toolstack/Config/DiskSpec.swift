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
    /// The spec text as written.
    public var spec: String

    /// Creates a spec from parts; `spec` is rebuilt in canonical key=value form when omitted.
    public init(
        target: String?, format: DiskFormat = .raw, vdev: String, access: DiskAccess = .readWrite,
        isCDROM: Bool = false, backend: String? = nil, backendType: String? = nil, script: String? = nil,
        discard: Bool? = nil, directIOSafe: Bool = false, trusted: Bool? = nil, specification: String? = nil,
        spec: String? = nil
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
        self.spec = spec ?? "format=\(format.rawValue),vdev=\(vdev),access=\(access.rawValue)"
            + (isCDROM ? ",devtype=cdrom" : "") + (target.map { ",target=\($0)" } ?? "")
    }

    /// Parses one disk spec. Throws an `XLConfigError` without a location whose message is
    /// xl's ("config parsing error in disk specification: unknown value for format: near `foo'
    /// in `SPEC'") plus, where it helps, the supported values. The vdev is also checked here
    /// (xl leaves that to libxl at create time) so a bad one is reported with the config.
    public static func parse(_ spec: String) throws -> DiskSpec {
        try parse(components: [spec])
    }

    /// Parses a spec given as several strings, as `xl block-attach DOMAIN COMPONENT...` takes it
    /// (xlu_disk_parse with several specs): `'phy:/dev/sdb' xvdb w` is the same disk as
    /// `phy:/dev/sdb,xvdb,w`. `spec` is the components joined with commas.
    public static func parse(components: [String]) throws -> DiskSpec {
        let spec = components.joined(separator: ",")
        let scanned = try DiskSpecScanner.scan(components: components)
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
            trusted: scanned.trusted, specification: scanned.specification,
            spec: spec)
    }

    /// The Xen virtual block device number for `vdev` (libxl_device_disk_dev_number), see
    /// xen-vbd-interface(7): `xvdX[N]` is 202<<8 | disk<<4 | part while disk and part are at
    /// most 15 and (1<<28) | disk<<8 | part beyond; `hdX[N]` uses majors 3 and 22; `sdX[N]` major 8;
    /// `dNpM` is xvd-style; a plain number is taken as is. Nil if the name is not valid.
    public var vdevNumber: UInt32? { DiskSpec.deviceNumber(vdev) }

    static func deviceNumber(_ vdev: String) -> UInt32? { try? VirtualDevice.devid(vdev) }
}

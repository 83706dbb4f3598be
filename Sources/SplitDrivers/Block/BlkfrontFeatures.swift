import ProcvisorABI

/// What the backend offers, read as Linux's blkfront_connect and
/// blkfront_gather_backend_features do.
public struct BlkfrontFeatures: Equatable, Sendable {
    /// Disk size in 512-byte sectors (`sectors`).
    public var sectors: UInt64
    /// Logical sector size in bytes (`sector-size`): transfers are multiples of it, aligned.
    public var sectorSize: Int
    /// `physical-sector-size` (the logical size when absent).
    public var physicalSectorSize: Int
    /// `info`: VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY.
    public var info: UInt32
    public var flushCache: Bool
    public var barrier: Bool
    public var discard: Bool
    public var discardGranularity: UInt64
    public var discardAlignment: UInt64
    public var discardSecure: Bool
    public var persistent: Bool
    /// `feature-max-indirect-segments` (0: no indirect requests).
    public var maxIndirectSegments: Int

    public var readOnly: Bool { info & Blkif.vdiskReadOnly != 0 }
    public var removable: Bool { info & Blkif.vdiskRemovable != 0 }
    public var cdrom: Bool { info & Blkif.vdiskCDROM != 0 }
    /// Size in bytes.
    public var bytes: UInt64 { sectors &* UInt64(Blkif.sectorSize) }

    public init(sectors: UInt64, sectorSize: Int = 512, physicalSectorSize: Int? = nil, info: UInt32 = 0,
                flushCache: Bool = false, barrier: Bool = false, discard: Bool = false, discardGranularity: UInt64 = 0,
                discardAlignment: UInt64 = 0, discardSecure: Bool = false, persistent: Bool = false, maxIndirectSegments: Int = 0) {
        self.sectors = sectors
        self.sectorSize = sectorSize
        self.physicalSectorSize = physicalSectorSize ?? sectorSize
        self.info = info
        self.flushCache = flushCache
        self.barrier = barrier
        self.discard = discard
        self.discardGranularity = discardGranularity
        self.discardAlignment = discardAlignment
        self.discardSecure = discardSecure
        self.persistent = persistent
        self.maxIndirectSegments = maxIndirectSegments
    }

    /// Reads the backend directory's nodes through `read` (nil = missing). `sectors`, `info`
    /// and `sector-size` are required and must be decimal numbers (`xenbus_gather`); the
    /// `sector-size` a power of two from 512 to 4096. Other nodes are optional numbers, missing
    /// or malformed meaning 0 (`xenbus_read_unsigned`). Throws a message naming node and value.
    public static func parse(backendPath: String, _ read: (String) -> String?) throws -> BlkfrontFeatures {
        struct Bad: Error, CustomStringConvertible { var description: String }
        func required(_ key: String) throws -> UInt64 {
            guard let text = read(key) else { throw Bad(description: "\(backendPath)/\(key) is missing") }
            guard let v = UInt64(text) else { throw Bad(description: "\(backendPath)/\(key) is '\(text)', not a number") }
            return v
        }
        func optional(_ key: String) -> UInt64 { read(key).flatMap { UInt64($0) } ?? 0 }
        let sectors = try required("sectors")
        let info = try required("info")
        guard info <= UInt64(UInt32.max) else { throw Bad(description: "\(backendPath)/info is \(info), over 32 bits") }
        let sectorSize = try required("sector-size")
        guard sectorSize >= 512, sectorSize <= 4096, sectorSize & (sectorSize - 1) == 0 else {
            throw Bad(description: "\(backendPath)/sector-size is \(sectorSize), not a power of two from 512 to 4096")
        }
        var physical = optional("physical-sector-size")
        if physical == 0 || physical & (physical - 1) != 0 || physical < sectorSize { physical = sectorSize }
        let discard = optional("feature-discard") != 0
        return BlkfrontFeatures(
            sectors: sectors, sectorSize: Int(sectorSize), physicalSectorSize: Int(min(physical, 1 << 20)), info: UInt32(info),
            flushCache: optional("feature-flush-cache") != 0, barrier: optional("feature-barrier") != 0,
            discard: discard, discardGranularity: discard ? optional("discard-granularity") : 0,
            discardAlignment: discard ? optional("discard-alignment") : 0,
            discardSecure: discard && optional("discard-secure") != 0,
            persistent: optional("feature-persistent") != 0,
            maxIndirectSegments: Int(min(optional("feature-max-indirect-segments"), UInt64(Blkif.maxIndirectSegments))))
    }
}

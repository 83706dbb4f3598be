/// Xen's virtual block device numbers (docs/misc/vbd-interface.txt), the one codec the toolstack
/// (parsing `vdev=` names) and blkfront (naming the devices it finds) share:
///
///     202 << 8 | disk << 4 | partition     xvdX[N] and dNpM, disks and partitions up to 15
///     1 << 28 | disk << 8 | partition      xvd and dNpM beyond (disks < 2^20, partitions < 256)
///     3 << 8 | disk << 6 | partition       hda, hdb (partitions up to 63)
///     22 << 8 | (disk-2) << 6 | partition  hdc, hdd
///     8 << 8 | disk << 4 | partition       sda … sdp (partitions up to 15)
///
/// Disk letters count in bijective base 26 as Linux names drives (a … z, aa … az, ba …).
public enum VbdNumber {
    /// `1 << 28`: the extended xvd encoding.
    public static let extended: UInt32 = 1 << 28

    /// The number of xvd disk `disk`, partition `partition` (the short form where both fit).
    public static func xvd(disk: Int, partition: Int) -> UInt32 {
        if disk <= 15 && partition <= 15 { return UInt32(202 << 8 | disk << 4 | partition) }
        return extended | UInt32(disk << 8 | partition)
    }

    /// The number of IDE disk `disk` (0 … 3), partition `partition`.
    public static func ide(disk: Int, partition: Int) -> UInt32 {
        UInt32((disk < 2 ? 3 : 22) << 8 | (disk & 1) << 6 | partition)
    }

    /// The number of SCSI disk `disk`, partition `partition`.
    public static func scsi(disk: Int, partition: Int) -> UInt32 { UInt32(8 << 8 | disk << 4 | partition) }

    /// The name a device number has: `xvd…` for 202<<8 and extended numbers (as
    /// `libxl__devid_to_vdev` and Linux's blkfront name them), `hd…` for majors 3 and 22, `sd…`
    /// for major 8. Nil for numbers that are none of these encodings.
    public static func name(of devid: UInt32) -> String? {
        if devid & extended != 0 {
            guard devid < extended << 1 else { return nil }  // 2<<28 and up: reserved
            let minor = devid & ~extended
            return "xvd" + letters(Int(minor >> 8)) + partitionSuffix(Int(minor & 0xff))
        }
        guard devid <= 0xffff else { return nil }
        let major = devid >> 8, minor = Int(devid & 0xff)
        switch major {
        case 202: return "xvd" + letters(minor >> 4) + partitionSuffix(minor & 15)
        case 8: return "sd" + letters(minor >> 4) + partitionSuffix(minor & 15)
        case 3, 22:
            guard minor >> 6 <= 1 else { return nil }
            return "hd" + letters((major == 3 ? 0 : 2) + (minor >> 6)) + partitionSuffix(minor & 63)
        default: return nil
        }
    }

    /// Drive letters for a disk index: 0 → a, 25 → z, 26 → aa (Linux's `encode_disk_name`).
    public static func letters(_ disk: Int) -> String {
        var n = disk
        var out: [UInt8] = []
        while true {
            out.append(UInt8(ascii: "a") + UInt8(n % 26))
            if n < 26 { break }
            n = n / 26 - 1
        }
        return String(decoding: out.reversed(), as: UTF8.self)
    }

    private static func partitionSuffix(_ partition: Int) -> String { partition == 0 ? "" : String(partition) }
}

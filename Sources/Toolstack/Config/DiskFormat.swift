/// The format of a disk image (`format=` in a disk spec), as named by xl-disk-configuration(5).
public enum DiskFormat: String, Codable, Sendable, CaseIterable {
    /// Plain image or block device; the default.
    case raw
    /// QEMU copy-on-write version 1.
    case qcow
    /// QEMU copy-on-write version 2.
    case qcow2
    /// Microsoft Virtual Hard Disk.
    case vhd
    /// QEMU enhanced disk.
    case qed
    /// No medium: an empty CD-ROM drive.
    case empty
}

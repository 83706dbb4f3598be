/// Whether the guest may write to a disk (`access=` in a disk spec).
public enum DiskAccess: String, Codable, Sendable {
    /// Read/write: `rw` or `w` (the default except for CD-ROMs).
    case readWrite = "rw"
    /// Read-only: `ro` or `r` (always for CD-ROMs).
    case readOnly = "ro"
}

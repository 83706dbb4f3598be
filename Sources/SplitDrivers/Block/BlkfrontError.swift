import ProcvisorABI

/// Why a blkfront operation failed. `device` is the label `xvda (vbd 51712)`.
public enum BlkfrontError: Error, Equatable, CustomStringConvertible {
    /// Connecting failed: a node missing or malformed, the backend in the wrong state.
    case handshake(device: String, reason: String)
    /// The backend answered `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP` to a ring request.
    case io(device: String, operation: BlkifOp, sector: UInt64, sectors: UInt64, status: BlkifStatus)
    /// The backend does not offer the operation (no `feature-flush-cache`/`feature-barrier`,
    /// no `feature-discard`, or it answered EOPNOTSUPP before).
    case unsupported(device: String, operation: String)
    /// A write or discard to a disk the backend marked read-only (`info` & VDISK_READONLY).
    case readOnly(device: String)
    /// The request itself is impossible (past the end, misaligned, empty).
    case badRequest(device: String, reason: String)
    /// The backend broke the protocol (impossible ring index, unknown or duplicate id, wrong
    /// operation, garbage status): every request in flight failed and the device is unusable.
    case brokenBackend(device: String, reason: String)
    /// The backend went away (its state left Connected, or it closed the event channel).
    case disconnected(device: String, reason: String)
    /// Nothing completed in time.
    case timeout(device: String, seconds: Double, outstanding: Int)
    /// `close()` was called.
    case closed(device: String)

    public var description: String {
        switch self {
        case let .handshake(d, r): return "\(d): cannot connect: \(r)"
        case let .io(d, op, sector, n, status):
            return "\(d): \(op.xenName) of \(n) sector\(n == 1 ? "" : "s") at sector \(sector) failed: \(status.xenName)"
        case let .unsupported(d, op): return "\(d): the backend does not support \(op)"
        case let .readOnly(d): return "\(d): the disk is read-only"
        case let .badRequest(d, r): return "\(d): \(r)"
        case let .brokenBackend(d, r): return "\(d): broken backend, device disabled: \(r)"
        case let .disconnected(d, r): return "\(d): disconnected: \(r)"
        case let .timeout(d, s, n): return "\(d): no completion within \(s) s (\(n) request\(n == 1 ? "" : "s") outstanding)"
        case let .closed(d): return "\(d): closed"
        }
    }
}

/// Where a burst of requests is cut into io_uring_enter calls: after every `limit` requests, so
/// the first of a burst reach the disk while the rest is still being decoded, but not inside a
/// run of reads or writes that carry on from one another on the disk (same direction, next byte)
/// until the run reaches `mergeBytes`. Such a run goes in with one call, so the block layer's
/// plug merges it into large disk requests, as Linux's blkback gets from plugging its bios.
struct SubmitChunker {
    let limit: Int
    var mergeBytes: UInt64 = 1 << 20
    private var count = 0
    private var runOp: BlockIOOp?
    private var runEnd: UInt64 = 0
    private var runBytes: UInt64 = 0

    init(limit: Int) { self.limit = max(1, limit) }

    /// Counts one request in; true when what has been counted since the last cut should be
    /// submitted now.
    mutating func cutAfter(_ op: BlockIOOp, offset: UInt64, length: UInt64) -> Bool {
        let continues = (op == .read || op == .write) && op == runOp && offset == runEnd
        runBytes = continues ? runBytes + length : length
        runOp = op == .read || op == .write ? op : nil
        runEnd = offset &+ length
        count += 1
        guard count >= limit, !(continues && runBytes < mergeBytes) else { return false }
        count = 0
        runBytes = 0
        return true
    }
}

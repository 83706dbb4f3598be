import LinuxHost

/// One accepted request: an owned copy of its iovecs, advanced in place over short transfers.
struct BlockTransfer {
    var tag: UInt64
    var op: BlockIOOp
    /// Where the rest starts on disk.
    var offset: UInt64
    var iov: UnsafeMutablePointer<IOVector>?
    var iovCount: Int
    /// The first iovec with bytes left.
    var first = 0
    var done = 0
    /// read/write: bytes; discard: length; flush: 0.
    var total: Int
    var retries = 0
    /// The request's `fixedBuffer`.
    var fixedBuffer: Int?

    enum Accepted {
        case transfer(BlockTransfer)
        /// Needs no I/O, or is malformed.
        case done(BlockIOCompletion)
    }

    static func make(_ r: BlockIORequest) -> Accepted {
        func fail(_ e: Errno) -> Accepted { .done(BlockIOCompletion(tag: r.tag, result: .failure(e))) }
        switch r.op {
        case .flush:
            return .transfer(BlockTransfer(tag: r.tag, op: .flush, offset: 0, iov: nil, iovCount: 0, total: 0))
        case .discard:
            if r.length == 0 { return .done(BlockIOCompletion(tag: r.tag, result: .success(0))) }
            guard r.offset <= UInt64(Int64.max), r.length <= UInt64(Int64.max) - r.offset else { return fail(.invalidArgument) }
            return .transfer(BlockTransfer(tag: r.tag, op: .discard, offset: r.offset, iov: nil, iovCount: 0, total: Int(r.length)))
        case .read, .write:
            guard !r.iov.isEmpty, r.iov.count <= BlockIO.maxSegments else { return fail(.invalidArgument) }
            var total = 0
            for b in r.iov {
                guard b.baseAddress != nil || b.count == 0 else { return fail(.invalidArgument) }
                total += b.count
            }
            guard total > 0, r.offset <= UInt64(Int64.max), UInt64(total) <= UInt64(Int64.max) - r.offset else {
                return fail(.invalidArgument)
            }
            let v = UnsafeMutablePointer<IOVector>.allocate(capacity: r.iov.count)
            for (i, b) in r.iov.enumerated() { v[i] = IOVector(iov_base: b.baseAddress, iov_len: b.count) }
            return .transfer(BlockTransfer(tag: r.tag, op: r.op, offset: r.offset, iov: v, iovCount: r.iov.count, total: total,
                                           fixedBuffer: r.fixedBuffer))
        }
    }

    var remainingIovecs: Int { iovCount - first }
    var finished: Bool { done == total }

    /// Records `n` more bytes transferred (n ≤ total - done): moves the iovecs and the offset on.
    mutating func advance(by n: Int) {
        done += n
        offset += UInt64(n)
        guard let v = iov else { return }
        var left = n
        while left > 0 && first < iovCount {
            let len = v[first].iov_len
            if left >= len {
                left -= len
                first += 1
            } else {
                v[first].iov_base = v[first].iov_base.map { $0 + left }
                v[first].iov_len = len - left
                left = 0
            }
        }
        while first < iovCount && v[first].iov_len == 0 { first += 1 }
    }

    func release() { iov?.deallocate() }

    func completion(_ result: Result<Int, Errno>) -> BlockIOCompletion { BlockIOCompletion(tag: tag, result: result) }
}

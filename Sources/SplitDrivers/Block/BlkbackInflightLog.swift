import DomainRuntime
import LinuxHost
import ProcvisorABI

/// One blkback queue's in-flight log: every request taken off the ring and not yet answered
/// where the frontend can see it, in memory the supervisor keeps across restarts of the driver
/// domain (`Domain.inflightLog`). A new incarnation of blkback finds there exactly what the killed
/// one left undone, and finishes it without the frontend doing anything (vhost-user's inflight
/// region, for blkif).
///
/// Layout, in native byte order (the memory never leaves the host): a 64-byte header, `magic` @0,
/// `version` @4, `slots` @8 (the ring's), `req_cons` @12 (the next ring index to take), `next_seq`
/// @16 (u64); then `slots` entries of 136 bytes, `state` @0 (free, taken, answered), `req_pos` @4
/// (the ring index the request was taken from), `seq` @8 (u64, the order of taking), `rsp_pos` @16
/// (the ring index its response went to), `status` @20 (i16) and `operation` @22 of the response,
/// and @24 the request's 112 bytes, copied as taken.
///
/// Entries are not tied to ring positions: a slow request can still be in flight when the
/// frontend has put a newer request in its slot (responses come in any order). Which entries are
/// free is kept in process memory, rebuilt from the states when a log is loaded.
///
/// The order of the stores is what makes the log right at whatever instruction the process is
/// killed (every store made before that is in the memory; the release stores keep the compiler
/// and the CPU from moving the ones before them later):
/// - taking: the request is copied, then the entry says taken, then `req_cons` moves past it. The
///   log knows every request the ring no longer holds for the backend; a death in between leaves
///   `req_cons` one behind an entry that says where it was taken, and `check` counts it. (`next_seq`
///   is only a hint: `check` derives the next `seq` from the newest entry.)
/// - answering: the entry says answered, and where, before the response is written into that
///   slot and before `rsp_prod` publishes it; it is freed only once `rsp_prod` has passed it. So a
///   response published is never reissued (a write reissued after the frontend wrote the same
///   sectors again would put old data back), and one written but not published is published again.
///
/// Not thread-safe: the queue's lock covers it, as it covers the ring.
final class BlkbackInflightLog {
    enum Layout {
        static let headerSize = 64
        static let magic = 0
        static let version = 4
        static let slots = 8
        static let reqCons = 12
        static let nextSeq = 16

        static let entrySize = 24 + BlkifRequest.Layout.size
        static let state = 0
        static let reqPos = 4
        static let seq = 8
        static let rspPos = 16
        static let status = 20
        static let operation = 22
        static let request = 24
    }

    /// "BIFL" in memory.
    static let magic: UInt32 = 0x4C46_4942
    static let version: UInt32 = 1

    enum State: UInt32 {
        case free = 0
        /// Taken off the ring, not answered.
        case taken = 1
        /// Answered at `rsp_pos`, perhaps not published yet.
        case answered = 2
    }

    /// An entry's index; `none` for a request that has none (no log).
    typealias Entry = Int32
    static let none: Entry = -1

    /// Bytes of log for a ring of `slots`: header and entries, in whole pages.
    static func bytes(slots: Int) -> Int {
        (Layout.headerSize + slots * Layout.entrySize + 4095) / 4096 * 4096
    }

    private let base: UnsafeMutableRawPointer
    let slots: Int
    /// Free entries, a stack (taking pops, freeing pushes; never grows past `slots`).
    @exclusivity(unchecked) private var freeEntries: [Entry] = []
    @exclusivity(unchecked) private var nextSeq: UInt64 = 0

    /// A log over `bytes` of `memory` for a ring of `slots`. Nothing is read or written yet:
    /// `format` starts it afresh, `check` and `resume` take over what is there.
    init(memory: UnsafeMutableRawPointer, bytes: Int, slots: Int) {
        precondition(slots > 0 && Layout.headerSize + slots * Layout.entrySize <= bytes,
                     "an in-flight log of \(bytes) bytes is too small for a ring of \(slots) slots")
        base = memory
        self.slots = slots
        freeEntries.reserveCapacity(slots)
    }

    private func entry(_ e: Entry) -> UnsafeMutableRawPointer { base + Layout.headerSize + Int(e) * Layout.entrySize }

    private func word(_ p: UnsafeMutableRawPointer, _ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (p + offset).assumingMemoryBound(to: UInt32.self)
    }

    private func u32(_ p: UnsafeRawPointer, _ offset: Int) -> UInt32 { p.load(fromByteOffset: offset, as: UInt32.self) }

    private func setState(_ e: Entry, _ s: State) { SharedAtomic.storeRelease(word(entry(e), Layout.state), s.rawValue) }

    /// Starts the log for a freshly connected ring whose next request is `requestsConsumed`:
    /// every entry free. The magic goes last.
    func format(requestsConsumed: UInt32) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: Layout.headerSize + slots * Layout.entrySize)
        base.storeBytes(of: Self.version, toByteOffset: Layout.version, as: UInt32.self)
        base.storeBytes(of: UInt32(slots), toByteOffset: Layout.slots, as: UInt32.self)
        base.storeBytes(of: requestsConsumed, toByteOffset: Layout.reqCons, as: UInt32.self)
        SharedAtomic.storeRelease(word(base, Layout.magic), Self.magic)
        nextSeq = 0
        freeEntries.removeAll(keepingCapacity: true)
        freeEntries.append(contentsOf: (0..<Entry(slots)).reversed())
    }

    // MARK: the data path (the queue's lock held)

    /// Records the request in ring slot `slot`, taken at ring index `reqPos`, before it is
    /// handled; returns its entry, whose copy (`request`) is what the backend then decodes. The
    /// ring lets at most `slots` requests be taken and unanswered, so an entry is always free.
    func take(_ slot: UnsafeRawPointer, at reqPos: UInt32) -> Entry {
        guard let e = freeEntries.popLast() else {
            preconditionFailure("in-flight log: all \(slots) entries in use; the ring allows no more requests in flight")
        }
        let p = entry(e)
        (p + Layout.request).copyMemory(from: slot, byteCount: BlkifRequest.Layout.size)
        p.storeBytes(of: reqPos, toByteOffset: Layout.reqPos, as: UInt32.self)
        p.storeBytes(of: nextSeq, toByteOffset: Layout.seq, as: UInt64.self)
        SharedAtomic.storeRelease(word(p, Layout.state), State.taken.rawValue)
        nextSeq &+= 1
        base.storeBytes(of: nextSeq, toByteOffset: Layout.nextSeq, as: UInt64.self)
        SharedAtomic.storeRelease(word(base, Layout.reqCons), reqPos &+ 1)
        return e
    }

    /// The request's bytes as taken (`BlkifRequest.Layout.size` of them).
    func request(_ e: Entry) -> UnsafeRawPointer { UnsafeRawPointer(entry(e) + Layout.request) }

    /// Marks the request answered with `response` at ring index `rspPos`: before the response is
    /// written into that slot and published.
    func answer(_ e: Entry, at rspPos: UInt32, with response: BlkifResponse) {
        let p = entry(e)
        p.storeBytes(of: rspPos, toByteOffset: Layout.rspPos, as: UInt32.self)
        p.storeBytes(of: response.status.rawValue, toByteOffset: Layout.status, as: Int16.self)
        p.storeBytes(of: response.operation, toByteOffset: Layout.operation, as: UInt8.self)
        SharedAtomic.storeRelease(word(p, Layout.state), State.answered.rawValue)
    }

    /// Frees an answered entry once `rsp_prod` has published its response.
    func release(_ e: Entry) {
        setState(e, .free)
        freeEntries.append(e)
    }

    /// The response recorded for an answered entry: the request's `id`, the operation and status.
    private func response(_ e: Entry) -> BlkifResponse {
        let p = entry(e)
        let id = (p + Layout.request).load(fromByteOffset: BlkifRequest.Layout.id, as: UInt64.self)
        let raw = p.load(fromByteOffset: Layout.status, as: Int16.self)
        return BlkifResponse(id: UInt64(littleEndian: id), operation: p.load(fromByteOffset: Layout.operation, as: UInt8.self),
                             status: BlkifStatus(rawValue: raw) ?? .error)
    }

    // MARK: resumption

    /// What a log left by an earlier incarnation says is to be done, as `check` found it.
    struct Recovery: Equatable {
        /// The ring's `req_cons` to resume from: past every request the log holds.
        var requestsConsumed: UInt32
        /// `rsp_prod` as published when the log was checked.
        var responsesPublished: UInt32
        /// Answered entries whose responses were not published, by `rsp_pos`: published again.
        var republish: [Entry]
        /// Entries taken and not answered, by `seq`: handled again as if just taken.
        var reissue: [Entry]
        /// Answered entries whose responses were published: freed, never reissued.
        var published: [Entry]
        var nextSeq: UInt64
    }

    /// Reads the log an earlier incarnation left, against the ring's indexes as they are now
    /// (`req_prod`, `rsp_prod`), and says what is to be done; changes nothing. Throws when the log
    /// cannot be trusted: wrong magic, version or slot count, an entry in a state that cannot be,
    /// entries whose ring indexes and order of taking disagree, answers that are neither just
    /// published nor next to be, or more requests in flight than the indexes allow.
    ///
    /// A taken entry's `req_pos` may be anywhere behind `req_cons`, even before `rsp_prod`: a slow
    /// request stays in flight while later ones are answered and the frontend reuses its slot. What
    /// must hold exactly is the count: every request taken is answered once, so the entries not
    /// yet published number `req_cons - rsp_prod`.
    func check(requestProducer reqProd: UInt32, responsesPublished rspProd: UInt32) throws(BlkbackInflightLogError) -> Recovery {
        func bad(_ why: String) -> BlkbackInflightLogError { BlkbackInflightLogError(message: why) }
        let magic = u32(base, Layout.magic)
        guard magic == Self.magic else {
            throw bad("magic 0x\(String(magic, radix: 16)) is not an in-flight log's (0x\(String(Self.magic, radix: 16)))")
        }
        let version = u32(base, Layout.version)
        guard version == Self.version else { throw bad("version \(version); this blkback writes version \(Self.version)") }
        let logSlots = u32(base, Layout.slots)
        guard logSlots == UInt32(slots) else { throw bad("made for a ring of \(logSlots) slots; this ring has \(slots)") }
        let ringSlots = UInt32(slots)
        guard reqProd &- rspProd <= ringSlots else {
            throw bad("the ring's req_prod \(reqProd) is more than \(slots) requests past its rsp_prod \(rspProd)")
        }

        struct Seen {
            let index: Entry
            let state: State
            let seq: UInt64
            let reqPos: UInt32
            let rspPos: UInt32
        }
        var seen: [Seen] = []
        for i in 0..<Entry(slots) {
            let p = entry(i)
            let raw = u32(p, Layout.state)
            guard let state = State(rawValue: raw) else {
                throw bad("entry \(i): state \(raw) is not free (0), taken (1) or answered (2)")
            }
            if state == .free { continue }
            if state == .answered {
                let status = p.load(fromByteOffset: Layout.status, as: Int16.self)
                guard BlkifStatus(rawValue: status) != nil else { throw bad("entry \(i): answered with status \(status), not a BLKIF_RSP_*") }
            }
            seen.append(Seen(index: i, state: state, seq: p.load(fromByteOffset: Layout.seq, as: UInt64.self),
                             reqPos: u32(p, Layout.reqPos), rspPos: u32(p, Layout.rspPos)))
        }
        // Requests were taken in ring order, one `seq` per ring index.
        seen.sort { $0.seq < $1.seq }
        for (a, b) in zip(seen, seen.dropFirst()) {
            guard b.seq != a.seq else { throw bad("entries \(a.index) and \(b.index) have the same seq \(a.seq)") }
            guard b.reqPos &- a.reqPos == UInt32(truncatingIfNeeded: b.seq &- a.seq) else {
                throw bad("entry \(b.index) (seq \(b.seq), ring index \(b.reqPos)) was not taken \(b.seq &- a.seq) requests after entry \(a.index) (seq \(a.seq), ring index \(a.reqPos))")
            }
        }
        var reqCons = u32(base, Layout.reqCons)
        var nextSeq = base.load(fromByteOffset: Layout.nextSeq, as: UInt64.self)
        if let newest = seen.last {
            // Died between recording a request and moving `req_cons` past it.
            if newest.reqPos == reqCons {
                guard newest.state == .taken else {
                    throw bad("entry \(newest.index) is answered but req_cons \(reqCons) has not passed its ring index")
                }
                reqCons &+= 1
            }
            guard newest.seq <= nextSeq else { throw bad("entry \(newest.index) has seq \(newest.seq) beyond next_seq \(nextSeq)") }
            // The next request taken is as many places after the newest recorded in `seq` as in
            // ring indexes. (`next_seq` in the header may be one ahead: it is stored unordered,
            // and the request it counted may never have been recorded.)
            nextSeq = newest.seq &+ UInt64(reqCons &- newest.reqPos)
        }
        let outstanding = reqCons &- rspProd
        guard outstanding <= ringSlots else {
            throw bad("req_cons \(reqCons) is more than \(slots) requests past rsp_prod \(rspProd)")
        }
        guard outstanding <= reqProd &- rspProd else { throw bad("req_cons \(reqCons) is past the ring's req_prod \(reqProd)") }

        var reissue: [Entry] = []
        var unpublished: [Seen] = []
        var published: [Entry] = []
        for e in seen {
            let behind = reqCons &- e.reqPos
            guard behind >= 1 && behind < 1 << 31 else {
                throw bad("entry \(e.index) was taken at ring index \(e.reqPos), not before req_cons \(reqCons)")
            }
            switch e.state {
            case .taken:
                reissue.append(e.index)
            case .answered:
                if e.rspPos &- rspProd < ringSlots {
                    unpublished.append(e)
                } else if rspProd &- e.rspPos <= ringSlots {
                    published.append(e.index)  // published, not yet freed
                } else {
                    throw bad("entry \(e.index) was answered at ring index \(e.rspPos), neither among the last \(slots) published nor after rsp_prod \(rspProd)")
                }
            case .free:
                break
            }
        }
        // Answers are put on the ring one after another and published together: those not
        // published are the ones right after `rsp_prod`.
        unpublished.sort { $0.rspPos &- rspProd < $1.rspPos &- rspProd }
        for (k, e) in unpublished.enumerated() where e.rspPos != rspProd &+ UInt32(k) {
            throw bad("entry \(e.index) was answered at ring index \(e.rspPos), not at \(rspProd &+ UInt32(k)) right after the answers before it")
        }
        guard reissue.count + unpublished.count == Int(outstanding) else {
            throw bad("\(reissue.count) requests taken and \(unpublished.count) answered but not published, but req_cons \(reqCons) - rsp_prod \(rspProd) is \(outstanding)")
        }
        return Recovery(requestsConsumed: reqCons, responsesPublished: rspProd, republish: unpublished.map(\.index),
                        reissue: reissue, published: published, nextSeq: nextSeq)
    }

    /// Takes over a log `check` accepted, and `ring` with it (`BackRing.resume`): frees the
    /// entries already published, brings the header up to date, and writes the answers that
    /// were not published into the ring again (same id, operation and status), publishes them
    /// and frees them. The entries in `recovery.reissue` stay taken, for the caller to handle
    /// again. The caller notifies the frontend.
    func resume(_ recovery: Recovery, ring: BackRing) {
        ring.resume(requestsConsumed: recovery.requestsConsumed)
        for e in recovery.published { setState(e, .free) }
        nextSeq = recovery.nextSeq
        base.storeBytes(of: nextSeq, toByteOffset: Layout.nextSeq, as: UInt64.self)
        SharedAtomic.storeRelease(word(base, Layout.reqCons), recovery.requestsConsumed)
        for e in recovery.republish {
            let r = response(e)
            answer(e, at: ring.rspProdPvt, with: r)
            r.encode(to: ring.nextResponse())
        }
        if !recovery.republish.isEmpty { _ = ring.pushResponses() }
        for e in recovery.republish { setState(e, .free) }
        freeEntries.removeAll(keepingCapacity: true)
        for e in (0..<Entry(slots)).reversed() where u32(entry(e), Layout.state) == State.free.rawValue { freeEntries.append(e) }
    }
}

/// Why an in-flight log left by an earlier incarnation is not trusted.
struct BlkbackInflightLogError: Error, Equatable, CustomStringConvertible {
    var message: String
    var description: String { "in-flight log: \(message)" }
}

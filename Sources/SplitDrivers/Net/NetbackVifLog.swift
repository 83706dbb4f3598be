import LinuxHost

/// A vif's in-flight page: one page of supervisor-kept memory (`Domain.inflightLog`, queue 0)
/// that outlives a netback incarnation, so the next one can take the vif over.
///
/// netif needs no record of which requests were taken: netback answers every tx and rx request
/// in the order it takes them and publishes responses only at a packet's end, so the shared
/// ring's `rsp_prod` is exactly where a new incarnation starts (`BackRing.init`). Requests the
/// dead one took and had not answered are taken again: tx packets are sent again (a duplicate
/// frame at worst, which Ethernet allows), rx pages are filled again (the frames that were being
/// put in them are lost). What the page keeps is what the ring cannot say:
/// - the vif's counters, so `statistics` goes on counting across restarts;
/// - per queue, the tx `req_cons` and the rx frames (and bytes) written but not yet published,
///   and the frames waiting in the backlog: the new incarnation reports the tx requests it takes
///   again and counts the lost rx frames as dropped (`rx-dropped`), not delivered.
///
/// Layout (native byte order; the same binary or a later one reads it, never another host):
/// ```
///   0  magic "PVNBVIF1" (UInt64)    8  version (UInt32)    12  MemoryLayout<NetbackVifStats>.size
///  16  queues (UInt32)
///  64  NetbackVifStats
/// 384  frames in the backlog (Int)
/// 512  per queue q, at 512 + 32·q: tx req_cons, rx frames unpublished, rx bytes unpublished (Int)
/// ```
struct NetbackVifLog {
    static let bytes = 4096
    static let magic: UInt64 = 0x3146_4956_424E_5650  // "PVNBVIF1" read as little-endian bytes
    static let version: UInt32 = 1
    static let statsOffset = 64
    static let backlogOffset = 384
    static let queuesOffset = 512
    static let queueStride = 32
    static let maxQueues = (bytes - queuesOffset) / queueStride

    let base: UnsafeMutableRawPointer

    /// Whether the page holds a record this build wrote (an earlier incarnation's).
    var isValid: Bool {
        base.load(as: UInt64.self) == Self.magic && base.load(fromByteOffset: 8, as: UInt32.self) == Self.version
            && base.load(fromByteOffset: 12, as: UInt32.self) == UInt32(MemoryLayout<NetbackVifStats>.size)
    }

    /// Starts the page over for a vif connected afresh: counters zero, nothing in flight.
    func format(queues: Int) {
        precondition(MemoryLayout<NetbackVifStats>.size <= Self.backlogOffset - Self.statsOffset && queues <= Self.maxQueues)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.bytes)
        stats.initialize(to: NetbackVifStats())
        base.storeBytes(of: UInt32(queues), toByteOffset: 16, as: UInt32.self)
        base.storeBytes(of: UInt32(MemoryLayout<NetbackVifStats>.size), toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: Self.version, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
    }

    var queues: Int { Int(base.load(fromByteOffset: 16, as: UInt32.self)) }

    /// The counters, in the page.
    var stats: UnsafeMutablePointer<NetbackVifStats> {
        (base + Self.statsOffset).assumingMemoryBound(to: NetbackVifStats.self)
    }

    var backlog: UnsafeMutablePointer<Int> { (base + Self.backlogOffset).assumingMemoryBound(to: Int.self) }

    /// Queue `q`'s three words: tx req_cons, rx frames and rx bytes not yet published.
    func queue(_ q: Int) -> UnsafeMutablePointer<Int> {
        (base + Self.queuesOffset + q * Self.queueStride).assumingMemoryBound(to: Int.self)
    }
}

/// What a new incarnation found when it took a vif over.
struct NetbackVifTakeover: CustomStringConvertible {
    var txRequestsAgain = 0
    var rxFramesLost = 0

    var description: String {
        "\(txRequestsAgain) tx request\(txRequestsAgain == 1 ? "" : "s") taken again, "
            + "\(rxFramesLost) rx frame\(rxFramesLost == 1 ? "" : "s") lost"
    }
}

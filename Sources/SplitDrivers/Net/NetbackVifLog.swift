import DomainRuntime
import LinuxHost

/// A vif's in-flight logs: per queue, supervisor-kept memory (`Domain.inflightLog`) that outlives
/// a netback incarnation, so the next one takes the vif over where the dead one left it.
///
/// netback answers every tx and rx request in the order it takes them and publishes responses
/// only at a packet's end, so the shared ring's `rsp_prod` is where a new incarnation starts
/// (`BackRing.init`). But a response is written into its request's slot: a request the dead
/// incarnation took and answered without publishing is gone from the ring. So each request is
/// copied into the queue's log before it is answered (12 or 8 bytes), with the ring index past it
/// (`req_cons`); the new incarnation puts the requests between `rsp_prod` and that index back in
/// their slots and takes them again. Tx packets are then sent again (a duplicate frame at worst,
/// which Ethernet allows); rx pages are filled again and the frames that were being put in them
/// are lost, counted as dropped (`rx-dropped`), as are the frames that waited in the backlog.
///
/// The vif's counters are saved in queue 0's log at the end of every pass of the switch, so
/// `statistics` goes on across restarts (but for the last pass before one). (Counting straight
/// into the shared page, through a pointer, cost the switch a fifth of its packet rate.)
///
/// Layout of each queue's log (native byte order; the same binary or a later one reads it):
/// ```
///     0  queue 0 only, the vif record:
///          0 magic "PVNBVIF2" (UInt64)   8 version (UInt32)   12 MemoryLayout<NetbackVifStats>.size
///         16 queues (UInt32)   64 NetbackVifStats   1024 frames in the backlog (Int)
///  2048  the queue's words (Int): tx req_cons, rx frames unpublished, rx bytes unpublished,
///        rx req_cons
///  4096  tx requests, one ring slot each, by ring index modulo the ring size
///  8192  rx requests, likewise
/// ```
struct NetbackQueueLog {
    static let bytes = 12288
    static let wordsOffset = 2048
    static let txOffset = 4096
    static let rxOffset = 8192
    static let mirrorBytes = 4096

    // Plain values only (no references): the switch copies this struct for every packet.
    let base: UnsafeMutableRawPointer
    let txSlot: Int, txMask: UInt32
    let rxSlot: Int, rxMask: UInt32

    init(base: UnsafeMutableRawPointer, tx: BackRing, rx: BackRing) {
        self.base = base
        txSlot = tx.layout.slotSize
        txMask = tx.layout.count - 1
        rxSlot = rx.layout.slotSize
        rxMask = rx.layout.count - 1
    }

    /// Whether both rings' request slots fit their mirrors (one-page rings always do).
    static func fits(tx: BackRing, rx: BackRing) -> Bool {
        Int(tx.layout.count) * tx.layout.slotSize <= mirrorBytes && Int(rx.layout.count) * rx.layout.slotSize <= mirrorBytes
    }

    var words: UnsafeMutablePointer<Int> { (base + Self.wordsOffset).assumingMemoryBound(to: Int.self) }

    /// Copies the tx requests `peekRequest(0..<n)` aside and records `req_cons` past them: called
    /// before they are answered.
    @inline(__always)
    func takingTx(_ n: UInt32, on tx: BackRing) {
        for i in 0..<n {
            let index = tx.reqCons &+ i
            (base + Self.txOffset + Int(index & txMask) * txSlot).copyMemory(from: tx.peekRequest(i), byteCount: txSlot)
        }
        words[0] = Int(tx.reqCons &+ n)
    }

    /// Copies the next rx request aside and records `req_cons` past it (before it is answered).
    @inline(__always)
    func takingRx(on rx: BackRing) {
        (base + Self.rxOffset + Int(rx.reqCons & rxMask) * rxSlot).copyMemory(from: rx.peekRequest(0), byteCount: rxSlot)
        words[3] = Int(rx.reqCons &+ 1)
    }

    /// Starts the words over for rings connected afresh.
    func format(tx: BackRing, rx: BackRing) {
        words[0] = Int(tx.reqCons)
        words[1] = 0
        words[2] = 0
        words[3] = Int(rx.reqCons)
    }

    /// Puts back the requests a dead incarnation took past `rsp_prod` (their slots may hold its
    /// unpublished answers) and returns how many tx and rx requests will be taken again; nil when
    /// the recorded indexes are impossible for these rings (then nothing is written).
    func restore(tx: BackRing, rx: BackRing) -> (tx: Int, rx: Int)? {
        func put(_ ring: BackRing, consumed: Int, offset: Int) -> Int? {
            let from = ring.rspProd, to = UInt32(truncatingIfNeeded: consumed)
            let taken = to &- from, produced = ring.reqProd &- from
            guard taken <= produced, produced <= ring.layout.count else { return nil }
            let size = ring.layout.slotSize
            var i = from
            while i != to {
                ring.slotAddress(i).copyMemory(from: base + offset + Int(i & (ring.layout.count - 1)) * size, byteCount: size)
                i &+= 1
            }
            return Int(taken)
        }
        guard let t = put(tx, consumed: words[0], offset: Self.txOffset),
              let r = put(rx, consumed: words[3], offset: Self.rxOffset) else { return nil }
        return (t, r)
    }
}

/// The vif record at the start of queue 0's log (see `NetbackQueueLog`).
struct NetbackVifLog {
    static let magic: UInt64 = 0x3246_4956_424E_5650  // "PVNBVIF2" read as little-endian bytes
    static let version: UInt32 = 2
    static let statsOffset = 64
    static let backlogOffset = 1024

    let base: UnsafeMutableRawPointer

    /// Whether the page holds a record this build wrote (an earlier incarnation's).
    var isValid: Bool {
        base.load(as: UInt64.self) == Self.magic && base.load(fromByteOffset: 8, as: UInt32.self) == Self.version
            && base.load(fromByteOffset: 12, as: UInt32.self) == UInt32(MemoryLayout<NetbackVifStats>.size)
    }

    /// Starts the record over for a vif connected afresh: counters zero, nothing in flight.
    func format(queues: Int) {
        precondition(MemoryLayout<NetbackVifStats>.size <= Self.backlogOffset - Self.statsOffset)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: NetbackQueueLog.wordsOffset)
        stats.initialize(to: NetbackVifStats())
        base.storeBytes(of: UInt32(queues), toByteOffset: 16, as: UInt32.self)
        base.storeBytes(of: UInt32(MemoryLayout<NetbackVifStats>.size), toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: Self.version, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
    }

    var queues: Int { Int(base.load(fromByteOffset: 16, as: UInt32.self)) }

    /// The counters, in the log.
    var stats: UnsafeMutablePointer<NetbackVifStats> {
        (base + Self.statsOffset).assumingMemoryBound(to: NetbackVifStats.self)
    }

    var backlog: UnsafeMutablePointer<Int> { (base + Self.backlogOffset).assumingMemoryBound(to: Int.self) }
}

/// What a new incarnation found when it took a vif over.
struct NetbackVifTakeover: CustomStringConvertible {
    var txRequestsAgain = 0
    var rxRequestsAgain = 0
    var rxFramesLost = 0

    var description: String {
        "\(txRequestsAgain) tx and \(rxRequestsAgain) rx request\(rxRequestsAgain == 1 ? "" : "s") taken again, "
            + "\(rxFramesLost) rx frame\(rxFramesLost == 1 ? "" : "s") lost"
    }
}

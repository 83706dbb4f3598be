import DomainRuntime
import LinuxHost
import ProcvisorABI

/// One queue of a vif: its two rings, ports and the frontend's pages it keeps mapped.
final class NetbackQueue {
    unowned let vif: NetbackVif
    let index: Int
    let tx: BackRing
    let rx: BackRing
    let txPort: EventChannels.Port
    let rxPort: EventChannels.Port
    private let txRing: GrantMapping
    private let rxRing: GrantMapping
    /// Kept mappings of the frontend's buffers: tx pages read-only, rx pages writable.
    @exclusivity(unchecked) private var txCache: [GrantRef: GrantMapping] = [:]
    @exclusivity(unchecked) private var rxCache: [GrantRef: GrantMapping] = [:]
    /// A frontend cycling through more grants than this starts its cache over.
    static let cacheLimit = 2048
    @exclusivity(unchecked) var lastMapFailure = ""
    // Switch state (under the Netback lock).
    @exclusivity(unchecked) var txWork = false
    @exclusivity(unchecked) var rxWork = false
    @exclusivity(unchecked) var dead = false
    @exclusivity(unchecked) var isTouched = false
    @exclusivity(unchecked) var txResponsesPending = false
    @exclusivity(unchecked) var rxResponsesPending = false
    private var domain: Domain { vif.domain }
    /// This queue's in-flight log (requests copied aside before they are answered, rx frames
    /// and bytes written since the last publication). Nil without one.
    @exclusivity(unchecked) var inflight: NetbackQueueLog?

    deinit {
        txFast.deallocate()
        rxFast.deallocate()
    }

    init(vif: NetbackVif, index: Int, txRef: GrantRef, rxRef: GrantRef, txRemote: EventChannels.Port, rxRemote: EventChannels.Port) throws {
        self.vif = vif
        self.index = index
        txFast.initialize(repeating: nil, count: Self.fastRefs)
        rxFast.initialize(repeating: nil, count: Self.fastRefs)
        let gt = vif.domain.grantTable, ev = vif.domain.eventChannels
        let fe = vif.frontend
        let maps = gt.map([(fe, txRef, false), (fe, rxRef, false)])
        guard case let .success(t) = maps[0], case let .success(r) = maps[1] else {
            let bad = maps.enumerated().first { if case .failure = $0.element { return true } else { return false } }
            var why = "?"
            if let bad, case let .failure(e) = bad.element { why = "\(e)" }
            for case let .success(m) in maps { try? gt.unmap(m) }
            throw NetbackSetupError("queue \(index): cannot map \(bad?.offset == 0 ? "tx-ring-ref \(txRef)" : "rx-ring-ref \(rxRef)"): \(why)")
        }
        txRing = t
        rxRing = r
        tx = BackRing(page: t.base, layout: RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize))
        rx = BackRing(page: r.base, layout: RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize))
        do {
            txPort = try ev.bindInterdomain(remote: fe, remotePort: txRemote)
        } catch {
            _ = gt.unmap([t, r])
            throw NetbackSetupError("queue \(index): cannot bind event channel \(txRemote): \(error)")
        }
        if rxRemote == txRemote {
            rxPort = txPort
        } else {
            do {
                rxPort = try ev.bindInterdomain(remote: fe, remotePort: rxRemote)
            } catch {
                try? ev.close(txPort)
                _ = gt.unmap([t, r])
                throw NetbackSetupError("queue \(index): cannot bind event channel \(rxRemote): \(error)")
            }
        }
    }

    /// Direct lookup for the low grant references (where a frontend's buffers are): gref → base.
    static let fastRefs = 8192
    private let txFast = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: NetbackQueue.fastRefs)
    private let rxFast = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: NetbackQueue.fastRefs)

    /// The frontend's tx page `gref`, mapped read-only (kept); nil when it cannot be mapped.
    @inline(__always)
    func txPage(_ gref: GrantRef, vif: NetbackVif) -> UnsafeMutableRawPointer? {
        if gref.index < Self.fastRefs, let p = txFast[gref.index] { return p }
        if let m = txCache[gref] { return m.base }
        return map(gref, readonly: true, cache: &txCache, fast: txFast)
    }

    /// The frontend's rx page `gref`, mapped writable (kept).
    @inline(__always)
    func rxPage(_ gref: GrantRef, vif: NetbackVif) -> UnsafeMutableRawPointer? {
        if gref.index < Self.fastRefs, let p = rxFast[gref.index] { return p }
        if let m = rxCache[gref] { return m.base }
        return map(gref, readonly: false, cache: &rxCache, fast: rxFast)
    }

    private func map(_ gref: GrantRef, readonly: Bool, cache: inout [GrantRef: GrantMapping],
                     fast: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> UnsafeMutableRawPointer? {
        let gt = domain.grantTable
        if cache.count >= Self.cacheLimit {
            _ = gt.unmap(Array(cache.values))
            cache.removeAll(keepingCapacity: true)
            fast.update(repeating: nil, count: Self.fastRefs)
        }
        switch gt.map([(vif.frontend, gref, readonly)])[0] {
        case let .success(m):
            cache[gref] = m
            if gref.index < Self.fastRefs { fast[gref.index] = m.base }
            return m.base
        case let .failure(e):
            lastMapFailure = "\(e)"
            return nil
        }
    }

    /// Unmaps everything and closes the ports (after the switch let go of the queue).
    func teardown() {
        let gt = domain.grantTable, ev = domain.eventChannels
        _ = gt.unmap(Array(txCache.values) + Array(rxCache.values) + [txRing, rxRing])
        txCache.removeAll()
        rxCache.removeAll()
        txFast.update(repeating: nil, count: Self.fastRefs)
        rxFast.update(repeating: nil, count: Self.fastRefs)
        try? ev.close(txPort)
        if rxPort != txPort { try? ev.close(rxPort) }
    }
}

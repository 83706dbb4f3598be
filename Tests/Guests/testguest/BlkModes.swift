import DomainRuntime
import Glibc
import LinuxHost

/// A raw blkif frontend for the protocol tests: Xen's request layout written slot by slot,
/// including requests blkback must refuse, and finally a corrupted ring (`corrupt=1`), or one
/// corrupted while a killed backend is being restarted (`corrupt-after-restart=1`).
func runBlkMode(_ mode: String, _ domain: Domain) -> Bool {
    guard mode == "blk-raw" else { return false }
    func say(_ s: String) { print(s); fflush(stdout) }
    let xs = domain.store, gt = domain.grantTable, ev = domain.eventChannels
    let devid = arg("devid") ?? "51712"
    let fdir = "device/vbd/\(devid)"
    guard let bdir = try? xs.read(fdir + "/backend"), let bid = (try? xs.read(fdir + "/backend-id")).flatMap({ UInt16($0) }) else {
        say("blk-raw: no vbd \(devid)")
        domain.shutdown(.crash)
    }
    func backendState() -> String { (try? xs.read(bdir + "/state")) ?? "gone" }
    var waited = 0
    while backendState() != "2" && waited < 1000 { usleep(10_000); waited += 1 }
    let sectors = UInt64((try? xs.read(bdir + "/sectors")) ?? "0") ?? 0
    say("backend InitWait: sectors=\(sectors) persistent=\((try? xs.read(bdir + "/feature-persistent")) ?? "-") flush=\((try? xs.read(bdir + "/feature-flush-cache")) ?? "-")")
    let ringPage = try! gt.allocatePage()
    let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size)
    let front = FrontRing(page: ringPage.base, layout: layout)
    let ringRef = try! gt.grantAccess(ringPage, to: bid)
    let data = (0..<2).map { _ in try! gt.allocatePage() }
    let refs = data.map { try! gt.grantAccess($0, to: bid) }
    let port = try! ev.allocUnbound(remote: bid)
    if let bad = arg("badneg") {
        // Numbers blkback must refuse (connect_ring): it closes the device and says why.
        say("backend offers: max-queues=\((try? xs.read(bdir + "/multi-queue-max-queues")) ?? "-") max-ring-page-order=\((try? xs.read(bdir + "/max-ring-page-order")) ?? "-") max-indirect=\((try? xs.read(bdir + "/feature-max-indirect-segments")) ?? "-")")
        if bad == "queues" { try! xs.write(fdir + "/multi-queue-num-queues", "99") }
        if bad == "order" { try! xs.write(fdir + "/ring-page-order", "9") }
        try! xs.write(fdir + "/ring-ref", "\(ringRef)")
        try! xs.write(fdir + "/event-channel", "\(port)")
        try! xs.write(fdir + "/state", "3")
        waited = 0
        // Closing comes first and Closed a moment later: wait for Closed, so a busy machine that
        // lets this guest look in between does not report the passing Closing.
        while backendState() != "6" && waited < 1000 { usleep(10_000); waited += 1 }
        say("bad \(bad): backend state \(backendState())")
        say("blk-raw done")
        while true { domain.block() }
    }
    try! xs.write(fdir + "/ring-ref", "\(ringRef)")
    try! xs.write(fdir + "/event-channel", "\(port)")
    try! xs.write(fdir + "/protocol", "x86_64-abi")
    try! xs.write(fdir + "/feature-persistent", "1")
    try! xs.write(fdir + "/state", "3")
    waited = 0
    while backendState() != "4" && waited < 1000 { usleep(10_000); waited += 1 }
    try! xs.write(fdir + "/state", "4")
    say("connected: backend state \(backendState())")

    /// Puts raw slot bytes on the ring, kicks, waits for the response.
    func roundTrip(_ fill: (UnsafeMutableRawPointer) -> Void) -> BlkifResponse? {
        guard let slot = front.nextRequest() else { return nil }
        memset(slot, 0, BlkifRequest.Layout.size)
        fill(slot)
        if front.pushRequests() { try? ev.send(port) } else { try? ev.send(port) }
        for _ in 0..<200 {
            if let r = try? front.takeResponse() { return try? BlkifResponse.decode(slot: r) }
            _ = ev.waitAny(timeoutNs: 50_000_000)
        }
        return nil
    }
    func request(_ r: BlkifRequest) -> String {
        guard let rsp = roundTrip({ r.encode(to: $0) }) else { return "no response" }
        return "id=\(rsp.id) op=\(rsp.operation) status=\(rsp.status)"
    }
    // Write a pattern to sectors 8..15, read it back into the other page.
    for i in 0..<4096 { data[0].base.storeBytes(of: UInt8(truncatingIfNeeded: i * 7 + 3), toByteOffset: i, as: UInt8.self) }
    say("write: " + request(.readWrite(.init(operation: .write, id: 1, sectorNumber: 8, segments: [BlkifSegment(gref: refs[0])]))))
    say("read: " + request(.readWrite(.init(operation: .read, id: 2, sectorNumber: 8, segments: [BlkifSegment(gref: refs[1])]))))
    say("read matches: \(memcmp(data[0].base, data[1].base, 4096) == 0)")
    // Half a page: sectors 2..5 of the page at disk sector 100.
    say("partial: " + request(.readWrite(.init(operation: .write, id: 3, sectorNumber: 100, segments: [BlkifSegment(gref: refs[0], firstSect: 2, lastSect: 5)]))))
    say("flush: " + request(.readWrite(.init(operation: .flushDiskcache, id: 4, sectorNumber: 0, segments: []))))
    say("discard: " + request(.discard(.init(id: 5, sectorNumber: 256, nrSectors: 8))))
    // Bad requests, raw: each must get an error response, the device keeps serving.
    say("bad op: " + (roundTrip { s in s.storeBytes(of: UInt8(99), as: UInt8.self); s.storeBytes(of: UInt64(6), toByteOffset: 8, as: UInt64.self) }.map { "id=\($0.id) status=\($0.status)" } ?? "none"))
    say("12 segments: " + (roundTrip { s in
        s.storeBytes(of: UInt8(0), as: UInt8.self); s.storeBytes(of: UInt8(12), toByteOffset: 1, as: UInt8.self)
        s.storeBytes(of: UInt64(7), toByteOffset: 8, as: UInt64.self)
    }.map { "id=\($0.id) status=\($0.status)" } ?? "none"))
    say("first>last: " + (roundTrip { s in
        BlkifRequest.readWrite(.init(operation: .read, id: 8, sectorNumber: 0, segments: [BlkifSegment(gref: refs[1])])).encode(to: s)
        s.storeBytes(of: UInt8(6), toByteOffset: 24 + 4, as: UInt8.self)  // seg[0].first_sect
        s.storeBytes(of: UInt8(2), toByteOffset: 24 + 5, as: UInt8.self)  // seg[0].last_sect
    }.map { "id=\($0.id) status=\($0.status)" } ?? "none"))
    say("past end: " + request(.readWrite(.init(operation: .read, id: 9, sectorNumber: sectors - 4, segments: [BlkifSegment(gref: refs[1])]))))
    say("ungranted gref: " + request(.readWrite(.init(operation: .read, id: 10, sectorNumber: 0, segments: [BlkifSegment(gref: 60000)]))))
    say("still serving: " + request(.readWrite(.init(operation: .read, id: 11, sectorNumber: 8, segments: [BlkifSegment(gref: refs[1])]))))

    // BLKIF_OP_INDIRECT: the segments in a page granted read-only.
    let ind = try! gt.allocatePage()
    let indRef = try! gt.grantAccess(ind, to: bid, readonly: true)
    func indirect(id: UInt64, op: BlkifOp = .read, sector: UInt64 = 8, nr: UInt16, grefs: [GrantRef]? = nil,
                  _ segments: [BlkifSegment]) -> String {
        memset(ind.base, 0, 4096)
        BlkifRequest.Indirect.store(segments, to: [ind.base])
        return request(.indirect(.init(indirectOp: op, nrSegments: nr, id: id, sectorNumber: sector, indirectGrefs: grefs ?? [indRef])))
    }
    memset(data[1].base, 0, 4096)
    // Sectors 8..11 then 12..15, from two segments of the same page: the pattern written above.
    say("indirect read: " + indirect(id: 12, nr: 2, [BlkifSegment(gref: refs[1], firstSect: 0, lastSect: 3),
                                                     BlkifSegment(gref: refs[1], firstSect: 4, lastSect: 7)]))
    say("indirect matches: \(memcmp(data[0].base, data[1].base, 4096) == 0)")
    let one = [BlkifSegment(gref: refs[1])]
    say("indirect 257 segments: " + indirect(id: 13, nr: 257, Array(repeating: BlkifSegment(gref: refs[1]), count: 257)))
    say("indirect op discard: " + indirect(id: 14, op: .discard, nr: 1, one))
    say("indirect page ungranted: " + indirect(id: 15, nr: 1, grefs: [60001], one))
    say("indirect seg ungranted: " + indirect(id: 16, nr: 1, [BlkifSegment(gref: 60002)]))
    say("indirect first>last: " + indirect(id: 17, nr: 1, [BlkifSegment(gref: refs[1], firstSect: 7, lastSect: 1)]))
    say("indirect past end: " + indirect(id: 18, sector: sectors - 4, nr: 1, one))
    // WRITE_BARRIER with data: drained, flushed, written, flushed.
    say("barrier: " + request(.readWrite(.init(operation: .writeBarrier, id: 19, sectorNumber: 16, segments: [BlkifSegment(gref: refs[0])]))))
    say("still serving: " + request(.readWrite(.init(operation: .read, id: 20, sectorNumber: 16, segments: [BlkifSegment(gref: refs[1])]))))
    say("barrier data matches: \(memcmp(data[0].base, data[1].base, 4096) == 0)")
    if arg("corrupt") == "1" {
        // Impossible producer index: the backend must disconnect this device, not loop.
        ringPage.base.storeBytes(of: UInt32(5000), as: UInt32.self)
        try? ev.send(port)
        waited = 0
        while backendState() != "6" && waited < 500 { usleep(10_000); waited += 1 }
        say("after corruption: backend state \(backendState())")
    }
    if arg("corrupt-after-restart") == "1" {
        // The backend dies (the test kills it); while a new incarnation takes over, the producer
        // index becomes impossible: the new one must refuse this device alone.
        say("waiting for the backend to go")
        while ev.isConnected(port) { usleep(1000) }
        ringPage.base.storeBytes(of: UInt32(5000), as: UInt32.self)
        waited = 0
        while backendState() != "6" && waited < 1000 { usleep(10_000); waited += 1 }
        say("after corruption during the restart: backend state \(backendState())")
    }
    say("blk-raw done")
    while true { domain.block() }
}

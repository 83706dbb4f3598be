// bench-guest: the guest the benchmarks create, and the peers they compare against.
//  bare (no supervisor):   reports "R" on stdout as soon as main runs (lifecycle peer; with --idle
//    it then stays, idle, until killed: the density peer);
//    --futex-ping N / --futex-pong      raw futex ping-pong on the memfd at fd 3 (evtchn peer);
//    --eventfd-ping N / --eventfd-pong  eventfd ping-pong on fds 3 and 4 (evtchn peer);
//    --dgram-send SIZE SECONDS / --dgram-recv  datagrams over the AF_UNIX socketpair end at fd 3 (net peer);
//    --timerfd ROUNDS PERIOD_US         one-shot timerfd lateness (sched peer);
//  as a domain: "mode=idle" (lifecycle), "mode=xs-echo seconds=S gaps=MS" (live update), "mode=evtchn-offer", "mode=evtchn-bind peer=D port=P rounds=N spin=S", "mode=spin" (sched).
import DomainRuntime
import Glibc
import LinuxHost

let args = Array(CommandLine.arguments.dropFirst())
func arg(_ key: String) -> String? {
    args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
}
func report(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(1, $0, strlen($0)) }
}

switch args.first {
case "--futex-ping", "--futex-pong":
    let ping = args[0] == "--futex-ping"
    let rounds = ping && args.count > 1 ? Int(args[1]) ?? 10000 : 0
    let spin = Int(args.last.flatMap { $0.hasPrefix("spin=") ? String($0.dropFirst(5)) : nil } ?? "0") ?? 0
    let map = try! SharedMapping(FileDescriptor(rawValue: 3), length: 4096)
    let turn = map.base.assumingMemoryBound(to: UInt32.self)
    // With a spin, the peer is as smart as the event channel: a sleeper count next to the turn word
    // lets the sender skip FUTEX_WAKE while the other side is still spinning. Without one it is the
    // textbook ping-pong: every hand-over is a FUTEX_WAKE and every wait a FUTEX_WAIT.
    let sleepers = turn + 1
    func hand(_ value: UInt32) {
        SharedAtomic.store(turn, value)
        if spin == 0 || SharedAtomic.load(sleepers) != 0 { _ = try? Futex.wake(turn) }
    }
    /// Waits while *turn == value: `spin` checks first, then FUTEX_WAIT.
    func waitWhile(_ value: UInt32) {
        for _ in 0..<spin {
            if SharedAtomic.load(turn) != value { return }
            SharedAtomic.relax()
        }
        SharedAtomic.fetchAdd(sleepers, 1)
        while SharedAtomic.load(turn) == value { _ = try? Futex.wait(turn, expected: value) }
        SharedAtomic.fetchAdd(sleepers, UInt32.max)
    }
    if ping {
        let t0 = MonotonicClock.nanoseconds()
        for _ in 0..<rounds {
            hand(1)
            waitWhile(1)
        }
        report("rtt_ns=\((MonotonicClock.nanoseconds() - t0) / UInt64(rounds))")
        SharedAtomic.store(turn, 2)
        _ = try? Futex.wake(turn)
    } else {
        while true {
            waitWhile(0)
            if SharedAtomic.load(turn) == 2 { break }
            hand(0)
        }
    }
    exit(0)
case "--mmap-peer":
    // Peer of grant map+unmap: mmap + munmap of a memfd page this process already holds.
    let rounds = Int(args[1]) ?? 2000
    let fd = try! MemFD.create(name: "peer", size: 4096)
    let t0 = MonotonicClock.nanoseconds()
    for _ in 0..<rounds { _ = try! SharedMapping(fd, length: 4096) }
    report("ns=\((MonotonicClock.nanoseconds() - t0) / UInt64(rounds))")
    exit(0)
case "--memcpy-peer":
    // Peer of grant copy: memcpy of 4 KiB pages between two mappings, in MB/s.
    let rounds = Int(args[1]) ?? 2000
    let a = try! SharedMapping(try! MemFD.create(name: "a", size: 4096), length: 4096)
    let b = try! SharedMapping(try! MemFD.create(name: "b", size: 4096), length: 4096)
    memset(a.base, 7, 4096)
    let t0 = MonotonicClock.nanoseconds()
    for _ in 0..<(rounds * 8) { memcpy(b.base, a.base, 4096) }
    report("mbps=\(Double(rounds * 8 * 4096) / (Double(MonotonicClock.nanoseconds() - t0) / 1e9) / 1e6)")
    exit(0)
case "--eventfd-ping", "--eventfd-pong":
    let ping = args[0] == "--eventfd-ping"
    let rounds = args.count > 1 ? Int(args[1]) ?? 10000 : 0
    let (out, inp): (Int32, Int32) = ping ? (3, 4) : (4, 3)
    var one: UInt64 = 1, got: UInt64 = 0
    if ping {
        let t0 = MonotonicClock.nanoseconds()
        for _ in 0..<rounds {
            _ = write(out, &one, 8)
            _ = read(inp, &got, 8)
        }
        report("rtt_ns=\((MonotonicClock.nanoseconds() - t0) / UInt64(rounds))")
        var stop: UInt64 = 2
        _ = write(out, &stop, 8)
    } else {
        while read(inp, &got, 8) == 8 && got == 1 { _ = write(out, &one, 8) }
    }
    exit(0)
case "--timerfd":
    // The timer peer: the same one-shot timers from a timerfd, in a plain process.
    let rounds = Int(args.count > 1 ? args[1] : "2000") ?? 2000
    let period = (UInt64(args.count > 2 ? args[2] : "1000") ?? 1000) * 1000
    let t = try! TimerFD()
    var late: [UInt64] = []
    for i in 0..<(rounds + 50) {
        let deadline = MonotonicClock.nanoseconds() + period
        try! t.arm(at: deadline)
        var p = Poll([(t.fd, .readable)])
        _ = try? p.wait(timeoutMs: -1)
        t.drain()
        let now = MonotonicClock.nanoseconds()
        if i >= 50 { late.append(now >= deadline ? now - deadline : 0) }
    }
    late.sort()
    report("timer p50_ns=\(late[late.count / 2]) p99_ns=\(late[min(late.count - 1, late.count * 99 / 100)])")
    exit(0)
case "--dgram-send":
    // SIZE-byte datagrams (first byte 0) for SECONDS, as fast as send(2) takes them, then a
    // stop datagram (first byte 1). The socketpair is reliable: send blocks when the peer lags.
    let size = args.count > 1 ? max(1, Int(args[1]) ?? 64) : 64
    let seconds = args.count > 2 ? Double(args[2]) ?? 3 : 3
    var buffer = [UInt8](repeating: 0, count: size)
    var sent = 0
    let end = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
    while MonotonicClock.nanoseconds() < end {
        for _ in 0..<64 where send(3, &buffer, size, 0) == size { sent += 1 }
    }
    buffer[0] = 1
    _ = send(3, &buffer, size, 0)
    report("sent=\(sent)")
    exit(0)
case "--dgram-recv":
    var buffer = [UInt8](repeating: 0, count: 65536)
    var count = 0, bytes = 0
    var first: UInt64 = 0
    while true {
        let n = recv(3, &buffer, buffer.count, 0)
        if n <= 0 { break }
        if buffer[0] == 1 { break }
        if count == 0 { first = MonotonicClock.nanoseconds() }
        count += 1
        bytes += n
    }
    let seconds = Double(MonotonicClock.nanoseconds() - first) / 1e9
    report("pps=\(Double(count) / seconds) gbps=\(Double(bytes) * 8 / seconds / 1e9) datagrams=\(count)")
    exit(0)
default:
    break
}

var type: Int32 = 0
var len = socklen_t(MemoryLayout<Int32>.size)
if getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len) != 0 {
    _ = write(1, "R", 1)
    // --idle (density peer): stays, idle, until killed.
    if args.first == "--idle" { while true { pause() } }
    exit(0)
}
let domain = Domain.start()
_ = write(1, "R", 1)
let ev = domain.eventChannels
switch arg("mode") ?? "idle" {
case "evtchn-offer":
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let port = try! ev.allocUnbound(remote: peer)
    let spin = Int(arg("spin") ?? "0") ?? 0
    // Tell the peer the port through XenStore, readable by it alone.
    try! domain.store.write("data/evtchn-port", "\(port)")
    try! domain.store.setPermissions("data/evtchn-port", [XenStorePermission(domid: domain.domid, access: .none),
                                                          XenStorePermission(domid: peer, access: .read)])
    report("offer port=\(port)")
    while true {
        if ev.waitAny(spin: spin) == port {
            if !ev.isConnected(port) { break }
            try? ev.send(port)
        }
    }
    domain.shutdown(.poweroff)
case "evtchn-bind":
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let rounds = Int(arg("rounds") ?? "10000") ?? 10000
    let spin = Int(arg("spin") ?? "0") ?? 0
    var port: EventChannels.Port?
    for _ in 0..<5000 where port == nil {  // the offer may not be published yet
        if let text = try? domain.store.read("/local/domain/\(peer)/data/evtchn-port"), let rport = EventChannels.Port(text) {
            port = try? ev.bindInterdomain(remote: peer, remotePort: rport)
        }
        if port == nil { usleep(1000) }
    }
    guard let port else { report("bind failed"); domain.shutdown(.crash) }
    for _ in 0..<1000 {  // warm up
        try! ev.send(port)
        while ev.waitAny(spin: spin) != port {}
    }
    let t0 = MonotonicClock.nanoseconds()
    for _ in 0..<rounds {
        try! ev.send(port)
        while ev.waitAny(spin: spin) != port {}
    }
    report("rtt_ns=\((MonotonicClock.nanoseconds() - t0) / UInt64(rounds))")
    try? ev.close(port)
    domain.shutdown(.poweroff)
case "grant-granter":
    let page = try! domain.grantTable.allocatePage()
    _ = try! domain.grantTable.grantAccess(page, to: UInt16(arg("peer") ?? "0") ?? 0)  // gref 8
    report("granted")
    while true { domain.block() }
case "grant-bench":
    let gt = domain.grantTable
    let peer = UInt16(arg("peer") ?? "1") ?? 1
    let rounds = Int(arg("rounds") ?? "2000") ?? 2000
    var m: GrantMapping?
    for _ in 0..<5000 where m == nil {
        m = try? gt.map(domid: peer, ref: 8)
        if m == nil { usleep(1000) }
    }
    guard let first = m else { report("map failed"); domain.shutdown(.crash) }
    try! gt.unmap(first)
    let t0 = MonotonicClock.nanoseconds()
    for _ in 0..<rounds {
        let g = try! gt.map(domid: peer, ref: 8)
        try! gt.unmap(g)
    }
    let t1 = MonotonicClock.nanoseconds()
    let batch16 = [(domid: UInt16, ref: GrantRef, readonly: Bool)](repeating: (peer, 8, false), count: 16)
    let tb0 = MonotonicClock.nanoseconds()
    for _ in 0..<(rounds / 16) {
        let ms = gt.map(batch16).map { try! $0.get() }
        _ = gt.unmap(ms)
    }
    let tb1 = MonotonicClock.nanoseconds()
    report("map_unmap_batch_ns=\((tb1 - tb0) / UInt64(rounds / 16 * 16))")
    let mine = try! gt.allocatePage()
    let op = GrantCopy(source: .init(refOrGFN: 8, domid: DomID(peer), offset: 0), dest: .init(refOrGFN: mine.gfn, domid: DOMID_SELF, offset: 0),
                       length: 4096, flags: GNTCOPY_source_gref)
    let batch = [GrantCopy](repeating: op, count: 64)
    let t2 = MonotonicClock.nanoseconds()
    for _ in 0..<(rounds / 8) { _ = gt.copy(batch) }
    let t3 = MonotonicClock.nanoseconds()
    for _ in 0..<rounds { _ = gt.copy([op]) }
    let t4 = MonotonicClock.nanoseconds()
    report("map_unmap_ns=\((t1 - t0) / UInt64(rounds))")
    report("copy_batch_mbps=\(Double(rounds / 8 * 64 * 4096) / (Double(t3 - t2) / 1e9) / 1e6)")
    report("copy_single_ns=\((t4 - t3) / UInt64(rounds))")
    domain.shutdown(.poweroff)
case "xs-echo":
    // A XenStore round trip (write a node of its own, read it back) after another, for
    // `seconds`; each pause of at least `gaps` ms between two round trips is printed as
    // `xs-echo: gap FROM TO` (monotonic ns): what a guest sees of the supervisor being away.
    let seconds = UInt64(arg("seconds") ?? "10") ?? 10
    let gapNs = (UInt64(arg("gaps") ?? "2") ?? 2) * 1_000_000
    let end = MonotonicClock.nanoseconds() + seconds * 1_000_000_000
    var last = MonotonicClock.nanoseconds()
    var rounds = 0
    report("xs-echo: running")
    while last < end {
        do {
            try domain.store.write("data/xs-echo", "\(rounds)")
            guard try domain.store.read("data/xs-echo") == "\(rounds)" else { report("xs-echo: FAILED: read back something else"); domain.shutdown(.crash) }
        } catch {
            report("xs-echo: FAILED: \(error)")
            domain.shutdown(.crash)
        }
        rounds += 1
        let now = MonotonicClock.nanoseconds()
        if now - last >= gapNs { report("xs-echo: gap \(last) \(now)") }
        last = now
    }
    report("xs-echo: OK rounds=\(rounds)")
    domain.shutdown(.poweroff)
case "fill-ram":
    // Every populated page gets data (no holes for a save to skip), then the domain idles until
    // the toolstack suspends it. With dirty=N a vCPU keeps writing N pages a millisecond.
    let mem = domain.memory
    let pages = Int(domain.memoryKB / 4)
    var x: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(domain.domid)
    for pfn in 0..<pages {
        let page = mem.base + pfn * 4096
        for w in stride(from: 0, to: 4096, by: 8) {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            page.storeBytes(of: x, toByteOffset: w, as: UInt64.self)
        }
    }
    report("filled=\(pages)")
    if let rate = arg("dirty").flatMap(Int.init), rate > 0 {
        domain.startVCPU(1) { _ in
            var pfn = 0
            while true {
                let t0 = MonotonicClock.nanoseconds()
                for _ in 0..<rate {
                    (mem.base + pfn * 4096).storeBytes(of: MonotonicClock.nanoseconds(), as: UInt64.self)
                    pfn = (pfn &+ 7919) % pages
                }
                while MonotonicClock.nanoseconds() - t0 < 1_000_000 { usleep(100) }
            }
        }
    }
    while true { domain.block() }
case "timer":
    // VIRQ_TIMER lateness (sched suite): `rounds` one-shot timers `period_us` apart.
    let rounds = Int(arg("rounds") ?? "2000") ?? 2000
    let period = (UInt64(arg("period_us") ?? "1000") ?? 1000) * 1000
    let port = try! ev.bindVirq(.timer)
    var late: [UInt64] = []
    late.reserveCapacity(rounds)
    for i in 0..<(rounds + 50) {
        let deadline = MonotonicClock.nanoseconds() + period
        domain.setTimer(deadline: deadline)
        while ev.waitAny() != port {}
        let now = MonotonicClock.nanoseconds()
        if i >= 50 { late.append(now >= deadline ? now - deadline : 0) }  // the first ones warm up
    }
    late.sort()
    report("timer p50_ns=\(late[late.count / 2]) p99_ns=\(late[min(late.count - 1, late.count * 99 / 100)])")
    while true { domain.block() }
case "spin":
    // CPU-bound on its one vCPU until destroyed (sched suite).
    report("spinning")
    var x: UInt64 = 1
    while true { x = x &* 6364136223846793005 &+ 1442695040888963407; if x == 0 { report("\(x)") } }
default:
    while true { domain.block() }
}

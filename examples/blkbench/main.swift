// blkbench: a guest that benchmarks its first virtual disk through blkfront, the way fio would
// (`procvisor-bench blk` runs fio on the same image with the same parameters).
//
//   extra = "rw=randread bs=4096 depth=32 seconds=5 span=BYTES seed=N spin=N ios=N timeout=SECONDS"
//   (a setting given twice: the last one counts)
//
//   rw       randread | randwrite | read | write (fio's names; read/write are sequential)
//   bs       bytes per IO, a multiple of the disk's sector size (4096 for random, 1 MiB for
//            sequential by default)
//   depth    IOs in flight: exactly `depth` are submitted at all times (1–256; 1 by default)
//   seconds  run time (5 by default); `ios` stops after that many IOs instead (or as well:
//            whichever comes first when both are given)
//   span     bytes of the disk used, from its start (the whole disk by default)
//   seed     random offsets (splitmix64; 1 by default)
//   spin     Blkfront.spin: doorbell checks before sleeping in waitAny (0 by default)
//   publish  Blkfront.batchPublish: resubmissions after a batch of completions are published
//            this many at a time (4 by default; `depth` publishes each burst whole)
//   timeout  seconds a wait for a completion may take before the run fails (30)
//   queues, ring_order, indirect
//            blkfront's options (BlkfrontOptions: queues, ring-page-order, indirect segments per
//            request; Linux's defaults 1, 0, 32 unless given), capped by what the backend offers
//
// Random offsets are uniform over the span, aligned to bs; sequential ones advance by bs and
// wrap at the end of the span. Latency is per IO, submit → completion, on the monotonic clock,
// in a log-linear histogram (1/128 of a power of two: under 0.8% error, no allocation per IO).
// Writes reuse one preallocated random buffer (blkfront copies it into its granted pages); reads
// land in a buffer per slot (as fio's per-IO buffers), nothing allocated per IO.
//
// Prints, then powers off:
//   blkbench: xvda: <features>
//   blkbench: rw=randread bs=4096 depth=32 ios=N seconds=S iops=X mbps=Y lat_p50_us=A lat_p99_us=B lat_max_us=C cpu_us_per_io=D
//   blkbench: xvda randread 4 KiB at depth 32: X IOPS, Y MB/s, latency p50 A µs, p99 B µs, max C µs
// (mbps is 10^6 bytes per second; cpu_us_per_io is this guest's own CPU time per IO.) Any IO
// error or a missing disk prints `blkbench: FAILED: …` and crashes the domain.
import DomainRuntime
import Glibc
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.last { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func number(_ key: String, _ fallback: UInt64) -> UInt64 {
    guard let text = arg(key) else { return fallback }
    guard let v = UInt64(text) else { fail("\(key)=\(text) is not a number") }
    return v
}

func say(_ line: String) {
    print("blkbench: \(line)")
    fflush(stdout)
}

func fail(_ why: String) -> Never {
    say("FAILED: \(why)")
    domain.shutdown(.crash)
}

enum Pattern: String {
    case randread, randwrite, read, write
    var isRandom: Bool { self == .randread || self == .randwrite }
    var isWrite: Bool { self == .write || self == .randwrite }
}

guard let rw = Pattern(rawValue: arg("rw") ?? "randread") else {
    fail("rw=\(arg("rw") ?? "") is not one of randread, randwrite, read, write")
}
let bs = Int(number("bs", rw.isRandom ? 4096 : 1 << 20))
let depth = Int(number("depth", 1))
let seconds = Double(number("seconds", arg("ios") == nil ? 5 : 0))
let iosLimit = number("ios", 0)
let seed = number("seed", 1)
let spin = Int(number("spin", 0))
let timeout = Double(number("timeout", 30))
guard (1...256).contains(depth) else { fail("depth=\(depth) is not in 1...256") }
guard bs > 0, bs % 512 == 0 else { fail("bs=\(bs) is not a positive multiple of 512") }
guard seconds > 0 || iosLimit > 0 else { fail("seconds=0 and no ios=: nothing to run") }

/// splitmix64.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Log-linear latency histogram (ns): values below 2^subBits exactly, above that 2^subBits
/// buckets per power of two. Fixed storage, so recording never allocates.
struct Histogram {
    static let subBits = 7
    static let sub = 1 << subBits
    var counts = [UInt64](repeating: 0, count: (64 - subBits + 1) * (1 << subBits))
    var total: UInt64 = 0
    var max: UInt64 = 0
    var sum: UInt64 = 0

    @inline(__always) static func index(_ v: UInt64) -> Int {
        if v < UInt64(sub) { return Int(v) }
        let msb = 63 - v.leadingZeroBitCount           // >= subBits
        let shift = msb - subBits
        let mantissa = Int(v >> UInt64(shift)) - sub     // 0 ..< sub
        return (shift + 1) * sub + mantissa
    }

    /// The middle of bucket `i`'s range.
    static func value(_ i: Int) -> Double {
        if i < sub { return Double(i) }
        let shift = i / sub - 1
        let low = UInt64(sub + i % sub) << UInt64(shift)
        return Double(low) + Double((UInt64(1) << UInt64(shift)) - 1) / 2
    }

    @inline(__always) mutating func record(_ v: UInt64) {
        counts[Histogram.index(v)] &+= 1
        total &+= 1
        sum &+= v
        if v > max { max = v }
    }

    /// As fio: the smallest value with at least p% of the samples at or below it.
    func percentile(_ p: Double) -> Double {
        guard total > 0 else { return 0 }
        let rank = Swift.max(UInt64(1), UInt64((p / 100 * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() where c > 0 {
            seen += c
            if seen >= rank { return Swift.min(Histogram.value(i), Double(max)) }
        }
        return Double(max)
    }
}

func cpuNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

let devids: [UInt32]
do { devids = try Blkfront.devices(domain: domain) } catch { fail("cannot list device/vbd: \(error)") }
guard let devid = devids.first else { fail("no virtual disk: device/vbd is empty (add a disk= line to the config)") }
let front: Blkfront
var options = BlkfrontOptions()
options.queues = Int(number("queues", UInt64(options.queues)))
options.ringPageOrder = Int(number("ring_order", UInt64(options.ringPageOrder)))
options.maxIndirectSegments = Int(number("indirect", UInt64(options.maxIndirectSegments)))
do { front = try Blkfront.connect(domain: domain, devid: devid, timeout: timeout, options: options) } catch { fail("\(error)") }
front.spin = spin
front.batchPublish = max(1, Int(number("publish", UInt64(front.batchPublish))))
front.ioTimeout = timeout
let f = front.features
say("\(front.label): \(f.sectors) sectors (\(f.bytes / 1_048_576) MiB), sector-size \(f.sectorSize), \(f.readOnly ? "ro" : "rw"), persistent grants \(f.persistent ? "yes" : "no"); \(front.queueCount) queue(s), ring-page-order \(front.ringPageOrder), \(front.maxSegmentsPerRequest) segments per request")

guard bs % front.sectorSize == 0 else { fail("bs=\(bs) is not a multiple of the disk's \(front.sectorSize)-byte sectors") }
if rw.isWrite && front.readOnly { fail("rw=\(rw.rawValue) on a read-only disk") }
let diskBytes = f.bytes
let span = min(diskBytes, number("span", diskBytes))
let blocks = span / UInt64(bs)
guard blocks > 0 else { fail("span=\(span) bytes holds no \(bs)-byte block") }
let sectorsPerIO = bs / 512

// One random buffer for every write (blkfront keeps a reference while the IO is out, no copy).
var rng = SplitMix(state: seed)
var writeBuffer = [UInt8](repeating: 0, count: rw.isWrite ? bs : 0)
writeBuffer.withUnsafeMutableBytes { b in
    for i in stride(from: 0, to: b.count & ~7, by: 8) { b.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }
}

// Each slot's read buffer, page aligned.
let readBuffers = UnsafeMutableRawBufferPointer.allocate(byteCount: rw.isWrite ? 0 : bs * depth, alignment: 4096)

// Tags are slots 0..<depth; each slot remembers when its IO was submitted.
var submittedAt = [UInt64](repeating: 0, count: depth)
var nextBlock: UInt64 = 0
var submitted: UInt64 = 0
var completedIOs: UInt64 = 0
var histogram = Histogram()

@inline(__always) func submit(slot: Int) {
    let block: UInt64
    if rw.isRandom {
        block = rng.next() % blocks
    } else {
        block = nextBlock
        nextBlock += 1
        if nextBlock == blocks { nextBlock = 0 }
    }
    let sector = block * UInt64(sectorsPerIO)
    submittedAt[slot] = SystemTime.nanoseconds()
    do {
        if rw.isWrite {
            try front.submitWrite(sector: sector, data: writeBuffer, tag: UInt64(slot))
        } else {
            try front.submitRead(sector: sector, count: sectorsPerIO,
                                 into: UnsafeMutableRawBufferPointer(rebasing: readBuffers[slot * bs..<(slot + 1) * bs]), tag: UInt64(slot))
        }
    } catch {
        fail("submitting \(rw.rawValue) of \(bs) bytes at sector \(sector): \(error)")
    }
    submitted += 1
}

let cpu0 = cpuNanoseconds()
let start = SystemTime.nanoseconds()
let deadline = seconds > 0 ? start + UInt64(seconds * 1e9) : UInt64.max
func mayStart() -> Bool { (iosLimit == 0 || submitted < iosLimit) }
var stopping = false
var lastCompletion = start
// Submissions are batched (one notification per burst, as Linux's blk-mq does).
front.batch { for slot in 0..<depth where mayStart() { submit(slot: slot) } }
while completedIOs < submitted {
    let batch: [BlkfrontCompletion]
    do { batch = try front.completions(wait: true, timeout: timeout) } catch {
        fail("waiting for \(submitted - completedIOs) IOs: \(error)")
    }
    let now = SystemTime.nanoseconds()
    if now >= deadline { stopping = true }
    front.batch {
        for c in batch {
            if let e = c.error { fail("\(c.operation) of \(c.count) sectors at sector \(c.sector): \(e)") }
            let slot = Int(c.tag)
            histogram.record(now - submittedAt[slot])
            completedIOs += 1
            lastCompletion = now
            if !stopping && mayStart() { submit(slot: slot) }
        }
    }
    _ = front.takeStrayPorts()  // this guest has no other event channels
}
let cpu = cpuNanoseconds() - cpu0
let elapsed = Double(lastCompletion - start) / 1e9
front.close()

let iops = Double(completedIOs) / elapsed
let mbps = iops * Double(bs) / 1e6
/// `v` with `places` decimals (no Foundation in a guest).
func fixed(_ v: Double, _ places: Int) -> String {
    var scale = 1.0
    for _ in 0..<places { scale *= 10 }
    let n = UInt64((max(0, v) * scale).rounded())
    if places == 0 { return String(n) }
    let frac = String(n % UInt64(scale))
    return "\(n / UInt64(scale)).\(String(repeating: "0", count: places - frac.count))\(frac)"
}
func us(_ ns: Double) -> String { fixed(ns / 1000, 1) }
let p50 = histogram.percentile(50), p99 = histogram.percentile(99), maxLatency = Double(histogram.max)
say("rw=\(rw.rawValue) bs=\(bs) depth=\(depth) ios=\(completedIOs) seconds=\(fixed(elapsed, 3)) iops=\(fixed(iops, 0)) mbps=\(fixed(mbps, 1)) lat_p50_us=\(us(p50)) lat_p99_us=\(us(p99)) lat_max_us=\(us(maxLatency)) cpu_us_per_io=\(fixed(Double(cpu) / 1000 / Double(max(completedIOs, 1)), 2))")
let size = bs >= 1 << 20 && bs % (1 << 20) == 0 ? "\(bs >> 20) MiB" : bs % 1024 == 0 ? "\(bs / 1024) KiB" : "\(bs) B"
say("\(front.name) \(rw.rawValue) \(size) at depth \(depth): \(fixed(iops, 0)) IOPS, \(fixed(mbps, 1)) MB/s, latency p50 \(us(p50)) µs, p99 \(us(p99)) µs, max \(us(maxLatency)) µs (\(completedIOs) IOs in \(fixed(elapsed, 2)) s, span \(span >> 20) MiB)")
domain.shutdown(.poweroff)

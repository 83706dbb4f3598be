// blkcheck: a guest that checks its virtual disks end to end. For every vbd in device/vbd it
// connects blkfront, then for `rounds` rounds writes patterns at random sector offsets and sizes
// (1–`maxio` sectors, 88 by default, `depth` requests in flight at once, never overlapping while in flight), discards
// now and then, flushes, and reads random ranges back; finally it reads the whole tested span back
// in 1 MiB reads (split into many ring requests) and checks every sector written. A sector's pattern
// is derived from the seed, the write that last covered it and its number, so a sector that landed
// at the wrong place or from the wrong write is caught, not only a corrupted one.
//
//   extra = "seed=N rounds=N depth=N span=SECTORS timeout=SECONDS maxio=SECTORS queues=N order=N indirect=N"
//
// `queues`, `order` (ring-page-order) and `indirect` (segments per indirect request; 0 = none)
// are what blkfront asks for; the backend's maximums cap them (printed after connecting).
//
// Prints `blkcheck: xvda OK writes=N reads=M bytes=B` per disk and powers off; on any failure it
// prints what was expected and what was found, and crashes.
//
// `mode=soak duration=SECONDS` instead writes the first disk at `depth` for that long, keeping
// what it wrote in its RAM heap, across saves, restores, migrations and backend restarts, and
// verifies every block at the end (`soak OK writes=N resumes=M`); `gaps=MS` reports each pause
// of at least MS ms between completions (`soak: gap FROM TO`, monotonic nanoseconds).
import DomainRuntime
import Glibc
import SplitDrivers

let domain = Domain.start()
let args = CommandLine.arguments.dropFirst()
func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
func number(_ key: String, _ fallback: UInt64) -> UInt64 {
    guard let text = arg(key) else { return fallback }
    guard let v = UInt64(text) else { fail("\(key)=\(text) is not a number") }
    return v
}

func say(_ line: String) {
    print("blkcheck: \(line)")
    fflush(stdout)
}

func fail(_ why: String) -> Never {
    say("FAILED: \(why)")
    domain.shutdown(.crash)
}

let seed = number("seed", 1)
let rounds = Int(number("rounds", 20))
let depth = max(1, min(Int(number("depth", 32)), 256))
let timeout = Double(number("timeout", 60))
let maxIO = max(1, min(number("maxio", 88), 8192))
let options = BlkfrontOptions(queues: Int(number("queues", 1)), ringPageOrder: Int(number("order", 0)),
                              maxIndirectSegments: Int(min(number("indirect", 32), UInt64(Blkif.maxIndirectSegments))))

/// splitmix64: the generator for both the random choices and the patterns.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
}

/// What a sector of the span should hold.
let unknown: UInt32 = 0            // never written (or discarded without a zeroing guarantee)
let zeroed: UInt32 = .max          // securely discarded: reads back zeros

/// The generator of what write number `version` puts at `sector`.
func patternGenerator(version: UInt32, sector: UInt64) -> SplitMix {
    SplitMix(state: seed &* 0x2545_F491_4F6C_DD1D ^ UInt64(version) << 40 ^ sector)
}

/// The 512 bytes write number `version` puts at `sector`.
func fillPattern(_ p: UnsafeMutableRawPointer, version: UInt32, sector: UInt64) {
    var g = patternGenerator(version: version, sector: sector)
    for i in 0..<64 { p.storeBytes(of: g.next(), toByteOffset: i * 8, as: UInt64.self) }
}

/// FNV-1a of a sector, for messages.
func checksum(_ p: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in p { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

final class Checker {
    let front: Blkfront
    let span: UInt64
    var versions: [UInt32]
    var rng: SplitMix
    var nextVersion: UInt32 = 1
    var writes = 0, reads = 0, flushes = 0, discards = 0
    var bytes: UInt64 = 0
    var name: String { front.name }

    init(front: Blkfront, seed: UInt64) {
        self.front = front
        let requested = number("span", 131_072)  // 64 MiB
        span = min(front.sectors, max(requested, 1))
        versions = Array(repeating: unknown, count: Int(span))
        rng = SplitMix(state: seed ^ UInt64(front.device.devid) << 17)
    }

    /// A random range of 1–`maxCount` sectors inside the span, aligned to the sector size.
    func randomRange(maxCount: UInt64 = maxIO) -> (sector: UInt64, count: Int) {
        let unit = UInt64(front.sectorSize / 512)
        let units = span / unit
        let count = (1 + rng.below(max(1, min(maxCount / unit, units)))) * unit
        let sector = rng.below(units - count / unit + 1) * unit
        return (sector, Int(count))
    }

    func pattern(sector: UInt64, count: Int, version: UInt32) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: count * 512)
        data.withUnsafeMutableBytes { b in
            for i in 0..<count { fillPattern(b.baseAddress! + i * 512, version: version, sector: sector + UInt64(i)) }
        }
        return data
    }

    /// Checks a read of `count` sectors at `sector` against what the span should hold.
    func verify(_ data: [UInt8], sector: UInt64, count: Int, what: String) {
        guard data.count == count * 512 else { fail("\(name): \(what) returned \(data.count) bytes, expected \(count * 512)") }
        data.withUnsafeBytes { verify($0, sector: sector, count: count, what: what) }
    }

    /// The same for bytes read into a buffer of ours (`submitRead(into:)`).
    func verify(_ got: UnsafeRawBufferPointer, sector: UInt64, count: Int, what: String) {
        var expected = [UInt8](repeating: 0, count: 512)
        var bad: [Int] = []
        var first = ""
        for i in 0..<count {
            let s = sector + UInt64(i)
            let v = versions[Int(s)]
            if v == unknown { continue }
            expected.withUnsafeMutableBytes { e in
                if v == zeroed { memset(e.baseAddress!, 0, 512) } else { fillPattern(e.baseAddress!, version: v, sector: s) }
            }
            let g = UnsafeRawBufferPointer(rebasing: got[(i * 512)..<((i + 1) * 512)])
            if memcmp(g.baseAddress!, expected, 512) != 0 {
                if bad.isEmpty {
                    let at = (0..<512).first { g[$0] != expected[$0] } ?? 0
                    let e = expected.withUnsafeBytes { checksum($0) }
                    first = "sector \(s) (\(what)): expected \(describe(v, sector: s)) checksum \(hex(e)), got \(identify(g, sector: s)) checksum \(hex(checksum(g))); first difference at byte \(at): \(g[at]) instead of \(expected[at])"
                }
                bad.append(i)
            }
        }
        if let lo = bad.first, let hi = bad.last {
            let lastSector = sector + UInt64(hi)
            fail("\(name): \(first); \(bad.count) of the read's \(count) sectors wrong, its sectors \(lo)–\(hi) (\(sector + UInt64(lo))–\(lastSector)); the last wrong one holds \(identify(UnsafeRawBufferPointer(rebasing: got[(hi * 512)..<((hi + 1) * 512)]), sector: lastSector))")
        }
    }

    /// Writes made so far: sector, count and round of each, by version.
    var written: [UInt32: (sector: UInt64, count: Int, round: Int)] = [:]

    func describe(_ v: UInt32, sector: UInt64) -> String {
        if v == zeroed { return "zeros (securely discarded)" }
        guard let w = written[v] else { return "write #\(v)" }
        return "write #\(v) (round \(w.round), \(w.count) sectors at \(w.sector))"
    }

    /// What a wrong sector holds: zeros, the final read-back's poison, or which write's pattern
    /// for which sector (found by its first eight bytes), so a stale or misplaced sector shows
    /// as such.
    func identify(_ g: UnsafeRawBufferPointer, sector: UInt64) -> String {
        if g.allSatisfy({ $0 == 0 }) { return "zeros" }
        if g.allSatisfy({ $0 == 0xa5 }) { return "the read-back's poison (0xa5: nothing was read into it)" }
        let word = g.loadUnaligned(as: UInt64.self)
        for v in 1..<nextVersion {
            for s in 0..<span {
                var r = patternGenerator(version: v, sector: s)
                if r.next() == word {
                    return "\(describe(v, sector: s))'s data for " + (s == sector ? "this sector" : "sector \(s)")
                }
            }
        }
        let head = g.prefix(32).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        return "no pattern of this run (it begins \(head))"
    }

    /// Waits for every tag in `pending`, calling `done` with each successful completion.
    func drain(_ pending: inout [UInt64: String], _ done: (BlkfrontCompletion) -> Void) {
        while !pending.isEmpty {
            let batch: [BlkfrontCompletion]
            do {
                batch = try front.completions(wait: true, timeout: timeout)
            } catch {
                fail("\(name): waiting for \(pending.count) requests: \(error)")
            }
            for c in batch {
                guard let what = pending.removeValue(forKey: c.tag) else { fail("\(name): completion for unknown tag \(c.tag)") }
                if let e = c.error { fail("\(name): \(what): \(e)") }
                done(c)
            }
            _ = front.takeStrayPorts()  // this guest has no other event channels
        }
    }

    func run() {
        if front.readOnly {
            do {
                try front.submitWrite(sector: 0, data: [UInt8](repeating: 0, count: 512), tag: 0)
                fail("\(name): a write to a read-only disk was accepted")
            } catch BlkfrontError.readOnly {
            } catch {
                fail("\(name): a write to a read-only disk failed with \(error), not readOnly")
            }
        }
        var tag: UInt64 = 1
        for round in 0..<rounds {
            // Writes and discards, all in flight together, none overlapping another.
            if !front.readOnly {
                var ranges: [(UInt64, Int)] = []
                var pending: [UInt64: String] = [:]
                var planned: [UInt64: (sector: UInt64, count: Int, version: UInt32)] = [:]
                var attempts = 0
                // Submitted as one burst (published in groups, as Linux's blk-mq batches).
                front.batch {
                    while ranges.count < depth && attempts < depth * 8 {
                        attempts += 1
                        let r = randomRange()
                        if ranges.contains(where: { r.sector < $0.0 + UInt64($0.1) && $0.0 < r.sector + UInt64(r.count) }) { continue }
                        ranges.append(r)
                        tag += 1
                        do {
                            if front.canDiscard && rng.below(10) == 0 {
                                let secure = front.features.discardSecure
                                try front.submitDiscard(sector: r.sector, count: r.count, secure: secure, tag: tag)
                                pending[tag] = "round \(round): discard of \(r.count) sectors at \(r.sector)"
                                planned[tag] = (r.sector, r.count, secure ? zeroed : unknown)
                            } else {
                                let v = nextVersion
                                nextVersion += 1
                                try front.submitWrite(sector: r.sector, data: pattern(sector: r.sector, count: r.count, version: v), tag: tag)
                                written[v] = (r.sector, r.count, round)
                                pending[tag] = "round \(round): write #\(v) of \(r.count) sectors at \(r.sector)"
                                planned[tag] = (r.sector, r.count, v)
                            }
                        } catch {
                            fail("\(name): round \(round): submitting: \(error)")
                        }
                    }
                }
                drain(&pending) { c in
                    let p = planned[c.tag]!
                    for s in p.sector..<(p.sector + UInt64(p.count)) { versions[Int(s)] = p.version }
                    if c.operation == .write {
                        writes += 1
                        bytes += UInt64(p.count * 512)
                    } else {
                        discards += 1
                    }
                }
                if front.canFlush && round % 4 == 3 {
                    do { try front.flush() } catch { fail("\(name): round \(round): flush: \(error)") }
                    flushes += 1
                }
            }
            // Reads, all in flight together (over anything: nothing is being written).
            var pending: [UInt64: String] = [:]
            front.batch {
                for _ in 0..<depth {
                    let r = randomRange()
                    tag += 1
                    do { try front.submitRead(sector: r.sector, count: r.count, tag: tag) } catch {
                        fail("\(name): round \(round): submitting a read: \(error)")
                    }
                    pending[tag] = "round \(round): read of \(r.count) sectors at \(r.sector)"
                }
            }
            drain(&pending) { c in
                guard case let .success(data?) = c.result else { fail("\(name): read tag \(c.tag) returned no data") }
                verify(data, sector: c.sector, count: c.count, what: "read of \(c.count) at \(c.sector), round \(round)")
                reads += 1
                bytes += UInt64(c.count * 512)
            }
        }
        // The whole span, 1 MiB at a time, four in flight, each into a buffer of ours (the
        // reads above come back as arrays: both of blkfront's read forms are checked).
        var sector: UInt64 = 0
        var pending: [UInt64: String] = [:]
        let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffers.deallocate() }
        var freeBuffers = Array(0..<4)
        var bufferOf: [UInt64: Int] = [:]
        while sector < span || !pending.isEmpty {
            while sector < span, let b = freeBuffers.popLast() {
                let unit = UInt64(front.sectorSize / 512)
                let count = Int(min(2048, span - sector) / unit * unit)
                if count == 0 { sector = span; freeBuffers.append(b); break }
                tag += 1
                // Stale bytes from the last use would pass for a read that never landed: poison them.
                let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[(b << 20)..<((b + 1) << 20)])
                memset(buffer.baseAddress!, 0xa5, buffer.count)
                do { try front.submitRead(sector: sector, count: count, into: buffer, tag: tag) } catch {
                    fail("\(name): final read-back: submitting: \(error)")
                }
                pending[tag] = "final read-back of \(count) sectors at \(sector)"
                bufferOf[tag] = b
                sector += UInt64(count)
            }
            if pending.isEmpty { break }
            let batch: [BlkfrontCompletion]
            do { batch = try front.completions(wait: true, timeout: timeout) } catch {
                fail("\(name): final read-back: \(error)")
            }
            for c in batch {
                guard let what = pending.removeValue(forKey: c.tag) else { fail("\(name): completion for unknown tag \(c.tag)") }
                guard case .success(nil) = c.result, let b = bufferOf.removeValue(forKey: c.tag) else {
                    fail("\(name): \(what): \(c.error.map { "\($0)" } ?? "returned an array for a read into a buffer")")
                }
                verify(UnsafeRawBufferPointer(rebasing: buffers[(b << 20)..<((b << 20) + c.count * 512)]), sector: c.sector, count: c.count, what: what)
                freeBuffers.append(b)
                reads += 1
                bytes += UInt64(c.count * 512)
            }
        }
        // Past the end is refused before it reaches the ring.
        do {
            _ = try front.read(sector: front.sectors, count: 1)
            fail("\(name): a read past the end (sector \(front.sectors)) was accepted")
        } catch BlkfrontError.badRequest {
        } catch {
            fail("\(name): a read past the end failed with \(error), not badRequest")
        }
    }
}

let devids: [UInt32]
do { devids = try Blkfront.devices(domain: domain) } catch { fail("cannot list device/vbd: \(error)") }
if devids.isEmpty { fail("no virtual disk: device/vbd is empty (add a disk= line to the config)") }

if arg("mode") == "soak" { runSoak(devid: devids[0]) }

for devid in devids {
    let started = SystemTime.nanoseconds()
    let front: Blkfront
    do { front = try Blkfront.connect(domain: domain, devid: devid, timeout: timeout, options: options) } catch { fail("\(error)") }
    let f = front.features
    say("\(front.label): \(f.sectors) sectors (\(f.bytes / 1_048_576) MiB), sector-size \(f.sectorSize), \(f.readOnly ? "ro" : "rw"), flush \(f.flushCache ? "flush-cache" : f.barrier ? "barrier" : "none"), discard \(f.discard ? (f.discardSecure ? "secure" : "yes") : "no"), persistent grants \(f.persistent ? "yes" : "no"); ring-ref \(front.ringRef), event channel \(front.port); \(front.queueCount) queue(s), ring-page-order \(front.ringPageOrder), \(front.maxSegmentsPerRequest) segments per request")
    let checker = Checker(front: front, seed: seed)
    checker.run()
    front.close()
    let ms = (SystemTime.nanoseconds() - started) / 1_000_000
    say("\(front.name): span \(checker.span) sectors, \(rounds) rounds at depth \(depth), flushes=\(checker.flushes) discards=\(checker.discards), \(ms) ms")
    say("\(front.name) OK writes=\(checker.writes) reads=\(checker.reads) bytes=\(checker.bytes)")
}
domain.shutdown(.poweroff)

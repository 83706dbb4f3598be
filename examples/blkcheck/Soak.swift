import DomainRuntime
import SplitDrivers

// MARK: soak: writes for duration= seconds across saves, restores and migrations

/// What the soak keeps in pseudo-physical RAM (the RAM heap), so a restored process knows what
/// the disk must hold: per 4 KiB block of the span, the last write acknowledged and the write in
/// flight (0: none).
struct SoakState: BitwiseCopyable {
    var nextVersion: UInt32
    var resumes: UInt32
    var writes: UInt64
    var startedNs: UInt64
    var elapsedNs: UInt64
}

func runSoak(devid: UInt32) -> Never {
    let blocks = Int(number("span", 32768) / 8)  // 16 MiB of 4 KiB blocks by default
    let duration = number("duration", 10)
    let heap: RAMHeap
    let state: UnsafeMutablePointer<SoakState>
    let acked: UnsafeMutablePointer<UInt32>, inFlight: UnsafeMutablePointer<UInt32>
    do {
        heap = try domain.memory.heap
        state = try heap.root(named: "soak", initialValue: SoakState(nextVersion: 1, resumes: 0, writes: 0, startedNs: 0, elapsedNs: 0))
        acked = try heap.rootBytes(named: "soak-acked", count: blocks * 4).baseAddress!.assumingMemoryBound(to: UInt32.self)
        inFlight = try heap.rootBytes(named: "soak-in-flight", count: blocks * 4).baseAddress!.assumingMemoryBound(to: UInt32.self)
    } catch {
        fail("soak: the RAM heap: \(error)")
    }
    let front: Blkfront
    do { front = try Blkfront.connect(domain: domain, devid: devid, timeout: timeout, options: options) } catch { fail("\(error)") }
    guard front.sectors >= UInt64(blocks * 8), front.sectorSize == 512 else { fail("soak: \(front.name) is smaller than the span (\(blocks * 8) sectors) or not 512-byte sectors") }
    func block(_ b: Int, version: UInt32) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: 4096)
        data.withUnsafeMutableBytes { p in for i in 0..<8 { fillPattern(p.baseAddress! + i * 512, version: version, sector: UInt64(b * 8 + i)) } }
        return data
    }
    /// Reads the whole span back: each block holds its acknowledged write, or the one that was in
    /// flight when the domain suspended (which then counts as acknowledged: it reached the disk).
    func verifyAll(_ why: String) {
        var checked = 0, landed = 0
        let chunk = 256  // blocks per read: 1 MiB
        var b = 0
        while b < blocks {
            let n = min(chunk, blocks - b)
            let data: [UInt8]
            do { data = try front.read(sector: UInt64(b * 8), count: n * 8) } catch { fail("soak: reading blocks \(b)..<\(b + n): \(error)") }
            for i in 0..<n {
                let k = b + i
                let got = Array(data[(i * 4096)..<((i + 1) * 4096)])
                let a = acked[k], f = inFlight[k]
                if a == 0 && f == 0 { continue }
                if a != 0 && got == block(k, version: a) { checked += 1; inFlight[k] = 0; continue }
                if f != 0 && got == block(k, version: f) { acked[k] = f; inFlight[k] = 0; checked += 1; landed += 1; continue }
                fail("soak: \(why): block \(k) holds neither write #\(a) (acknowledged) nor #\(f) (in flight)")
            }
            b += n
        }
        say("soak: \(why): \(checked) blocks verified, \(landed) in-flight writes had landed")
    }
    let resumed = heap.restored && state.pointee.startedNs != 0
    if resumed {
        state.pointee.resumes += 1
        say("soak: resumed (\(state.pointee.resumes)) after \(state.pointee.writes) writes")
        verifyAll("after resume \(state.pointee.resumes)")
    } else {
        state.pointee.startedNs = 1
        say("soak: \(front.name) \(blocks) blocks, \(duration) s at depth \(depth)")
    }
    // The toolstack's suspend is taken by the main loop between requests: it lets what is in
    // flight finish (its acknowledgements go to RAM), then suspends.
    // Set on the watch thread, read by the main loop (an aligned word: a plain load and store).
    let suspendWanted = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    suspendWanted.pointee = 0
    domain.onShutdownRequest { reason in
        if reason == .suspend {
            suspendWanted.pointee = 1
        } else {
            domain.shutdown(reason)
        }
    }
    // gaps=MS: every pause of at least MS milliseconds between completions is reported as
    // `soak: gap FROM TO` (monotonic nanoseconds), for a benchmark that kills the backend.
    let gapNs = number("gaps", 0) * 1_000_000
    var lastCompletion = SystemTime.nanoseconds()
    var rng = SplitMix(state: seed ^ UInt64(state.pointee.writes) &* 31 ^ UInt64(state.pointee.resumes))
    var pending: [UInt64: (block: Int, version: UInt32)] = [:]
    var busy = Set<Int>()
    var tag: UInt64 = 0
    var last = SystemTime.nanoseconds()
    while state.pointee.elapsedNs < duration * 1_000_000_000 {
        let now = SystemTime.nanoseconds()
        state.pointee.elapsedNs += now - last
        last = now
        if suspendWanted.pointee != 0 {
            while !pending.isEmpty {
                let batch: [BlkfrontCompletion]
                do { batch = try front.completions(wait: true, timeout: timeout) } catch { fail("soak: draining before suspend: \(error)") }
                for c in batch { complete(c) }
            }
            suspendWanted.pointee = 0
            say("soak: suspending after \(state.pointee.writes) writes")
            if domain.suspend() { say("soak: resumed in place") }
            last = SystemTime.nanoseconds()
            continue
        }
        while pending.count < depth {
            let b = Int(rng.below(UInt64(blocks)))
            if busy.contains(b) { continue }
            let v = state.pointee.nextVersion
            state.pointee.nextVersion += 1
            inFlight[b] = v
            tag += 1
            do { try front.submitWrite(sector: UInt64(b * 8), data: block(b, version: v), tag: tag) } catch { fail("soak: submitting: \(error)") }
            pending[tag] = (b, v)
            busy.insert(b)
        }
        let batch: [BlkfrontCompletion]
        do { batch = try front.completions(wait: true, timeout: timeout) } catch { fail("soak: \(error)") }
        if gapNs > 0, !batch.isEmpty {
            let now = SystemTime.nanoseconds()
            if now - lastCompletion >= gapNs { say("soak: gap \(lastCompletion) \(now)") }
            lastCompletion = now
        }
        for c in batch { complete(c) }
    }
    func complete(_ c: BlkfrontCompletion) {
        guard let p = pending.removeValue(forKey: c.tag) else { fail("soak: completion for unknown tag \(c.tag)") }
        if let e = c.error { fail("soak: write #\(p.version) of block \(p.block): \(e)") }
        acked[p.block] = p.version
        inFlight[p.block] = 0
        busy.remove(p.block)
        state.pointee.writes += 1
    }
    verifyAll("at the end")
    say("soak OK writes=\(state.pointee.writes) resumes=\(state.pointee.resumes)")
    front.close()
    domain.shutdown(.poweroff)
}

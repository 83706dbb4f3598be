import Glibc
import LinuxHost
@testable import SplitDrivers
import Testing

// blkback's I/O engines, both of them: the thread pool (forced through the settings, as the
// driver domain's PROCVISOR_FORCE_NO_IOURING=1 does) and io_uring when this kernel allows it. Buffers are pages of a memfd
// mapping, standing in for mapped grant pages; disks are temp files under /tmp.

private let pageSize = 4096
private let sector = 512
#if arch(arm64)
private let oDirect: Int32 = 0o200000  // O_DIRECT (glibc hides it without _GNU_SOURCE)
#else
private let oDirect: Int32 = 0o40000
#endif
private let forceThreads = BlockIOSettings(forceThreadPool: true)
private let ioUringAllowed = IOUring.probe(environment: [:]) == nil

/// A temp file under /tmp, removed by `remove()`.
private final class TempDisk {
    let path: String
    let fd: FileDescriptor

    init(size: Int, fill: UInt8? = nil, flags: Int32 = 0) throws {
        var template = Array("/tmp/pv-blockio-XXXXXX".utf8CString)
        let raw = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard raw >= 0 else { throw SystemError("mkostemp", errno: .current) }
        path = String(cString: template)
        Glibc.close(raw)
        let fd = try FileDescriptor.open(path, O_RDWR)
        if let fill {
            let chunk = [UInt8](repeating: fill, count: 1 << 20)
            var off = 0
            while off < size {
                let n = min(chunk.count, size - off)
                let w = chunk.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, n, off_t(off)) }
                guard w == n else { throw SystemError("pwrite", path, errno: .current) }
                off += n
            }
        } else {
            guard ftruncate(fd.rawValue, off_t(size)) == 0 else { throw SystemError("ftruncate", path, errno: .current) }
        }
        if flags == 0 {
            self.fd = fd
        } else {  // O_DIRECT: filled through the page cache above, used without it from now on
            fd.close()
            self.fd = try FileDescriptor.open(path, O_RDWR | flags)
        }
    }

    var allocatedBlocks: Int {
        var st = stat()
        fstat(fd.rawValue, &st)
        return Int(st.st_blocks)
    }

    var size: Int {
        var st = stat()
        fstat(fd.rawValue, &st)
        return Int(st.st_size)
    }

    func pread(_ count: Int, at offset: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { Glibc.pread(fd.rawValue, $0.baseAddress, count, off_t(offset)) }
        out.removeSubrange(max(0, n)...)
        return out
    }

    func remove() {
        fd.close()
        unlink(path)
    }
}

/// Page-aligned pages of a memfd mapping: the grant pages of the test.
private final class PagePool {
    let memfd: FileDescriptor
    let mapping: SharedMapping
    let count: Int

    init(pages: Int) throws {
        count = pages
        memfd = try MemFD.create(name: "blockio-pages", size: pages * pageSize)
        mapping = try SharedMapping(memfd, length: pages * pageSize)
    }

    func page(_ i: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: mapping.base + i * pageSize, count: pageSize)
    }

    /// A blkif segment: sectors first...last of page `i`.
    func segment(_ i: Int, first: Int, last: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: mapping.base + i * pageSize + first * sector, count: (last - first + 1) * sector)
    }

    deinit { memfd.close() }
}


/// FNV-1a 64.
private func checksum<C: Collection>(_ bytes: C) -> UInt64 where C.Element == UInt8 {
    var h: UInt64 = 0xcbf29ce484222325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100000001b3 }
    return h
}

/// io_uring with IORING_OP_FUTEX_WAIT (Linux 6.7): what blkback's owned queues need.
private let futexWaitAllowed = ioUringAllowed && ((try? IOUring(entries: 2))?.supportsFutexWait ?? false)

private func makeEngine(_ kind: String, disk: FileDescriptor, depth: Int = 32) -> BlockIOEngine {
    if kind == "owned" {
        // blkback's owned queue: one thread (this one) submits, reaps and waits.
        let engine = try! IOUringBlockIOEngine(disk: disk, queueDepth: depth, owned: true)
        try! engine.adopt()
        return engine
    }
    var logs: [String] = []
    let engine = BlockIO.makeEngine(disk: disk, queueDepth: depth,
                                    settings: kind == "threads" ? forceThreads : BlockIOSettings()) { logs.append($0) }
    #expect(engine.name == kind)
    #expect(logs.count == 1, "logs once which engine and why: \(logs)")
    if kind == "threads" { #expect(logs.first?.contains(BlockIO.forceNoIOUringVariable) == true) }
    return engine
}

/// Waits (through the completion eventfd, as an epoll loop would) and reaps.
private func pollAndReap(_ engine: BlockIOEngine, timeoutMs: Int32 = 10_000) -> [BlockIOCompletion] {
    var p = pollfd(fd: engine.completionFD.rawValue, events: Int16(POLLIN), revents: 0)
    let rc = poll(&p, 1, timeoutMs)
    #expect(rc == 1, "completion eventfd readable")
    return engine.reap(wait: false)
}

/// Submits `requests` and waits for all their completions.
private func run(_ engine: BlockIOEngine, _ requests: [BlockIORequest]) throws -> [UInt64: Result<Int, Errno>] {
    try engine.submit(requests)
    var out: [UInt64: Result<Int, Errno>] = [:]
    while out.count < requests.count {
        let got = engine.reap(wait: true)
        if got.isEmpty { break }
        for c in got { out[c.tag] = c.result }
    }
    return out
}

private func taskNames() -> [String] {
    guard let dir = opendir("/proc/self/task") else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let ent = readdir(dir) {
        let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard Int32(name) != nil else { continue }
        let comm = (try? FileIO.readString("/proc/self/task/\(name)/comm")) ?? ""
        names.append(comm.trimmingSuffixNewline)
    }
    return names
}

private extension String {
    var trimmingSuffixNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

/// Threads that belong to block I/O engines: the pool's workers and io_uring's io-wq workers.
private func engineThreads() -> (pool: Int, ioWorkers: Int) {
    let names = taskNames()
    return (names.filter { $0.hasPrefix("pv-blkio") }.count, names.filter { $0.hasPrefix("iou-") }.count)
}

/// Polls `condition` for up to `seconds` (io_uring's io-wq workers leave shortly after the ring).
private func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
    while MonotonicClock.nanoseconds() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

@Suite(.serialized) struct BlockIOTests {
    // MARK: random concurrent I/O with read-back

    @Test func threadsRandomWritesReadBack() throws { try randomWritesReadBack("threads") }

    @Test(.enabled(if: ioUringAllowed, "io_uring refused on this host (IOUring.probe): only the thread pool is tested"))
    func ioUringRandomWritesReadBack() throws { try randomWritesReadBack("io_uring") }

    @Test(.enabled(if: futexWaitAllowed, "no IORING_OP_FUTEX_WAIT here: blkback keeps its event dispatcher"))
    func ownedRingRandomWritesReadBack() throws { try randomWritesReadBack("owned") }

    /// blkback's persistent pages registered with the ring: transfers name the registered buffer
    /// (READ_FIXED for one page, READV_FIXED for several where the kernel has it), the data is
    /// the same, and one whose buffers lie outside the registered one still completes.
    @Test(.enabled(if: futexWaitAllowed, "no IORING_OP_FUTEX_WAIT here: blkback keeps its event dispatcher"))
    func registeredBuffersRandomWritesReadBack() throws { try randomWritesReadBack("owned-fixed") }

    /// blkback's owned queue sleeps in one io_uring_enter on its I/O, the domain's doorbell (a
    /// shared futex word another process increments and wakes) and its kick eventfd.
    @Test(.enabled(if: futexWaitAllowed, "no IORING_OP_FUTEX_WAIT here: blkback keeps its event dispatcher"))
    func ownedRingWakesOnTheDoorbellTheKickAndItsIO() throws {
        let disk = try TempDisk(size: 1 << 20, fill: 0x11)
        defer { disk.remove() }
        let engine = makeEngine("owned", disk: disk.fd, depth: 8) as! IOUringBlockIOEngine
        defer { engine.close() }
        let shared = try #require(mmap(nil, pageSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
        defer { munmap(shared, pageSize) }
        let word = shared.assumingMemoryBound(to: UInt32.self)
        func elapsedMs(_ body: () -> Void) -> Double {
            let t0 = MonotonicClock.nanoseconds()
            body()
            return Double(MonotonicClock.nanoseconds() - t0) / 1e6
        }
        // The word moved since it was read: the wait completes at once (no lost wake-up).
        engine.armDoorbell(word, expected: 7)
        #expect(elapsedMs { engine.waitForEvent(timeoutNs: 5_000_000_000) } < 2000)
        _ = engine.reap(wait: false)
        #expect(engine.doorbellRang && !engine.doorbellArmed)
        engine.doorbellRang = false
        // Unchanged: it sleeps until another thread rings (increment, then wake), as a frontend does.
        engine.armDoorbell(word, expected: 0)
        var waker = pthread_t()
        pthread_create(&waker, nil, { arg in
            let w = arg!.assumingMemoryBound(to: UInt32.self)
            usleep(100_000)
            SharedAtomic.fetchAdd(w, 1)
            _ = try? Futex.wake(w, count: Int32.max)
            return nil
        }, shared)
        let slept = elapsedMs {
            while !engine.doorbellRang {
                engine.waitForEvent(timeoutNs: 5_000_000_000)
                _ = engine.reap(wait: false)
            }
        }
        pthread_join(waker, nil)
        #expect(slept >= 50, "slept \(slept) ms before the wake")
        #expect(slept < 4000, "woken by the futex, not the timeout: \(slept) ms")
        // A timeout with nothing armed but the kick: returns, nothing rang.
        let kick = try FileDescriptor.eventfd()
        defer { kick.close() }
        engine.doorbellRang = false
        engine.armKick(kick)
        let idle = elapsedMs { engine.waitForEvent(timeoutNs: 50_000_000) }
        _ = engine.reap(wait: false)
        #expect(idle >= 40 && !engine.kicked && !engine.doorbellRang)
        // The kick: readable eventfd, poll completes.
        var one: UInt64 = 1
        _ = Glibc.write(kick.rawValue, &one, 8)
        engine.waitForEvent(timeoutNs: 5_000_000_000)
        _ = engine.reap(wait: false)
        #expect(engine.kicked && !engine.kickArmed)
        // I/O completes while a doorbell wait stays armed, and is what wakes the wait.
        engine.armDoorbell(word, expected: SharedAtomic.load(word))
        let pages = try PagePool(pages: 1)
        try engine.submit([.read(offset: 4096, into: [pages.page(0)], tag: 42)])
        var got: [BlockIOCompletion] = []
        while got.isEmpty {
            engine.waitForEvent(timeoutNs: 5_000_000_000)
            got = engine.reap(wait: false)
        }
        #expect(got == [BlockIOCompletion(tag: 42, result: .success(4096))])
        #expect(pages.page(0).allSatisfy { $0 == 0x11 })
        #expect(engine.doorbellArmed, "the doorbell wait is still pending")
    }

    /// Up to 48 requests in flight on a depth-32 engine (so some wait inside it), each 1…11 blkif
    /// segments (page, first_sect…last_sect) contiguous on disk, never overlapping one in flight;
    /// then random reads checked on completion, then the whole disk read back by the engine and by
    /// pread and compared by checksum with the model.
    func randomWritesReadBack(_ kind: String) throws {
        let diskSize = 8 << 20
        let disk = try TempDisk(size: diskSize, fill: 0xa5)
        defer { disk.remove() }
        let fixed = kind == "owned-fixed"
        let engine = makeEngine(fixed ? "owned" : kind, disk: disk.fd)
        defer { engine.close() }
        let slotsInFlight = 48, segsMax = 11
        let pages = try PagePool(pages: slotsInFlight * segsMax)
        if fixed {
            // The last slot's pages stay outside the registered buffer.
            let uring = try #require(engine as? IOUringBlockIOEngine)
            try uring.setFixedBuffer(0, UnsafeMutableRawBufferPointer(start: pages.mapping.base, count: (slotsInFlight - 1) * segsMax * pageSize))
        }
        var model = [UInt8](repeating: 0xa5, count: diskSize)
        var rng = Rng(kind == "threads" ? 0x5eed : 0xfeed)

        struct Flight { var offset: Int; var length: Int; var iov: [UnsafeMutableRawBufferPointer]; var write: Bool }
        var inFlight: [Int: Flight] = [:]  // slot → request (tag == slot)
        var expectedFixed = 0  // requests inside the registered buffer that the kernel can take as fixed
        var freeSlots = Array(0..<slotsInFlight)

        func makeRequest(slot: Int, write: Bool) -> (BlockIORequest, Flight) {
            let nseg = 1 + rng.below(segsMax)
            var iov: [UnsafeMutableRawBufferPointer] = []
            var length = 0
            for s in 0..<nseg {
                // Mostly full pages (as Linux blkfront sends), sometimes sector slices.
                let full = rng.below(3) != 0
                let first = full ? 0 : rng.below(8)
                let last = full ? 7 : first + rng.below(8 - first)
                let seg = pages.segment(slot * segsMax + s, first: first, last: last)
                iov.append(seg)
                length += seg.count
            }
            var offset = 0
            repeat {
                offset = rng.below((diskSize - length) / sector + 1) * sector
            } while inFlight.values.contains { $0.offset < offset + length && offset < $0.offset + $0.length }
            if write {
                for seg in iov { rng.fill(seg) }
                var at = offset
                for seg in iov {
                    model.withUnsafeMutableBytes { m in _ = memcpy(m.baseAddress! + at, seg.baseAddress!, seg.count) }
                    at += seg.count
                }
            }
            let registered = fixed ? 0 : nil
            if fixed && slot < slotsInFlight - 1 && (iov.count == 1 || (engine as! IOUringBlockIOEngine).vectoredFixed) { expectedFixed += 1 }
            let r: BlockIORequest = write
                ? .write(offset: UInt64(offset), from: iov, tag: UInt64(slot), fixedBuffer: registered)
                : .read(offset: UInt64(offset), into: iov, tag: UInt64(slot), fixedBuffer: registered)
            #expect(r.length == UInt64(length))
            return (r, Flight(offset: offset, length: length, iov: iov, write: write))
        }

        func phase(count: Int, writes: Bool) throws {
            var issued = 0, done = 0, viaPoll = 0
            while done < count {
                var batch: [BlockIORequest] = []
                let burst = 1 + rng.below(16)
                while issued < count, batch.count < burst, let slot = freeSlots.popLast() {
                    let (r, f) = makeRequest(slot: slot, write: writes)
                    inFlight[slot] = f
                    batch.append(r)
                    issued += 1
                }
                if !batch.isEmpty { try engine.submit(batch) }
                let got: [BlockIOCompletion]
                if rng.below(2) == 0, !kind.hasPrefix("owned") {  // an owned ring has no completion eventfd
                    got = pollAndReap(engine)
                    viaPoll += 1
                } else {
                    got = engine.reap(wait: true)
                }
                for c in got {
                    let slot = Int(c.tag)
                    let removed = inFlight.removeValue(forKey: slot)
                    let f = try #require(removed, "completion for a request in flight")
                    #expect(c.result == .success(f.length), "\(f.write ? "write" : "read") \(f.length) at \(f.offset)")
                    if !f.write {
                        var at = f.offset
                        for seg in f.iov {
                            let same = model.withUnsafeBytes { memcmp($0.baseAddress! + at, seg.baseAddress!, seg.count) == 0 }
                            #expect(same, "read at \(at) returns what was written")
                            at += seg.count
                        }
                    }
                    freeSlots.append(slot)
                    done += 1
                }
            }
            #expect(inFlight.isEmpty)
            #expect(viaPoll > 0 || kind.hasPrefix("owned"))
        }

        try phase(count: 1500, writes: true)
        try phase(count: 1000, writes: false)

        // Whole-disk read-back through the engine: 64 KiB requests of 16 pages, 32 at a time.
        var back = [UInt8](repeating: 0, count: diskSize)
        let chunk = 16 * pageSize
        var next = 0
        while next < diskSize {
            var batch: [BlockIORequest] = []
            var placed: [(Int, Int)] = []  // (offset, first page)
            for i in 0..<min(32, (diskSize - next) / chunk) {
                let iov = (0..<16).map { pages.page(i * 16 + $0) }
                batch.append(.read(offset: UInt64(next), into: iov, tag: UInt64(next)))
                placed.append((next, i * 16))
                next += chunk
            }
            let results = try run(engine, batch)
            for (off, firstPage) in placed {
                #expect(results[UInt64(off)] == .success(chunk))
                back.withUnsafeMutableBytes { b in _ = memcpy(b.baseAddress! + off, pages.page(firstPage).baseAddress!, chunk) }
            }
        }
        #expect(checksum(back) == checksum(model), "engine read-back matches what was written")
        #expect(checksum(disk.pread(diskSize, at: 0)) == checksum(model), "pread read-back matches")
        if fixed {
            let uring = engine as! IOUringBlockIOEngine
            #expect(expectedFixed > 500 && uring.fixedTransfers >= expectedFixed,
                    "\(uring.fixedTransfers) transfers on the registered buffer, \(expectedFixed) expected (READV_FIXED: \(uring.vectoredFixed))")
        }
    }

    // MARK: flush, discard, errors

    @Test func threadsFlushDiscardAndErrors() throws { try flushDiscardAndErrors("threads") }

    @Test(.enabled(if: ioUringAllowed, "io_uring refused on this host (IOUring.probe): only the thread pool is tested"))
    func ioUringFlushDiscardAndErrors() throws { try flushDiscardAndErrors("io_uring") }

    func flushDiscardAndErrors(_ kind: String) throws {
        let size = 4 << 20
        let disk = try TempDisk(size: size, fill: 0x77)
        defer { disk.remove() }
        let engine = makeEngine(kind, disk: disk.fd)
        defer { engine.close() }
        let pages = try PagePool(pages: 32)

        // Flush, alone and after writes.
        memset(pages.page(0).baseAddress!, 0x11, pageSize)
        var r = try run(engine, [.write(offset: 0, from: [pages.page(0)], tag: 1)])
        #expect(r[1] == .success(pageSize))
        r = try run(engine, [.flush(tag: 2)])
        #expect(r[2] == .success(0))
        r = try run(engine, [.flush(tag: 3), .flush(tag: 4)])
        #expect(r[3] == .success(0) && r[4] == .success(0))

        // Discard punches: 1 MiB at 1 MiB (st_blocks drops by it), size kept, reads back zeros.
        let before = disk.allocatedBlocks
        r = try run(engine, [.discard(offset: 1 << 20, length: 1 << 20, tag: 5)])
        #expect(r[5] == .success(1 << 20))
        let after = disk.allocatedBlocks
        #expect(before - after >= (1 << 20) / 512, "st_blocks \(before) → \(after)")
        #expect(disk.size == size, "KEEP_SIZE")
        for p in 0..<16 { memset(pages.page(p).baseAddress!, 0xff, pageSize) }
        r = try run(engine, [.read(offset: 1 << 20, into: (0..<16).map { pages.page($0) }, tag: 6)])
        #expect(r[6] == .success(16 * pageSize))
        #expect(pages.mapping.bytes[0..<(16 * pageSize)].allSatisfy { $0 == 0 }, "a discarded range reads as zeros")
        #expect(disk.pread(1, at: (1 << 20) - 1) == [0x77] && disk.pread(1, at: 2 << 20) == [0x77], "neighbours kept")
        r = try run(engine, [.discard(offset: 0, length: 0, tag: 7)])
        #expect(r[7] == .success(0), "an empty discard is a no-op")

        // Reads past the end of the file fail (EIO), including one that starts inside it (short
        // read, then the rest hits end of file): blkif needs every byte.
        let twoPages = [pages.page(0), pages.page(1)]
        r = try run(engine, [
            .read(offset: UInt64(size - pageSize), into: twoPages, tag: 10),
            .read(offset: UInt64(size), into: [pages.page(2)], tag: 11),
            .read(offset: UInt64(size) + (1 << 30), into: [pages.page(3)], tag: 12),
            .read(offset: UInt64(size - 2 * pageSize), into: [pages.page(4), pages.page(5)], tag: 13),
        ])
        #expect(r[10] == .failure(Errno(rawValue: EIO)))
        #expect(r[11] == .failure(Errno(rawValue: EIO)))
        #expect(r[12] == .failure(Errno(rawValue: EIO)))
        #expect(r[13] == .success(2 * pageSize), "a read ending exactly at the end succeeds")

        // Malformed requests complete with EINVAL (and still wake the eventfd).
        try engine.submit([
            BlockIORequest(op: .read, offset: 0, iov: [], tag: 20),
            BlockIORequest(op: .write, offset: UInt64(Int64.max), iov: [pages.page(0)], tag: 21),
            BlockIORequest(op: .discard, offset: UInt64.max - 10, length: 100, tag: 22),
            BlockIORequest(op: .write, offset: 0, iov: Array(repeating: pages.segment(0, first: 0, last: 0), count: 1025), tag: 23),
        ])
        var bad: [UInt64: Result<Int, Errno>] = [:]
        while bad.count < 4 { for c in pollAndReap(engine) { bad[c.tag] = c.result } }
        for t in 20...23 { #expect(bad[UInt64(t)] == .failure(.invalidArgument), "tag \(t)") }

        // Nothing in flight: a waiting reap returns at once.
        #expect(engine.reap(wait: true).isEmpty)

        // Errors from the kernel are reported: a write on a read-only descriptor.
        let ro = try FileDescriptor.open(disk.path, O_RDONLY)
        defer { ro.close() }
        let roEngine = makeEngine(kind, disk: ro)
        defer { roEngine.close() }
        r = try run(roEngine, [.write(offset: 0, from: [pages.page(0)], tag: 30), .read(offset: 0, into: [pages.page(1)], tag: 31)])
        #expect(r[30] == .failure(.badFileDescriptor))
        #expect(r[31] == .success(pageSize))
    }

    // MARK: close

    @Test func threadsCloseLeavesNothing() throws { try closeLeavesNothing("threads") }

    @Test(.enabled(if: ioUringAllowed, "io_uring refused on this host (IOUring.probe): only the thread pool is tested"))
    func ioUringCloseLeavesNothing() throws { try closeLeavesNothing("io_uring") }

    func closeLeavesNothing(_ kind: String) throws {
        let disk = try TempDisk(size: 16 << 20, fill: 0x3c)
        defer { disk.remove() }
        let pages = try PagePool(pages: 256)
        // The engines' own descriptors (their rings, and their copies of the image): counted so, since
        // other suites run in this process at the same time and open descriptors of their own.
        func engineFDs() -> Int {
            guard let dir = opendir("/proc/self/fd") else { return 0 }
            defer { closedir(dir) }
            var n = 0
            var link = [CChar](repeating: 0, count: 256)
            while let ent = readdir(dir) {
                let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard Int32(name) != nil else { continue }
                let len = readlink("/proc/self/fd/" + name, &link, link.count - 1)
                guard len > 0 else { continue }
                let target = String(decoding: link[0..<len].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if target == "anon_inode:[io_uring]" || target == disk.path { n += 1 }
            }
            return n
        }
        let fdsBefore = engineFDs()
        let threadsBefore = engineThreads()

        // Used, then closed idle.
        do {
            let engine = makeEngine(kind, disk: disk.fd)
            if kind == "threads" { #expect(eventually { engineThreads().pool == threadsBefore.pool + BlockIO.poolThreads }) }
            let r = try run(engine, (0..<64).map { i in
                i % 2 == 0 ? .write(offset: UInt64(i * pageSize), from: [pages.page(i)], tag: UInt64(i))
                           : .read(offset: UInt64(i * pageSize), into: [pages.page(i)], tag: UInt64(i))
            } + [.flush(tag: 100), .discard(offset: 8 << 20, length: 1 << 20, tag: 101)])
            #expect(r.count == 66)
            engine.close()
            engine.close()  // idempotent
            #expect(throws: SystemError.self) { try engine.submit([.flush(tag: 1)]) }
            #expect(engine.reap(wait: true).isEmpty)
        }
        // Closed with requests queued and in flight: close waits for those started, drops the
        // rest, and leaves the buffers alone once it returns. O_DIRECT, so that the reads are
        // still at the device when close is called (from the page cache they finish at submit).
        do {
            let direct = try FileDescriptor.open(disk.path, O_RDWR | oDirect)
            defer { direct.close() }
            let engine = makeEngine(kind, disk: direct, depth: 8)
            try engine.submit((0..<200).map { i in
                .read(offset: UInt64(i % 4096) * UInt64(pageSize), into: [pages.page(i % 256)], tag: UInt64(i))
            })
            engine.close()
            memset(pages.mapping.base, 0xee, 256 * pageSize)
            usleep(50_000)
            #expect(pages.mapping.bytes.allSatisfy { $0 == 0xee }, "no read lands after close")
        }
        #expect(eventually { engineThreads().pool == threadsBefore.pool }, "pool threads joined: \(taskNames())")
        #expect(eventually { engineThreads().ioWorkers <= threadsBefore.ioWorkers }, "io_uring workers gone: \(taskNames())")
        #expect(eventually { engineFDs() <= fdsBefore },
                "io_uring and image descriptors: \(fdsBefore) before, \(engineFDs()) after")
    }

    /// Choosing: io_uring unless forced off; the forced fallback says why.
    @Test func choiceFollowsTheSettings() throws {
        let disk = try TempDisk(size: 1 << 16)
        defer { disk.remove() }
        var logs: [String] = []
        let forced = BlockIO.makeEngine(disk: disk.fd, queueDepth: 4, settings: forceThreads) { logs.append($0) }
        defer { forced.close() }
        #expect(forced.name == "threads")
        #expect(logs.count == 1 && logs[0].contains("PROCVISOR_FORCE_NO_IOURING=1"), "\(logs)")
        logs = []
        let chosen = BlockIO.makeEngine(disk: disk.fd, queueDepth: 4, settings: BlockIOSettings()) { logs.append($0) }
        defer { chosen.close() }
        #expect(chosen.name == (ioUringAllowed ? "io_uring" : "threads"), "\(logs)")
        #expect(logs.count == 1)
    }

    /// Short transfers move the owned iovec copy on, across segment boundaries.
    @Test func shortTransfersAdvanceTheIovecs() throws {
        let pages = try PagePool(pages: 3)
        let iov = [pages.segment(0, first: 7, last: 7), pages.page(1), pages.segment(2, first: 0, last: 1)]
        guard case .transfer(var t) = BlockTransfer.make(.read(offset: 4096, into: iov, tag: 9)) else {
            Issue.record("read not accepted"); return
        }
        defer { t.release() }
        #expect(t.total == 512 + 4096 + 1024)
        t.advance(by: 700)
        #expect(t.first == 1 && t.done == 700 && t.offset == 4096 + 700)
        #expect(t.iov![1].iov_base == UnsafeMutableRawPointer(pages.page(1).baseAddress! + 188))
        #expect(t.iov![1].iov_len == 4096 - 188 && t.remainingIovecs == 2)
        t.advance(by: 4096 - 188)
        #expect(t.first == 2 && t.iov![2].iov_len == 1024)
        t.advance(by: 1024)
        #expect(t.finished && t.first == 3)
    }

    // MARK: measurement (not a pass/fail): PROCVISOR_BLOCKIO_BENCH=1

    @Test(.enabled(if: Process.environment()["PROCVISOR_BLOCKIO_BENCH"] == "1", "set PROCVISOR_BLOCKIO_BENCH=1 to measure"))
    func randomRead4KDepth32() throws {
        let size = 256 << 20
        for direct in [false, true] {
            let disk = try TempDisk(size: size, fill: 0x5a, flags: direct ? oDirect : 0)
            defer { disk.remove() }
            for kind in ["threads", "io_uring"] where kind == "threads" || ioUringAllowed {
                let engine = makeEngine(kind, disk: disk.fd)
                defer { engine.close() }
                let pages = try PagePool(pages: 32)
                var rng = Rng(42)
                let total = direct ? 100_000 : 400_000
                var issued = 0, done = 0
                var free = Array(0..<32)
                var latencies: [UInt64] = []
                latencies.reserveCapacity(total)
                var started = [UInt64](repeating: 0, count: 32)
                let t0 = MonotonicClock.nanoseconds()
                while done < total {
                    var batch: [BlockIORequest] = []
                    let now = MonotonicClock.nanoseconds()
                    while issued < total, let slot = free.popLast() {
                        batch.append(.read(offset: UInt64(rng.below(size / pageSize) * pageSize), into: [pages.page(slot)], tag: UInt64(slot)))
                        started[slot] = now
                        issued += 1
                    }
                    if !batch.isEmpty { try engine.submit(batch) }
                    let got = engine.reap(wait: true)
                    let end = MonotonicClock.nanoseconds()
                    for c in got {
                        precondition(c.result == Result<Int, Errno>.success(pageSize), "\(c)")
                        free.append(Int(c.tag))
                        latencies.append(end - started[Int(c.tag)])
                        done += 1
                    }
                }
                let secs = Double(MonotonicClock.nanoseconds() - t0) / 1e9
                latencies.sort()
                let p50 = Double(latencies[latencies.count / 2]) / 1000
                let p99 = Double(latencies[latencies.count * 99 / 100]) / 1000
                print("blockio bench: \(kind) 4 KiB random read, depth 32, \(direct ? "O_DIRECT" : "buffered"), 256 MiB file: "
                      + "\(Int(Double(total) / secs)) IOPS, p50 \(p50) us, p99 \(p99) us (\(total) reads in \(secs) s)")
            }
        }
    }
}

/// blkback's layout exactly: every page a memfd of its own (as the supervisor's grantable pages
/// are), aliased one after another into an `AliasRegion`, registered as it grows (doubling), and
/// large requests of up to 64 segments whose first and last pages are partial, on O_DIRECT.
@Suite(.serialized) struct RegisteredAliasTests {
    @Test(.enabled(if: futexWaitAllowed, "no owned rings here"))
    func aliasedPagesRegisteredWhileGrowing() throws {
        let diskSize = 8 << 20
        let disk = try TempDisk(size: diskSize, fill: 0x5a, flags: oDirect)
        defer { disk.remove() }
        let engine = makeEngine("owned", disk: disk.fd, depth: 64) as! IOUringBlockIOEngine
        defer { engine.close() }
        let total = 16 * 64
        var fds: [FileDescriptor] = []
        var maps: [SharedMapping] = []
        defer { fds.forEach { $0.close() } }
        let region = try AliasRegion(capacity: total)
        defer { region.release() }
        var registered = 0
        var rng = Rng(0xa11a5)
        var model = [UInt8](repeating: 0x5a, count: diskSize)
        var round = 0
        while region.count < total || round < 40 {
            round += 1
            // The pool grows by a slot's worth of pages, registered as blkback does.
            if region.count < total {
                for _ in 0..<64 {
                    let fd = try MemFD.create(name: "alias-page", size: pageSize)
                    let m = try SharedMapping(fd, length: pageSize)
                    fds.append(fd); maps.append(m)
                    #expect(region.append(m.base) != nil)
                }
                if region.count >= 2 * registered {
                    try engine.setFixedBuffer(0, UnsafeMutableRawBufferPointer(start: region.base, count: region.count * pageSize))
                    registered = region.count
                }
            }
            // 16 requests at once, each on its own 64-page stretch of the registered part.
            let slots = registered / 64
            var batch: [BlockIORequest] = []
            var flights: [(write: Bool, offset: Int, iov: [UnsafeMutableRawBufferPointer])] = []
            var used: [(Int, Int)] = []
            let write = round % 2 == 1
            for k in 0..<min(16, slots) {
                let nseg = 1 + rng.below(64)
                var iov: [UnsafeMutableRawBufferPointer] = []
                for s in 0..<nseg {
                    let first = s == 0 ? rng.below(8) : 0
                    let last = s == nseg - 1 ? first + rng.below(8 - first) : 7
                    iov.append(UnsafeMutableRawBufferPointer(start: region.address(k * 64 + s) + first * sector, count: (last - first + 1) * sector))
                }
                let length = iov.reduce(0) { $0 + $1.count }
                var offset = 0
                repeat { offset = rng.below((diskSize - length) / sector + 1) * sector } while used.contains { $0.0 < offset + length && offset < $0.1 }
                used.append((offset, offset + length))
                if write {
                    var at = offset
                    for b in iov {
                        rng.fill(b)
                        model.withUnsafeMutableBytes { _ = memcpy($0.baseAddress! + at, b.baseAddress!, b.count) }
                        at += b.count
                    }
                }
                flights.append((write, offset, iov))
                batch.append(write ? .write(offset: UInt64(offset), from: iov, tag: UInt64(k), fixedBuffer: 0)
                                   : .read(offset: UInt64(offset), into: iov, tag: UInt64(k), fixedBuffer: 0))
            }
            let results = try run(engine, batch)
            for (k, f) in flights.enumerated() {
                #expect(results[UInt64(k)] == .success(f.iov.reduce(0) { $0 + $1.count }))
                guard !f.write else { continue }
                var at = f.offset
                for (i, b) in f.iov.enumerated() {
                    let same = model.withUnsafeBytes { memcmp($0.baseAddress! + at, b.baseAddress!, b.count) == 0 }
                    #expect(same, "round \(round) request \(k): segment \(i) at \(at)")
                    at += b.count
                }
            }
        }
        #expect(engine.fixedTransfers > 0)
        let buffered = try FileDescriptor.open(disk.path, O_RDONLY)
        defer { buffered.close() }
        var back = [UInt8](repeating: 0, count: diskSize)
        #expect(back.withUnsafeMutableBytes { Glibc.pread(buffered.rawValue, $0.baseAddress, diskSize, 0) } == diskSize)
        #expect(checksum(back) == checksum(model), "the disk holds what was written")
    }
}

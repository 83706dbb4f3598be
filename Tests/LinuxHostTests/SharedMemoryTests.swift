import Glibc
import LinuxHost
import Testing

@Suite struct SharedMemoryTests {
    @Test func memfdMappingsShareAndHolesReturnMemory() throws {
        let fd = try MemFD.create(name: "test", size: 1 << 20)
        defer { fd.close() }
        let a = try SharedMapping(fd, length: 1 << 20)
        let b = try SharedMapping(fd, length: 1 << 20, writable: false)
        memset(a.base, 0x5a, 1 << 20)
        #expect(b.bytes[12345] == 0x5a)
        #expect(try MemFD.allocatedBytes(fd) >= 1 << 20)
        try MemFD.punchHole(fd, offset: 0, length: 1 << 19)
        #expect(try MemFD.allocatedBytes(fd) <= 1 << 19)
        #expect(b.bytes[0] == 0)  // a punched page reads as zero
    }

    /// Pages mapped one by one (as grants are) seen back to back: a multi-page ring.
    @Test func contiguousAliasShowsSeparatePagesBackToBack() throws {
        let fds = try (0..<4).map { try MemFD.create(name: "page\($0)", size: 4096) }
        defer { fds.forEach { $0.close() } }
        let pages = try fds.map { try SharedMapping($0, length: 4096) }
        for (i, p) in pages.enumerated() { memset(p.base, Int32(0x10 + i), 4096) }
        let view = try ContiguousAlias.make(pages.map(\.base))
        for i in 0..<4 {
            #expect(view.load(fromByteOffset: i * 4096 + 17, as: UInt8.self) == UInt8(0x10 + i))
        }
        // Writes through the view land in the pages, across the page boundaries.
        memset(view + 4090, 0xee, 12)
        #expect(pages[0].bytes[4095] == 0xee && pages[1].bytes[5] == 0xee && pages[1].bytes[6] == 0x11)
        ContiguousAlias.release(view, pages: 4)
        #expect(pages[3].bytes[0] == 0x13)  // the originals stay
    }

    @Test func futexWakesAWaiterInAnotherThread() throws {
        let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        defer { word.deallocate() }
        word.pointee = 0
        #expect(try Futex.wait(word, expected: 1, timeoutNs: 1_000_000) == .valueChanged)
        #expect(try Futex.wait(word, expected: 0, timeoutNs: 1_000_000) == .timedOut)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let w = arg!.assumingMemoryBound(to: UInt32.self)
            usleep(20_000)
            w.pointee = 1
            _ = try? Futex.wake(w)
            return nil
        }, word)
        let r = try Futex.wait(word, expected: 0, timeoutNs: 5_000_000_000)
        #expect(r == .woken || r == .valueChanged)
        pthread_join(tid, nil)
        #expect(word.pointee == 1)
        // futex_waitv sees a word that already changed.
        #expect(try Futex.waitAny([(word, 0)], timeoutNs: 1_000_000) == -1)
    }

    @Test func ioUringReadsAndWritesOrReportsWhyNot() throws {
        let fd = try MemFD.create(name: "uring", size: 4096)
        defer { fd.close() }
        if let refused = IOUring.probe() {
            // The fallback path's contract: the refusal is one a caller can recognise.
            #expect([Errno.notPermitted, .noSys].contains(refused))
            return
        }
        let ring = try IOUring(entries: 8)
        try ring.registerFiles([fd])  // every ring acts on registered files only (IORingPolicy)
        let data: [UInt8] = Array("procvisor".utf8)
        try data.withUnsafeBytes { try ring.write(.registered(0), from: $0, offset: 100, userData: 7) }
        try ring.submit()
        let w = try #require(try ring.complete())
        #expect(w.userData == 7 && w.result == Int32(data.count))
        var back = [UInt8](repeating: 0, count: data.count)
        try back.withUnsafeMutableBytes { try ring.read(.registered(0), into: $0, offset: 100, userData: 8) }
        try ring.submit()
        let r = try #require(try ring.complete())
        #expect(r.userData == 8 && r.result == Int32(data.count))
        #expect(back == data)
        #expect(IOUring.probe(environment: ["PROCVISOR_FORCE_NO_IOURING": "1"]) == .notPermitted)
    }
}

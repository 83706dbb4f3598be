import Glibc
import LinuxHost
import Testing

/// A fresh path under /tmp for one test (removed by `cleanUp`).
private func temporaryPath(_ name: String) -> String {
    "/tmp/procvisor-hostdoor-\(Process.pid)-\(name)-\(UInt32.random(in: 0...UInt32.max))"
}

/// Whether any page of [p, p + length) is mapped (mincore fails with ENOMEM on unmapped memory).
private func isMapped(_ p: UnsafeMutableRawPointer, _ length: Int) -> Bool {
    var vec = [UInt8](repeating: 0, count: (length + 4095) / 4096)
    return mincore(p, length, &vec) == 0
}

@Suite struct SharedMappingTests {
    @Test func mapsAMemFDSharedAndReadOnly() throws {
        let fd = try MemFD.create(name: "map", size: 8192)
        defer { fd.close() }
        let rw = try SharedMapping(fd, length: 8192, protection: .readWrite)
        let ro = try SharedMapping(fd, length: 8192, protection: .read)
        #expect(rw.length == 8192 && rw.isMapped)
        rw.bytes[5000] = 0x42
        #expect(ro.bytes[5000] == 0x42)  // one file: writes through one mapping show in the other
        // The static form owns nothing and allocates nothing; it sees the same file.
        let p = try SharedMapping.map(fd, length: 4096, offset: 4096, protection: .read).get()
        #expect(p.load(fromByteOffset: 5000 - 4096, as: UInt8.self) == 0x42)
        SharedMapping.unmap(p, length: 4096)
        #expect(!isMapped(p, 4096))
    }

    @Test func aPrivateMappingKeepsItsWritesToItself() throws {
        let fd = try MemFD.create(name: "private", size: 4096)
        defer { fd.close() }
        let shared = try SharedMapping(fd, length: 4096)
        let mine = try SharedMapping(fd, length: 4096, protection: .readWrite, sharing: .private)
        mine.bytes[0] = 7
        #expect(shared.bytes[0] == 0)
    }

    @Test func anonymousMemoryIsZeroFilledAndOwned() throws {
        let m = try SharedMapping(anonymous: 3 * 4096)
        #expect(m.bytes.allSatisfy { $0 == 0 })
        m.bytes[3 * 4096 - 1] = 1
        _ = m.adviseHugePages()  // a hint: refused on kernels without THP, and harmless either way
        let base = m.base
        #expect(isMapped(base, 3 * 4096))
        m.unmap()
        #expect(!m.isMapped && !isMapped(base, 3 * 4096))
        m.unmap()  // idempotent
    }

    @Test func replacesAPageInPlace() throws {
        let a = try MemFD.create(name: "old", size: 2 * 4096)
        let b = try MemFD.create(name: "new", size: 4096)
        defer { a.close(); b.close() }
        let m = try SharedMapping(a, length: 2 * 4096)
        m.bytes[0] = 1
        m.bytes[4096] = 2
        let fresh = try SharedMapping(b, length: 4096)
        fresh.bytes[0] = 9
        let base = m.base
        try m.replace(at: 4096, length: 4096, with: b)
        #expect(m.base == base && m.bytes[0] == 1 && m.bytes[4096] == 9)
        m.bytes[4097] = 10
        #expect(fresh.bytes[1] == 10)  // the page at that address is b's now
        let old = try SharedMapping(a, length: 2 * 4096, protection: .read)
        #expect(old.bytes[4096] == 2 && old.bytes[4097] == 0)  // a's page is untouched
        // The static form, over an address this test holds no object for.
        let c = try MemFD.create(name: "third", size: 4096)
        defer { c.close() }
        try SharedMapping.map(c, replacing: base, length: 4096).get()
        #expect(m.bytes[0] == 0)
    }

    @Test func aRefusedMappingNamesTheDescriptorAndTheErrno() throws {
        let (fd, readOnlyFD, _) = try MemFD.createReadOnlyShared(name: "refused", size: 4096)
        defer { fd.close(); readOnlyFD.close() }
        let e = try #require(throws: SystemError.self) { try SharedMapping(readOnlyFD, length: 4096, protection: .readWrite) }
        #expect(e.call == "mmap" && e.errno == .permissionDenied && e.context.contains("\(readOnlyFD)"))
        #expect(throws: Never.self) { try SharedMapping(readOnlyFD, length: 4096, protection: .read) }
        if case let .failure(errno) = SharedMapping.map(readOnlyFD, length: 4096) {
            #expect(errno == .permissionDenied)
        } else {
            Issue.record("a writable mapping of a read-only descriptor succeeded")
        }
    }
}

@Suite struct PollTests {
    @Test func reportsReadinessPerEntry() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        var poll = Poll()
        #expect(poll.add(r, .readable) == 0)
        #expect(poll.add(w, .writable) == 1)
        #expect(try poll.wait(timeoutMs: 1000) == 1)
        #expect(!poll.isReady(0) && poll.ready(1).contains(.writable))
        try w.writeAll("x")
        #expect(try poll.wait(timeoutMs: 1000) == 2)
        #expect(poll.ready(0).contains(.readable))
        poll.ignore(1)
        #expect(try poll.wait(timeoutMs: 1000) == 1)
        #expect(poll.isReady(0) && !poll.isReady(1))
    }

    @Test func timesOutWithNothingReady() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        let start = MonotonicClock.nanoseconds()
        #expect(try Poll.wait([(r, .readable)], timeoutMs: 60) == [[]])
        #expect(MonotonicClock.nanoseconds() - start >= 60_000_000)
        #expect(try Poll.wait([(r, .readable)], timeoutMs: 0) == [[]])
    }

    /// A handled signal ends poll(2) early with EINTR (whatever SA_RESTART says); the wait goes on
    /// for what is left of its timeout.
    @Test func aSignalDoesNotCutTheWaitShort() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        signal(SIGUSR1, { _ in })
        let waiter = pthread_self()
        let start = MonotonicClock.nanoseconds()
        let t = try PosixThread.start {
            PosixThread.sleep(microseconds: 30_000)
            pthread_kill(waiter, SIGUSR1)
        }
        defer { t.join() }
        #expect(try Poll.wait([(r, .readable)], timeoutMs: 200) == [[]])
        #expect(MonotonicClock.nanoseconds() - start >= 200_000_000)
    }

    /// `set` re-points an entry in place (-1 ignores it); `waitOnce` is one poll(2).
    @Test func waitOnceFollowsAnEntrySetInPlace() throws {
        let (r1, w1) = try FileDescriptor.pipe()
        let (r2, w2) = try FileDescriptor.pipe()
        defer { r1.close(); w1.close(); r2.close(); w2.close() }
        var poll = Poll([(r1, .readable), (FileDescriptor(rawValue: -1), .readable)])
        try w2.writeAll("x")
        #expect(poll.waitOnce(timeoutMs: 0) == .success(0))
        poll.set(1, r2)
        #expect(poll.waitOnce(timeoutMs: 1000) == .success(1))
        #expect(!poll.isReady(0) && poll.ready(1).contains(.readable))
        poll.set(1, FileDescriptor(rawValue: -1))
        #expect(!poll.isReady(1))
        #expect(poll.waitOnce(timeoutMs: 0) == .success(0))
        poll.set(1, w1, .writable)
        #expect(poll.waitOnce(timeoutMs: 1000) == .success(1))
        #expect(poll.ready(1).contains(.writable))
    }

    /// Unlike `wait`, `waitOnce` gives a handled signal back as `.interrupted`, with nothing ready.
    @Test func waitOnceReturnsAnInterruption() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        signal(SIGUSR1, { _ in })
        let lock = Lock()
        var waiter: pthread_t?
        var result: Result<Int, Errno>?
        var readyAfter = true
        let t = try PosixThread.start {
            // The test's own thread may block SIGUSR1 (dispatch's worker threads block most
            // signals, and a new thread inherits the mask): the waiting thread takes it.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGUSR1)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
            lock.withLock { waiter = pthread_self() }
            var poll = Poll([(r, .readable)])
            let got = poll.waitOnce(timeoutMs: 30_000)
            lock.withLock { (result, readyAfter) = (got, poll.isReady(0)) }
        }
        // Signals until the wait has returned, so one lands while it sleeps however late it starts.
        while true {
            PosixThread.sleep(microseconds: 20_000)
            let (thread, done) = lock.withLock { (waiter, result != nil) }
            if done { break }
            if let thread { pthread_kill(thread, SIGUSR1) }
        }
        t.join()
        #expect(result == .failure(.interrupted))
        #expect(!readyAfter)
    }

    @Test func reportsHangupAndClosedDescriptors() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close() }
        w.close()
        #expect(try Poll.wait([(r, .readable)], timeoutMs: 1000)[0].contains(.hangup))
        // A descriptor number nothing has open: POLLNVAL, not a failure of the whole call.
        #expect(try Poll.wait([(FileDescriptor(rawValue: 1_000_000), .readable)], timeoutMs: 0) == [.invalid])
    }
}

@Suite struct PositionalIOTests {
    @Test func readsAndWritesAtAnOffsetWithoutMovingIt() throws {
        let path = temporaryPath("pio")
        let fd = try FileDescriptor.open(path, [.readWrite, .create, .exclusive], mode: 0o600)
        defer { fd.close(); FileIO.unlink(path) }
        let data: [UInt8] = [1, 2, 3, 4, 5]
        #expect(try data.withUnsafeBytes { try fd.write(from: $0, at: 100) } == 5)
        var back = [UInt8](repeating: 0, count: 8)
        #expect(try back.withUnsafeMutableBytes { try fd.read(into: $0, at: 99) } == 6)
        #expect(back.prefix(6) == [0, 1, 2, 3, 4, 5])
        #expect(try back.withUnsafeMutableBytes { try fd.read(into: $0, at: 105) } == 0)  // end of file
        #expect(lseek(fd.rawValue, 0, SEEK_CUR) == 0)  // the offset never moved
        #expect(try fd.seekToEnd() == 105)
        try fd.syncData().get()
    }

    @Test func vectoredTransfersGatherAndScatter() throws {
        let path = temporaryPath("vio")
        let fd = try FileDescriptor.open(path, [.readWrite, .create, .exclusive], mode: 0o600)
        defer { fd.close(); FileIO.unlink(path) }
        var a: [UInt8] = [1, 2, 3], b: [UInt8] = [4, 5, 6, 7]
        let written = a.withUnsafeMutableBytes { pa in
            b.withUnsafeMutableBytes { pb in
                let v = [IOVector(iov_base: pa.baseAddress, iov_len: 3), IOVector(iov_base: pb.baseAddress, iov_len: 4)]
                return v.withUnsafeBufferPointer { fd.write(vector: $0.baseAddress!, count: 2, at: 10) }
            }
        }
        #expect(try written.get() == 7)
        var x = [UInt8](repeating: 0, count: 2), y = [UInt8](repeating: 0, count: 10)
        let read = x.withUnsafeMutableBytes { px in
            y.withUnsafeMutableBytes { py in
                let v = [IOVector(iov_base: px.baseAddress, iov_len: 2), IOVector(iov_base: py.baseAddress, iov_len: 10)]
                return v.withUnsafeBufferPointer { fd.read(vector: $0.baseAddress!, count: 2, at: 11) }
            }
        }
        #expect(try read.get() == 6)  // short: the file ends
        #expect(x == [2, 3] && Array(y.prefix(4)) == [4, 5, 6, 7])
    }

    @Test func failuresCarryTheErrnoAndTheDescriptor() throws {
        let path = temporaryPath("wo")
        let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
        defer { fd.close(); FileIO.unlink(path) }
        var buf = [UInt8](repeating: 0, count: 4)
        let e = try #require(throws: SystemError.self) { try buf.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) } }
        #expect(e.call == "pread" && e.errno == .badFileDescriptor && e.context.contains("\(fd)"))
        let v = buf.withUnsafeMutableBytes { p in
            [IOVector(iov_base: p.baseAddress, iov_len: 4)].withUnsafeBufferPointer { fd.read(vector: $0.baseAddress!, count: 1, at: 0) }
        }
        #expect(throws: Errno.badFileDescriptor) { try v.get() }
    }
}

@Suite struct FileStatusTests {
    @Test func ofAFileByPathAndByDescriptor() throws {
        let path = temporaryPath("stat")
        try FileIO.write(path, "hello", mode: 0o640)
        defer { FileIO.unlink(path) }
        _ = chmod(path, 0o640)  // whatever the umask took off
        let st = try FileStatus(path: path)
        #expect(st.size == 5 && st.isRegular && !st.isDirectory && !st.isBlockDevice)
        #expect(st.permissions == [.ownerRead, .ownerWrite, .groupRead])
        let fd = try FileDescriptor.open(path, .readOnly)
        defer { fd.close() }
        let byFD = try FileStatus(fd)
        #expect(byFD.device == st.device && byFD.inode == st.inode && byFD.size == 5)
    }

    @Test func ofADirectoryALinkAndADevice() throws {
        #expect(try FileStatus(path: "/tmp").isDirectory)
        #expect(try FileStatus(path: "/dev/null").isCharacterDevice)
        let target = temporaryPath("target"), link = temporaryPath("link")
        try FileIO.write(target, "x")
        defer { FileIO.unlink(target); FileIO.unlink(link) }
        #expect(symlink(target, link) == 0)
        #expect(try FileStatus(path: link).isRegular)
        #expect(try FileStatus(path: link, followSymlinks: false).isSymbolicLink)
    }

    @Test func ofAMissingPathNamesItWithENOENT() throws {
        let path = temporaryPath("missing")
        let e = try #require(throws: SystemError.self) { try FileStatus(path: path) }
        #expect(e.errno == .noSuchFile && e.call == "stat" && e.context == path)
        #expect(e.description.contains(path))
    }
}

@Suite struct SocketReceiveTests {
    @Test func receiveTellsDataWouldBlockAndEndOfStream() throws {
        let (a, b) = try UnixSocket.pair(type: UnixSocket.stream)
        defer { a.close() }
        var buf = [UInt8](repeating: 0, count: 16)
        let empty = buf.withUnsafeMutableBytes { a.receive(into: $0, dontWait: true) }
        #expect(throws: Errno.wouldBlock) { try empty.get() }
        let sent = Array("abc".utf8).withUnsafeBytes { b.send($0) }
        #expect(try sent.get() == 3)
        #expect(try buf.withUnsafeMutableBytes { a.receive(into: $0, dontWait: true) }.get() == 3)
        #expect(buf.prefix(3) == [0x61, 0x62, 0x63])
        b.close()
        #expect(try buf.withUnsafeMutableBytes { a.receive(into: $0, dontWait: true) }.get() == 0)  // end of stream
        #expect(try buf.withUnsafeMutableBytes { a.receive(into: $0) }.get() == 0)
        // Sending to a peer that has gone is EPIPE, not SIGPIPE.
        let gone = Array("x".utf8).withUnsafeBytes { a.send($0, dontWait: true) }
        #expect(throws: Errno.brokenPipe) { try gone.get() }
    }

    @Test func socketTypes() throws {
        let (a, b) = try UnixSocket.pair()
        defer { a.close(); b.close() }
        #expect(try UnixSocket.type(of: a) == UnixSocket.seqPacket)
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        #expect(throws: SystemError.self) { try UnixSocket.type(of: r) }
    }
}

@Suite struct EventFDTests {
    @Test func signalsFoldIntoOneConsume() throws {
        let e = try EventFD.create(nonBlocking: true)
        defer { e.fd.close() }
        #expect(e.consume() == nil)
        #expect(e.signal())
        #expect(e.signal(2))
        #expect(try Poll.wait([(e.fd, .readable)], timeoutMs: 0)[0].contains(.readable))
        #expect(e.consume() == 3)
        #expect(e.consume() == nil)
        #expect(EventFD(e.fd) == e)
    }
}

@Suite struct HostHelperTests {
    @Test func wallClockCalendarAndFormat() {
        #expect(WallClock.calendar(0) == WallClock.Calendar(year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0))
        #expect(WallClock.calendar(951_782_400 + 86_399).day == 29)  // 2000-02-29 23:59:59
        #expect(WallClock.format(1_700_000_000, "-%Y%m%dT%H%MZ") == "-20231114T2213Z")
        #expect(WallClock.now().seconds > 1_700_000_000)
    }

    @Test func processAndHostFacts() {
        #expect(Process.environment("PATH") != nil)
        #expect(Process.environment("PROCVISOR_SURELY_NOT_SET_\(Process.pid)") == nil)
        #expect(Process.currentDirectory?.hasPrefix("/") == true)
        #expect(Process.userID == getuid() && Process.effectiveUserID == geteuid() && Process.effectiveGroupID == getegid())
        #expect(Host.onlineCPUs >= 1)
        #expect(!Host.kernelIdentity().release.isEmpty)
    }

    @Test func errnoConstants() {
        #expect(Errno.ioError == Errno(rawValue: EIO) && Errno.busy == Errno(rawValue: EBUSY))
        #expect(Errno.ioError.description.contains("errno \(EIO)"))
    }

    /// A thread spinning with `yield` lets the one it waits for run (and `yield` itself returns).
    @Test func yieldLetsAnotherThreadRun() throws {
        let lock = Lock()
        var done = false
        let t = try PosixThread.start { lock.withLock { done = true } }
        while !lock.withLock({ done }) { PosixThread.yield() }
        t.join()
        #expect(lock.withLock { done })
    }

    @Test func threadsRunAndJoin() throws {
        let lock = Lock()
        var ran = 0
        let t = try PosixThread.start { lock.withLock { ran += 1 } }
        t.join()
        #expect(lock.withLock { ran } == 1)
    }

    @Test func aPipeIsNoTerminal() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        #expect(!TerminalMode.isTerminal(r))
        #expect(TerminalMode.makeRaw(r) == nil)
    }

    @Test func uncheckedWritesAndOpenFlags() throws {
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        w.writeUnchecked("procvisor: ünïcode\n")
        #expect(String(decoding: try r.read(upTo: 64), as: UTF8.self) == "procvisor: ünïcode\n")
        let path = temporaryPath("flags")
        try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600).close()
        defer { FileIO.unlink(path) }
        let e = try #require(throws: SystemError.self) { try FileDescriptor.open(path, [.writeOnly, .create, .exclusive]) }
        #expect(e.errno == .exists && e.context == path)
    }
}

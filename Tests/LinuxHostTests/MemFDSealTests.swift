import Glibc
import LinuxHost
import Testing

/// The seals every memfd handed to a domain carries (MemFD.create / createReadOnlyShared), and
/// why they are needed: a holder truncating a shared memfd makes every other process's access
/// past the new end raise SIGBUS.
/// 0, or the errno a LinuxHost wrapper threw.
private func errnoOf(_ body: () throws -> Void) -> Int32 {
    do { try body(); return 0 } catch let e as SystemError { return e.errno.rawValue } catch { return -1 }
}

@Suite struct MemFDSealTests {
    @Test func createdMemfdsCannotBeResizedByAnyDescriptor() throws {
        let fd = try MemFD.create(name: "sealed", size: 8192)
        defer { fd.close() }
        #expect(try MemFD.seals(fd) == MemFDSeals.handedOut)
        let m = try SharedMapping(fd, length: 8192)
        memset(m.base, 0x11, 8192)
        // A second descriptor for the same file, as a domain gets it.
        let other = try FileDescriptor.open("/proc/self/fd/\(fd.rawValue)", O_RDWR)
        defer { other.close() }
        for d in [fd, other] {
            #expect(errnoOf { try MemFD.resize(d, to: 0) } == EPERM)
            #expect(errnoOf { try MemFD.resize(d, to: 4096) } == EPERM)
            #expect(errnoOf { try MemFD.resize(d, to: 1 << 20) } == EPERM)
            #expect(errnoOf { try MemFD.allocate(d, offset: 8192, length: 4096) } == EPERM)  // grow by allocation
            #expect(errnoOf { try MemFD.allocate(d, offset: 0, length: 1 << 20) } == EPERM)
            // No seal can be added or taken off any more (F_SEAL_SEAL).
            #expect(errnoOf { try MemFD.addSeals(d, .futureWrite) } == EPERM)
        }
        var st = stat()
        fstat(fd.rawValue, &st)
        #expect(st.st_size == 8192)
        #expect(m.bytes[8191] == 0x11)  // the mapping is whole: no SIGBUS to be had
    }

    @Test func holesCanStillBePunchedInSealedMemory() throws {
        // decrease_reservation gives RAM back this way.
        let fd = try MemFD.create(name: "ram", size: 1 << 20)
        defer { fd.close() }
        let m = try SharedMapping(fd, length: 1 << 20)
        memset(m.base, 0x5a, 1 << 20)
        try MemFD.punchHole(fd, offset: 0, length: 1 << 19)
        #expect(try MemFD.allocatedBytes(fd) <= 1 << 19)
        #expect(m.bytes[0] == 0 && m.bytes[(1 << 19) + 1] == 0x5a)
    }

    @Test func readOnlySharedMemoryIsWritableOnlyThroughTheSupervisorsDescriptor() throws {
        let (fd, ro, m) = try MemFD.createReadOnlyShared(name: "p2m", size: 4096)
        defer { fd.close(); ro.close() }
        #expect(try MemFD.seals(fd) == MemFDSeals.handedOutReadOnly)
        m.base.storeBytes(of: UInt64(0xfeed), as: UInt64.self)  // the creator's mapping still writes
        let reader = try SharedMapping(ro, length: 4096, writable: false)
        #expect(reader.base.load(as: UInt64.self) == 0xfeed)
        // Not through the read-only descriptor a domain is given.
        let p = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro.rawValue, 0)
        #expect(p == MAP_FAILED)
        var byte: UInt8 = 1
        #expect(pwrite(ro.rawValue, &byte, 1, 0) < 0)
        // A read-only mapping cannot be upgraded later either.
        #expect(mprotect(reader.base, 4096, PROT_READ | PROT_WRITE) != 0)
        #expect(errnoOf { try MemFD.resize(fd, to: 0) } == EPERM)
        #expect(errnoOf { try MemFD.allocate(fd, offset: 0, length: 8192) } == EPERM)
        // The supervisor's writable descriptor maps it writable again (a live update's new binary does).
        let again = try SharedMapping(fd, length: 4096)
        again.base.storeBytes(of: UInt64(0xbeef), as: UInt64.self)
        #expect(reader.base.load(as: UInt64.self) == 0xbeef)
    }

    /// What the seals prevent: a child maps an unsealed memfd, truncates it and touches the page
    /// past the new end; it dies of SIGBUS. The same on a sealed one: the truncate fails and the
    /// read works.
    @Test func truncationUnderAMappingIsSIGBUSUnlessSealed() throws {
        func childTouchesAfterTruncate(_ fd: FileDescriptor) -> Int32 {
            guard let p = mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0), p != MAP_FAILED else { return -1 }
            defer { munmap(p, 8192) }
            let pid = fork()
            if pid == 0 {
                signal(SIGBUS, SIG_DFL)  // die of it plainly, without the runtime's backtracer
                _ = ftruncate(fd.rawValue, 0)
                let v = p.load(fromByteOffset: 4096, as: UInt8.self)
                _exit(Int32(v & 1))
            }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            return status & 0x7f  // WTERMSIG (0: exited)
        }
        let unsealed = try MemFD.createUnsealed(name: "unsealed", size: 8192)
        defer { unsealed.close() }
        #expect(childTouchesAfterTruncate(unsealed) == SIGBUS)
        let sealed = try MemFD.create(name: "sealed", size: 8192)
        defer { sealed.close() }
        #expect(childTouchesAfterTruncate(sealed) == 0)
    }
}

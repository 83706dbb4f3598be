import Glibc
@testable import LinuxHost
import Testing

/// io_uring opcodes and register codes from the kernel's uapi io_uring.h (the tests do not import
/// the C module; these numbers are ABI).
private enum Op {
    static let read: Int32 = 22, write: Int32 = 23, openat: Int32 = 18, socket: Int32 = 45, ftruncate: Int32 = 55
    static let futexWait: Int32 = 51, timeout: Int32 = 11
}
private enum Register {
    static let personality: Int32 = 9, enableRings: Int32 = 12
}
private let fixedFile: UInt32 = 1  // IOSQE_FIXED_FILE
private let atFDCWD: Int32 = -100


/// Where the kernel refuses io_uring altogether (kernel.io_uring_disabled, a seccomp policy, no
/// io_uring): the errno of that refusal. The tests then check the refusal is one the engines fall
/// back on (EPERM/ENOSYS: BlockIO's thread pool, netback's poll thread), which is what runs there.
private let refused: Errno? = {
    do {
        let ring = try IORingPolicy.create(IORingPolicy.Request(entries: 4))
        ring.fd.close()
        return nil
    } catch let e as SystemError {
        return e.errno
    } catch {
        return .noSys
    }
}()

/// Submits what is queued, waits for one completion and returns its result.
private func complete(_ ring: IOUring) throws -> Int32 {
    try ring.submit(waitingFor: 1)
    var result: Int32?
    ring.harvest(max: 1) { _, res in result = res }
    return try #require(result)
}

/// A ring made by exactly the restriction code driver domains' rings get (`IORingPolicy.create`), with `files`
/// registered and enabled.
private func supervisorRing(files: [FileDescriptor], entries: UInt32 = 8) throws -> IOUring {
    let made = try IORingPolicy.create(IORingPolicy.Request(entries: entries))
    let ring: IOUring
    do {
        ring = try IOUring(adopting: made.fd, params: made.params)
    } catch {
        made.fd.close()
        throw error
    }
    if !files.isEmpty { try ring.registerFiles(files) }
    try ring.enable()
    return ring
}

/// What the three escapes look like as SQEs; each returns the CQE result.
private struct Escapes {
    let path = strdup("/etc/hostname")!
    func openat(_ ring: IOUring, sqeFlags: UInt32) throws -> Int32 {
        try ring.prepareRaw(opcode: Op.openat, fd: atFDCWD, address: UInt64(UInt(bitPattern: path)), operationFlags: UInt32(O_RDONLY | O_CLOEXEC),
                            sqeFlags: sqeFlags, userData: 1)
        return try complete(ring)
    }
    func socket(_ ring: IOUring, sqeFlags: UInt32) throws -> Int32 {
        // io_uring_prep_socket's layout: fd = domain, off = type, len = protocol.
        try ring.prepareRaw(opcode: Op.socket, fd: AF_INET, offset: UInt64(SOCK_DGRAM.rawValue), sqeFlags: sqeFlags, userData: 2)
        return try complete(ring)
    }
    func ftruncate(_ ring: IOUring, fd: Int32, sqeFlags: UInt32, length: UInt64) throws -> Int32 {
        try ring.prepareRaw(opcode: Op.ftruncate, fd: fd, offset: length, sqeFlags: sqeFlags, userData: 3)
        return try complete(ring)
    }
}

@Suite struct IORingRestrictionTests {
    @Test func theEscapesAreRefusedAndRegisteredFilesWork() throws {
        if let refused {
            // io_uring refused here: the fallback's contract is that the refusal is recognisable,
            // from the policy's own creation as from every ring the engines make.
            #expect([Errno.notPermitted, .noSys].contains(refused), "\(refused)")
            #expect(throws: SystemError.self) { try IOUring(entries: 4) }
            #expect(throws: SystemError.self) { try IOUring.owned(entries: 4) }
            #expect(IOUring.probe(environment: [:]) == refused)
            return
        }
        // An unsealed file: the last check truncates it through an unrestricted ring (every memfd
        // MemFD makes is sealed against that).
        let file = try MemFD.createUnsealed(name: "uring-restrict", size: 4096)
        defer { file.close() }
        let ring = try supervisorRing(files: [file])
        let escapes = Escapes()
        defer { free(escapes.path) }

        // A read and a write on the registered file work.
        let data = Array("restricted".utf8)
        try data.withUnsafeBytes { try ring.write(.registered(0), from: $0, offset: 64, userData: 10) }
        #expect(try complete(ring) == Int32(data.count))
        var back = [UInt8](repeating: 0, count: data.count)
        try back.withUnsafeMutableBytes { try ring.read(.registered(0), into: $0, offset: 64, userData: 11) }
        #expect(try complete(ring) == Int32(data.count))
        #expect(back == data)

        // The escapes: refused by the restrictions, with and without IOSQE_FIXED_FILE.
        let eacces = -EACCES
        #expect(try escapes.openat(ring, sqeFlags: 0) == eacces)
        #expect(try escapes.openat(ring, sqeFlags: fixedFile) == eacces)
        #expect(try escapes.socket(ring, sqeFlags: 0) == eacces)
        #expect(try escapes.socket(ring, sqeFlags: fixedFile) == eacces)
        // On the registered file itself: the opcode alone is refused.
        #expect(try escapes.ftruncate(ring, fd: 0, sqeFlags: fixedFile, length: 0) == eacces)
        #expect(try escapes.ftruncate(ring, fd: file.rawValue, sqeFlags: 0, length: 0) == eacces)
        // An allowed operation on a descriptor the process holds but did not register.
        try back.withUnsafeMutableBytes { try ring.read(.descriptor(file), into: $0, offset: 64, userData: 12) }
        #expect(try complete(ring) == eacces)
        // The file was not truncated (the data is still there, through an ordinary pread).
        var st = stat()
        #expect(fstat(file.rawValue, &st) == 0 && st.st_size == 4096)

        // The same SQEs where nothing restricts them do what they say: the refusals above are
        // the restrictions', not malformed entries.
        let open = try IOUring(unrestrictedForTesting: 8)
        let o = try escapes.openat(open, sqeFlags: 0)
        #expect(o >= 0, "openat on an unrestricted ring: \(o)")
        if o >= 0 { Glibc.close(o) }
        let s = try escapes.socket(open, sqeFlags: 0)
        #expect(s >= 0 || s == -EINVAL, "socket on an unrestricted ring: \(s)")  // EINVAL: before Linux 5.19
        if s >= 0 { Glibc.close(s) }
        let t = try escapes.ftruncate(open, fd: file.rawValue, sqeFlags: 0, length: 8192)
        #expect(t == 0 || t == -EINVAL, "ftruncate on an unrestricted ring: \(t)")  // EINVAL: before Linux 6.9
        if t == 0 { #expect(fstat(file.rawValue, &st) == 0 && st.st_size == 8192) }
    }

    @Test func restrictionsCannotBeLoosenedOrReenabled() throws {
        if let refused {
            #expect([Errno.notPermitted, .noSys].contains(refused), "io_uring refused here: \(refused)")
            return
        }
        let made = try IORingPolicy.create(IORingPolicy.Request(entries: 4))
        let ring: IOUring
        do { ring = try IOUring(adopting: made.fd, params: made.params) } catch { made.fd.close(); throw error }
        // Disabled: a second set of restrictions (any set, even an empty one) is refused.
        #expect(throws: SystemError.self) { try IORingPolicy.restrict(ring.descriptor) }
        do {
            try IORingPolicy.restrict(ring.descriptor)
        } catch let e as SystemError {
            #expect(e.errno == Errno(rawValue: EBUSY), "\(e)")
        }
        try ring.enable()
        // Enabled: registering restrictions, enabling again, or any registration outside the
        // policy is refused by the kernel's check of register opcodes.
        do {
            try IORingPolicy.restrict(ring.descriptor)
            Issue.record("restrictions registered twice")
        } catch let e as SystemError {
            // The probe the restriction code starts with is allowed; the registration is not.
            #expect(e.errno == .permissionDenied, "\(e)")
        }
        #expect(ring.registerWithoutArgument(Register.enableRings) == .failure(.permissionDenied))
        #expect(ring.registerWithoutArgument(Register.personality) == .failure(.permissionDenied))
        // And nothing changed: the escapes are still refused.
        let escapes = Escapes()
        defer { free(escapes.path) }
        #expect(try escapes.openat(ring, sqeFlags: 0) == -EACCES)
    }

    /// SINGLE_ISSUER with R_DISABLED: the submitter is the thread that enables the ring, not the
    /// one that created it (the supervisor, once it makes the rings). Registrations before enabling work
    /// from any thread; afterwards only from the submitter.
    @Test func theEnablingThreadBecomesTheSubmitter() throws {
        if let refused {
            #expect([Errno.notPermitted, .noSys].contains(refused), "io_uring refused here: \(refused)")
            return
        }
        let ring = try IOUring.owned(entries: 8)
        guard ring.isSingleIssuer else { return }  // before Linux 6.1: COOP_TASKRUN, any thread submits
        // PROBE without its argument: the kernel answers EINVAL, not EEXIST: before enabling, any
        // thread may register (the ring's maker, or the domain's setup thread).
        #expect(ring.registerWithoutArgument(8 /* PROBE */) == .failure(.invalidArgument))
        final class Box: @unchecked Sendable {
            let ring: IOUring
            var enableError: Error?
            var probeFromOwner: Result<Int32, Errno>?
            init(_ ring: IOUring) { self.ring = ring }
        }
        let box = Box(ring)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue()
            do { try box.ring.enable() } catch { box.enableError = error }
            box.probeFromOwner = box.ring.registerWithoutArgument(8)
            return nil
        }, Unmanaged.passUnretained(box).toOpaque())
        #expect(rc == 0)
        pthread_join(thread, nil)
        #expect(box.enableError == nil, "\(String(describing: box.enableError))")
        // The owner may register (EINVAL: PROBE wants its argument); this thread may not (EEXIST).
        #expect(box.probeFromOwner == .failure(.invalidArgument), "\(String(describing: box.probeFromOwner))")
        // This thread created the ring but did not enable it: it may neither register nor submit.
        #expect(ring.registerWithoutArgument(8) == .failure(.exists))
        var ts = timespec(tv_sec: 0, tv_nsec: 1_000)
        try withUnsafeMutablePointer(to: &ts) { p in
            try ring.prepareRaw(opcode: Op.timeout, fd: -1, address: UInt64(UInt(bitPattern: p)), length: 1, sqeFlags: fixedFile, userData: 1)
            do {
                try ring.submit()
                Issue.record("a thread other than the one that enabled the ring submitted on it")
            } catch let e as SystemError {
                #expect(e.errno == .exists, "\(e)")
            }
        }
    }

    @Test func fileLessOperationsNeedTheFixedFileFlag() throws {
        if let refused {
            #expect([Errno.notPermitted, .noSys].contains(refused), "io_uring refused here: \(refused)")
            return
        }
        let ring = try supervisorRing(files: [])
        let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        defer { word.deallocate() }
        word.pointee = 5
        if ring.supportsFutexWait {
            // Expecting 4 where the word holds 5: EAGAIN at once, i.e. the wait ran.
            try ring.futexWait(word, expected: 4, userData: 1)
            #expect(try complete(ring) == -EAGAIN)
            try ring.prepareRaw(opcode: Op.futexWait, fd: 0x02, address: UInt64(UInt(bitPattern: word)), offset: 4,
                                address3: 0xffff_ffff, sqeFlags: 0, userData: 2)
            #expect(try complete(ring) == -EACCES)
        }
        var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
        try withUnsafeMutablePointer(to: &ts) { p in
            try ring.prepareRaw(opcode: Op.timeout, fd: -1, address: UInt64(UInt(bitPattern: p)), length: 1, sqeFlags: fixedFile, userData: 3)
            #expect(try complete(ring) == -ETIME)
            try ring.prepareRaw(opcode: Op.timeout, fd: -1, address: UInt64(UInt(bitPattern: p)), length: 1, sqeFlags: 0, userData: 4)
            #expect(try complete(ring) == -EACCES)
        }
        // A timed wait with nothing to wait for returns (IORING_ENTER_EXT_ARG: the adopted ring
        // kept its features, so liburing does not queue a TIMEOUT SQE of its own, without the flag).
        try ring.submit(waitingFor: 1, timeoutNs: 1_000_000)
    }

    @Test func thePolicyRefusesRequestsOutsideIt() throws {
        typealias R = IORingPolicy.Request
        #expect(R(entries: 64).refusal == nil)
        #expect(R(entries: 64, flags: IORingPolicy.allowedSetupFlags & ~(1 << 3)).refusal == nil)
        #expect(R(entries: 64, flags: 1 << 3, completionEntries: 256).refusal == nil)
        #expect(R(entries: 64, flags: 1 << 1).refusal != nil)  // SQPOLL: a kernel thread with our credentials
        #expect(R(entries: 64, flags: 1 << 0).refusal != nil)  // IOPOLL
        #expect(R(entries: 64, flags: 1 << 5).refusal != nil)  // ATTACH_WQ
        #expect(R(entries: 64, flags: 1 << 14).refusal != nil)  // NO_MMAP
        #expect(R(entries: 0).refusal != nil)
        #expect(R(entries: IORingPolicy.maxEntries + 1).refusal != nil)
        #expect(R(entries: 64, flags: 1 << 3, completionEntries: 32).refusal != nil)
        #expect(R(entries: 64, flags: 1 << 3, completionEntries: IORingPolicy.maxCompletionEntries + 1).refusal != nil)
        #expect(R(entries: 64, completionEntries: 128).refusal != nil)  // without CQSIZE
        do {
            _ = try IORingPolicy.create(R(entries: 8, flags: 1 << 1))
            Issue.record("an SQPOLL ring was made")
        } catch let e as SystemError {
            #expect(e.errno == .invalidArgument)
        }
    }

    @Test func ringsHeldCountsDescriptorsAndMappings() throws {
        if refused != nil { return }  // nothing to count where no ring can be made
        func inode(_ fd: FileDescriptor) -> UInt64 {
            var st = stat()
            return fstat(fd.rawValue, &st) == 0 ? UInt64(st.st_ino) : 0
        }
        let mapped = try IOUring(entries: 4)  // a descriptor and mappings: one ring
        let bare = try IORingPolicy.create(IORingPolicy.Request(entries: 4))  // a descriptor only
        let a = inode(mapped.descriptor), b = inode(bare.fd)
        #expect(a != b, "each ring is an inode of its own")
        let held = try IORingPolicy.ringInodes(of: getpid())
        #expect(held.contains(a) && held.contains(b))
        #expect(try IORingPolicy.ringsHeld(by: getpid()) >= 2)
        bare.fd.close()
        #expect(!(try IORingPolicy.ringInodes(of: getpid()).contains(b)), "a closed ring is not counted")
        #expect(try IORingPolicy.ringInodes(of: getpid()).contains(a))
    }
}

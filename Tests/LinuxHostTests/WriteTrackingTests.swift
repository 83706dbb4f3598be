import Glibc
import LinuxHost
import TestSupport
import Testing

private let page = Int(WriteTracking.pageSize)

/// A memfd mapped shared read-write, as a domain maps its RAM.
private struct RAM {
    let fd: FileDescriptor
    let mapping: SharedMapping
    var range: Range<UInt64> { UInt64(UInt(bitPattern: mapping.base))..<UInt64(UInt(bitPattern: mapping.base)) + UInt64(mapping.length) }

    init(pages: Int, name: String = "ram") throws {
        fd = try MemFD.create(name: name, size: pages * page)
        mapping = try SharedMapping(fd, length: pages * page)
    }

    /// Adds 1 to the first byte of each page.
    func write(_ pages: [Int]) {
        for p in pages { mapping.bytes[p * page] &+= 1 }
    }

    /// Page numbers (relative to the mapping) of the ranges a scan returned.
    func pages(_ ranges: [Range<UInt64>]) -> [Int] {
        ranges.flatMap { r in
            stride(from: Int(r.lowerBound - range.lowerBound) / page, to: Int(r.upperBound - range.lowerBound) / page, by: 1).map { $0 }
        }
    }

    func close() {
        mapping.unmap()
        fd.close()
    }
}

/// Minor faults taken by the calling thread so far (getrusage(RUSAGE_THREAD)).
private func minorFaults() -> Int {
    var ru = rusage()
    _ = getrusage(__rusage_who_t(1) /* RUSAGE_THREAD */, &ru)
    return ru.ru_minflt
}

private func milliseconds(_ body: () throws -> Void) rethrows -> Double {
    let t0 = MonotonicClock.nanoseconds()
    try body()
    return Double(MonotonicClock.nanoseconds() - t0) / 1e6
}

/// Write tracking for live migration: a registered mapping, PAGEMAP_SCAN's get-and-clear, and what
/// the kernel does and does not record. Serialized: the registration is the process's one
/// userfaultfd, and one test ends it.
@Suite(.serialized) struct WriteTrackingTests {
    @Test func writtenPagesAreReportedOnceThenCleared() throws {
        let ram = try RAM(pages: 64)
        defer { ram.close() }
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        #expect(WriteTracking.registeredRanges.contains(ram.range))
        #expect(WriteTracking.kernelFeatures?.isSuperset(of: WriteTracking.Features.requested) == true)
        let scanner = try DirtyScanner(pid: Process.pid)
        try scanner.reset(range: ram.range)
        ram.write([3, 7, 8])
        let dirty = try scanner.collect(range: ram.range)
        #expect(ram.pages(dirty) == [3, 7, 8])
        #expect(dirty.count == 2)  // 7 and 8 come back as one run
        #expect(try scanner.collect(range: ram.range).isEmpty)
        ram.write([3])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [3])
        // Without clear the record stays.
        ram.write([60])
        #expect(ram.pages(try scanner.collect(range: ram.range, clear: false)) == [60])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [60])
        #expect(try scanner.collect(range: ram.range).isEmpty)
    }

    /// What round 1 sees: right after registration nothing is protected, and every page of the
    /// range reads as written, populated or not, with a page table or not (8 MiB, so at least one
    /// 2 MiB stretch has no page table at all). `reset` protects the lot, empty entries included
    /// (markers); from then on a page read for the first time is not reported, and a page written
    /// for the first time is, populated before or not.
    @Test func theFirstRoundReportsEveryPageAndResetStartsClean() throws {
        let pages = 2048
        let ram = try RAM(pages: pages)
        defer { ram.close() }
        ram.write(Array(0..<10))  // written before registration
        var sum = 0
        for p in 10..<20 { sum += Int(ram.mapping.bytes[p * page]) }  // only read
        #expect(sum == 0)
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        let first = ram.pages(try scanner.collect(range: ram.range, clear: false))
        #expect(Set(0..<20).isSubset(of: Set(first)), "populated pages read as written before the first clear")
        #expect(first.count == pages, "the first scan reports \(first.count) of \(pages) pages")
        print("write tracking: first scan after registration reports \(first.count) of \(pages) pages (20 populated)")
        try scanner.reset(range: ram.range)
        #expect(try scanner.collect(range: ram.range).isEmpty)
        sum = Int(ram.mapping.bytes[40 * page]) + Int(ram.mapping.bytes[1600 * page])  // never populated, now read
        #expect(try scanner.collect(range: ram.range).isEmpty)
        let fifty = [50], forty = [40]
        var before = minorFaults()
        ram.write(fifty)  // never populated, now written
        let unpopulatedFaults = minorFaults() - before
        before = minorFaults()
        ram.write(forty)  // populated by the read above, now written
        let readFirstFaults = minorFaults() - before
        #expect(unpopulatedFaults >= 1 && readFirstFaults == 1)
        print("write tracking: minor faults for a first write to a never-populated page \(unpopulatedFaults), to a page read first \(readFirstFaults)")
        ram.write([1700])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [40, 50, 1700])
    }

    /// The real use: another process, another uid without capabilities, under the guest bound
    /// (and with the guest allow-list engaged too), registers; this process scans it from outside.
    @Test(arguments: [false, true])
    func aConfinedProcessIsTrackedFromOutside(_ allowList: Bool) throws {
        let pages = 256
        let ramFD = try MemFD.create(name: "domain-ram", size: pages * page)
        defer { ramFD.close() }
        let commands = try FileDescriptor.pipe()
        let replies = try FileDescriptor.pipe()
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close(); replies.read.close() }
        let bpf = try SeccompPolicies.guestBound.compile().bpf()
        var jail = Spawner.Jail(namespaces: 0, mountPoint: nil, directories: [], files: [], hostname: nil,
                                uid: 100_000 + 4321, gid: 100_000 + 4321)
        jail.dropCapabilities = true
        let program = SeccompPolicyTests.testguest
        let pid = try Spawner.spawn(path: program, argv: [program, "--dirty-writer"] + (allowList ? ["--guest-policy"] : []),
                                    env: ["SWIFT_BACKTRACE=enable=no"],
                                    fds: [(commands.read, 0), (replies.write, 1), (null, 2), (ramFD, 3)],
                                    limits: [.init(Int32(RLIMIT_CORE.rawValue), 0, 0)], filter: bpf, jail: jail)
        commands.read.close()
        replies.write.close()
        var input: [UInt8] = []
        func line() throws -> String {
            while true {
                if let nl = input.firstIndex(of: 0x0A) {
                    defer { input.removeSubrange(...nl) }
                    return String(decoding: input[..<nl], as: UTF8.self)
                }
                let chunk = try replies.read.read(upTo: 4096)
                if chunk.isEmpty { return "EOF" }
                input += chunk
            }
        }
        func send(_ command: String) throws -> String {
            try commands.write.writeAll(command + "\n")
            return try line()
        }
        var ended = false
        defer {
            if !ended {
                commands.write.close()
                _ = try? ChildReaper.wait(pid)
            }
        }
        let ready = try line()
        try #require(ready.hasPrefix("ready "), "the writer said: \(ready)")
        let base = try #require(UInt64(ready.dropFirst(6), radix: 16))
        let range = base..<base + UInt64(pages * page)
        // The supervisor finds the mapping itself, from the descriptor it holds.
        #expect(try WriteTracking.mappings(of: pid, file: ramFD) == [range])
        let mapping = try #require(try WriteTracking.fileMappings(of: pid, file: ramFD).first)
        #expect(mapping.fileOffset == 0 && mapping.writable && mapping.shared)
        func pageNumbers(_ r: [Range<UInt64>]) -> [Int] {
            r.flatMap { stride(from: Int($0.lowerBound - base) / page, to: Int($0.upperBound - base) / page, by: 1).map { $0 } }
        }
        let scanner = try DirtyScanner(pid: pid)
        try scanner.reset(range: range)
        #expect(try send("w 3 7 8") == "ok")
        #expect(pageNumbers(try scanner.collect(range: range)) == [3, 7, 8])
        #expect(try scanner.collect(range: range).isEmpty)
        #expect(try send("w 3") == "ok")
        #expect(pageNumbers(try scanner.collect(range: range)) == [3])
        #expect(try send("r 3 7 100") == "ok 3")  // reads are not writes (3 was written twice, 7 once)
        #expect(try scanner.collect(range: range).isEmpty)
        // This process writing into the domain's mapping (process_vm_writev, as the supervisor
        // answers a call with data) goes through the domain's page tables: recorded.
        try RemoteMemory.write(pid: pid, address: base + UInt64(20 * page) + 8, [9, 9])
        #expect(pageNumbers(try scanner.collect(range: range)) == [20])
        // The supervisor's own mapping of the memfd is another mapping: not recorded.
        let mine = try SharedMapping(ramFD, length: pages * page)
        mine.bytes[21 * page] = 5
        #expect(try send("r 21") == "ok 5")
        #expect(try scanner.collect(range: range).isEmpty)
        mine.unmap()
        // The domain closes its userfaultfd: the registration is gone and the scan says so.
        #expect(try send("stop") == "ok")
        #expect(throws: WriteTrackingError.notTracked(pid: pid, range: range)) { try scanner.collect(range: range) }
        commands.write.close()
        ended = true
        #expect(try ChildReaper.wait(pid) == .exited(0))
    }

    @Test func anUnregisteredMappingIsNotTracked() throws {
        let ram = try RAM(pages: 16)
        defer { ram.close() }
        ram.write([1])
        let scanner = try DirtyScanner(pid: Process.pid)
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.collect(range: ram.range) }
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.reset(range: ram.range) }
        // A range only partly registered is refused as a whole.
        try WriteTracking.register(base: ram.mapping.base, length: 8 * page)
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.collect(range: ram.range) }
        let half = ram.range.lowerBound..<ram.range.lowerBound + UInt64(8 * page)
        try scanner.reset(range: half)
        ram.write([2, 12])
        #expect(ram.pages(try scanner.collect(range: half)) == [2])
        // Addresses with no mapping at all are skipped, not refused.
        let gap = try SharedMapping(anonymous: 4 * page)
        let hole = UInt64(UInt(bitPattern: gap.base))..<UInt64(UInt(bitPattern: gap.base)) + UInt64(4 * page)
        gap.unmap()
        #expect(try scanner.collect(range: hole).isEmpty)
        #expect(throws: WriteTrackingError.self) { try scanner.collect(range: half.lowerBound + 1..<half.upperBound) }
    }

    /// A page re-backed in place (MAP_FIXED, as a grantable page is) is a new VMA: not registered,
    /// and no longer a mapping of the RAM file. Re-backing it with RAM again gives a VMA that is
    /// not registered either until `register` is called for it.
    @Test func aPageReBackedInPlaceIsANewUnregisteredMapping() throws {
        let ram = try RAM(pages: 16)
        defer { ram.close() }
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        try scanner.reset(range: ram.range)
        let grant = try MemFD.create(name: "grant", size: page)
        defer { grant.close() }
        try ram.mapping.replace(at: 4 * page, length: page, with: grant)
        let pieces = try WriteTracking.mappings(of: Process.pid, file: ram.fd)
        let low = ram.range.lowerBound
        #expect(pieces == [low..<low + UInt64(4 * page), low + UInt64(5 * page)..<ram.range.upperBound])
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.collect(range: ram.range) }
        ram.write([2, 4, 9])
        var written: [Range<UInt64>] = []
        for piece in pieces { written += try scanner.collect(range: piece) }
        #expect(ram.pages(written) == [2, 9])  // the grant page is not RAM
        // Back to RAM: the page is a mapping of the file again, but untracked until registered.
        try ram.mapping.replace(at: 4 * page, length: page, with: ram.fd, offset: 4 * page)
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.collect(range: ram.range) }
        try WriteTracking.register(base: ram.mapping.base + 4 * page, length: page)
        ram.write([4])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [4])
        let after = try WriteTracking.mappings(of: Process.pid, file: ram.fd)
        #expect(after.first?.lowerBound == ram.range.lowerBound && after.last?.upperBound == ram.range.upperBound)
        print("write tracking: RAM mapping after a page was re-backed twice and registered again: \(after.count) VMA(s)")
    }

    @Test func mappingsFindEveryMappingOfTheFileAndNothingElse() throws {
        let ram = try RAM(pages: 32)
        defer { ram.close() }
        let other = try MemFD.create(name: "other", size: 4 * page)
        defer { other.close() }
        let otherMap = try SharedMapping(other, length: 4 * page)
        let second = try SharedMapping(ram.fd, length: 8 * page, offset: 16 * page, protection: .read)
        let found = try WriteTracking.fileMappings(of: Process.pid, file: ram.fd)
        let secondRange = UInt64(UInt(bitPattern: second.base))..<UInt64(UInt(bitPattern: second.base)) + UInt64(8 * page)
        let byAddress: (Range<UInt64>, Range<UInt64>) -> Bool = { $0.lowerBound < $1.lowerBound }
        let expected = [ram.range, secondRange].sorted(by: byAddress)
        #expect(found.map(\.range) == expected)  // in address order
        let viaSecond = try #require(found.first { $0.range == secondRange })
        #expect(viaSecond.fileOffset == UInt64(16 * page) && !viaSecond.writable && viaSecond.readable && viaSecond.shared)
        let otherAddress = UInt64(UInt(bitPattern: otherMap.base))
        #expect(!found.contains { $0.range.contains(otherAddress) })
        second.unmap()
        #expect(try WriteTracking.mappings(of: Process.pid, file: ram.fd) == [ram.range])
        ram.mapping.unmap()
        #expect(try WriteTracking.mappings(of: Process.pid, file: ram.fd).isEmpty)
        #expect(throws: WriteTrackingError.self) { try WriteTracking.mappings(of: 999_999_999, file: ram.fd) }
    }

    /// Correctness at scale: every written page is reported, none is missed, nothing else is, also
    /// when the output vector fills many times over (the walk resumes at walk_end). Timings are
    /// printed, not checked.
    @Test func tenThousandRandomPagesOf64MiBAreAllReported() throws {
        let pages = 64 << 20 / page
        let ram = try RAM(pages: pages, name: "ram64")
        defer { ram.close() }
        memset(ram.mapping.base, 1, ram.mapping.length)  // populated, as a running domain's RAM is
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        let resetMs = try milliseconds { try scanner.reset(range: ram.range) }
        var rng = SplitMix64(state: 0x5EED_D127)
        var chosen = Set<Int>()
        while chosen.count < 10_000 { chosen.insert(Int(rng.next() % UInt64(pages))) }
        ram.write(Array(chosen))
        var dirty: [Range<UInt64>] = []
        let collectMs = try milliseconds { dirty = try scanner.collect(range: ram.range) }
        let reported = ram.pages(dirty)
        let missing = chosen.subtracting(reported).count, extra = Set(reported).subtracting(chosen).count
        #expect(reported.count == chosen.count)
        #expect(missing == 0 && extra == 0, "missing \(missing), extra \(extra)")
        var after: [Range<UInt64>] = []
        let cleanMs = try milliseconds { after = try scanner.collect(range: ram.range) }
        #expect(after.isEmpty)
        // Again with a vector of 7 runs: the kernel stops every 7 runs and the scanner walks on.
        ram.write(Array(chosen))
        let small = try DirtyScanner(pid: Process.pid, regionCapacity: 7)
        #expect(Set(ram.pages(try small.collect(range: ram.range))) == chosen)
        #expect(try small.collect(range: ram.range).isEmpty)
        print("write tracking: 64 MiB (16384 pages populated): reset \(fmt(resetMs)) ms, collect of 10000 written pages (\(dirty.count) runs) \(fmt(collectMs)) ms, collect with none written \(fmt(cleanMs)) ms")
    }

    @Test func timingOfACollectOver256MiB() throws {
        let pages = 256 << 20 / page
        let ram = try RAM(pages: pages, name: "ram256")
        defer { ram.close() }
        memset(ram.mapping.base, 1, ram.mapping.length)
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        var first: [Range<UInt64>] = [], clean: [Range<UInt64>] = []
        let firstMs = try milliseconds { first = try scanner.collect(range: ram.range) }
        #expect(DirtyScanner.pageCount(first) == pages)
        let cleanMs = try milliseconds { clean = try scanner.collect(range: ram.range) }
        #expect(clean.isEmpty)
        // Every other page written: the worst case for runs (one per page).
        ram.write(Array(stride(from: 0, to: pages, by: 2)))
        var runs = 0
        let sparseMs = try milliseconds { runs = try scanner.collect(range: ram.range).count }
        #expect(runs == pages / 2)
        ram.write(Array(0..<pages))
        var all: [Range<UInt64>] = []
        let allMs = try milliseconds { all = try scanner.collect(range: ram.range) }
        #expect(DirtyScanner.pageCount(all) == pages)
        print("write tracking: 256 MiB (65536 pages populated): collect of all (first round) \(fmt(firstMs)) ms, of none \(fmt(cleanMs)) ms, of every other page (32768 runs) \(fmt(sparseMs)) ms, of all written \(fmt(allMs)) ms")
    }

    /// What the kernel does and does not record (the answers in docs/migration-dirty-tracking.md).
    @Test func whatTheKernelRecordsAndWhatItDoesNot() throws {
        let ram = try RAM(pages: 64)
        defer { ram.close() }
        ram.write(Array(0..<64))
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        try scanner.reset(range: ram.range)

        // One minor fault per page on its first write in a round, none after. (The page list is
        // made first: an allocation between the two readings could fault on its own.)
        let tens = Array(10..<20)
        var before = minorFaults()
        ram.write(tens)
        let firstWrites = minorFaults() - before
        before = minorFaults()
        ram.write(tens)
        let secondWrites = minorFaults() - before
        #expect(firstWrites == 10 && secondWrites == 0, "first writes \(firstWrites) faults, second \(secondWrites)")
        #expect(ram.pages(try scanner.collect(range: ram.range)) == tens)
        before = minorFaults()
        ram.write(tens)
        let nextRound = minorFaults() - before
        #expect(nextRound == 10, "\(nextRound) faults")  // protected again by the collect
        print("write tracking: minor faults for 10 first writes \(firstWrites), for 10 second writes \(secondWrites), next round \(nextRound)")
        _ = try scanner.collect(range: ram.range)

        // A punched page changes (it reads as zeros) without a record; re-faulting it by a read
        // records nothing either, a write does.
        try MemFD.punchHole(ram.fd, offset: 5 * page, length: page)
        #expect(try scanner.collect(range: ram.range).isEmpty)
        #expect(ram.mapping.bytes[5 * page] == 0)
        #expect(try scanner.collect(range: ram.range).isEmpty)
        ram.write([5])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [5])

        // Writes through a second, unregistered mapping of the same memfd are not recorded,
        // though the registered mapping sees the new bytes.
        let second = try SharedMapping(ram.fd, length: ram.mapping.length)
        second.bytes[11 * page] = 0x77
        #expect(ram.mapping.bytes[11 * page] == 0x77)
        #expect(try scanner.collect(range: ram.range).isEmpty)
        second.unmap()

        // pwrite(2) to the memfd: not recorded either.
        var byte: UInt8 = 0x66
        _ = try withUnsafeBytes(of: &byte) { try ram.fd.write(from: $0, at: Int64(12 * page)) }
        #expect(ram.mapping.bytes[12 * page] == 0x66)
        #expect(try scanner.collect(range: ram.range).isEmpty)

        // The kernel writing into the registered mapping on the process's behalf (read(2) into
        // it) is recorded: the write-protect fault is resolved the same way in kernel mode.
        let pipe = try FileDescriptor.pipe()
        defer { pipe.read.close(); pipe.write.close() }
        try pipe.write.writeAll([1, 2, 3])
        let n = try pipe.read.read(into: UnsafeMutableRawBufferPointer(rebasing: ram.mapping.bytes[(13 * page + 100)...].prefix(3)))
        #expect(n == 3)
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [13])
    }

    /// The registration lives as long as the userfaultfd: closing it (`stop`) ends it, and the scan
    /// says so instead of reporting nothing. A later `register` starts over.
    @Test func stoppingEndsTheRegistration() throws {
        let ram = try RAM(pages: 8)
        defer { ram.close() }
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        let scanner = try DirtyScanner(pid: Process.pid)
        try scanner.reset(range: ram.range)
        WriteTracking.stop()
        #expect(WriteTracking.kernelFeatures == nil && WriteTracking.registeredRanges.isEmpty)
        ram.write([1])
        #expect(throws: WriteTrackingError.notTracked(pid: Process.pid, range: ram.range)) { try scanner.collect(range: ram.range) }
        try WriteTracking.register(base: ram.mapping.base, length: ram.mapping.length)
        try scanner.reset(range: ram.range)
        ram.write([6])
        #expect(ram.pages(try scanner.collect(range: ram.range)) == [6])
    }

    @Test func registrationErrorsNameTheStepAndTheErrno() throws {
        let ram = try RAM(pages: 4)
        defer { ram.close() }
        let e1 = try #require(throws: WriteTrackingError.self) { try WriteTracking.register(base: ram.mapping.base + 1, length: page) }
        #expect(e1 == .failed(step: .register, context: e1.context, errno: .invalidArgument))
        // A range that is not mapped: EINVAL from UFFDIO_REGISTER (not "unsupported": the
        // negotiation already showed the kernel can).
        // (Not a hole made by unmapping: another suite's thread may map into it at once. The lowest
        // addresses a process may map are never chosen by mmap without a hint, which allocates top-down.)
        let minimum = (try? String(contentsOfFile: "/proc/sys/vm/mmap_min_addr", encoding: .utf8))
            .flatMap { UInt($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 65536
        let base = UnsafeMutableRawPointer(bitPattern: max(minimum, 65536))!
        let address = UInt(bitPattern: base)
        let mapped = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8).split(separator: "\n").contains { line in
            let bounds = line.prefix { $0 != " " }.split(separator: "-").compactMap { UInt($0, radix: 16) }
            return bounds.count == 2 && bounds[0] < address + UInt(2 * page) && address < bounds[1]
        }
        #expect(!mapped, "the lowest mappable pages are mapped in this process")
        let e2 = try #require(throws: WriteTrackingError.self) { try WriteTracking.register(base: base, length: 2 * page) }
        #expect(e2 == .failed(step: .register, context: e2.context, errno: .invalidArgument))
        #expect(e2.description.contains("UFFDIO_REGISTER") && e2.description.contains("not (entirely) mapped"))
        #expect(throws: WriteTrackingError.self) { try DirtyScanner(pid: 999_999_999) }
    }

    @Test func theSeccompPoliciesAdmitTheRegistrationAndNothingElseOfUserfaultfd() throws {
        let policy = SeccompPolicyTests()
        #expect(try policy.underBound(["--raw", "userfaultfd"]) == .exited(0))
        #expect(try policy.underBound(["--guest-policy", "userfaultfd"]) == .exited(0))
        #expect(try policy.underBound(["--raw", "userfaultfd-kernel-faults"]) == .signaled(SIGSYS))
        #expect(try policy.underBound(["--guest-policy", "userfaultfd-kernel-faults"]) == .signaled(SIGSYS))
        #expect(try policy.underBound(["--raw", "uffdio-writeprotect"]) == .signaled(SIGSYS))
        #expect(try policy.underBound(["--guest-policy", "uffdio-writeprotect"]) == .signaled(SIGSYS))
    }
}

private func fmt(_ ms: Double) -> String {
    let hundredths = Int((ms * 100).rounded())
    return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
}

extension WriteTrackingError {
    /// The context of a `.failed` error (empty for the others).
    var context: String {
        if case let .failed(_, context, _) = self { return context }
        return ""
    }
}

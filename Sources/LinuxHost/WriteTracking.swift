import CProcvisor
import Glibc

/// Which step of write tracking failed.
public enum WriteTrackingStep: String, Sendable {
    /// userfaultfd(2) (domain side).
    case create = "userfaultfd"
    /// ioctl(UFFDIO_API): the feature negotiation (domain side).
    case negotiate = "ioctl(UFFDIO_API)"
    /// ioctl(UFFDIO_REGISTER) of a range for write-protection (domain side).
    case register = "ioctl(UFFDIO_REGISTER)"
    /// Reading /proc/PID/maps (supervisor side).
    case maps = "read /proc/PID/maps"
    /// Opening /proc/PID/pagemap (supervisor side).
    case openPagemap = "open /proc/PID/pagemap"
    /// ioctl(PAGEMAP_SCAN) (supervisor side).
    case scan = "ioctl(PAGEMAP_SCAN)"
}

/// Why write tracking failed. Three cases a caller tells apart: the kernel cannot do it at all
/// (`unsupported`: migrate by stop-and-copy instead), a mapping in the scanned range is not
/// registered (`notTracked`), or a step failed for another reason (`failed`).
public enum WriteTrackingError: Error, Equatable, CustomStringConvertible, Sendable {
    /// This kernel (or this process's confinement) cannot track writes this way: which step
    /// refused, what is missing, and the errno it gave.
    case unsupported(step: WriteTrackingStep, missing: String, errno: Errno)
    /// PAGEMAP_SCAN with PM_SCAN_CHECK_WPASYNC found a VMA in `range` of process `pid` that is not
    /// registered for asynchronous write-protection (the kernel's EPERM): a mapping the domain
    /// made or moved after registering, or a range it never registered. Writes there are not
    /// recorded. Regions the same call had already re-protected are not reported either (the
    /// kernel drops the count with the error): treat all of `range` as written.
    case notTracked(pid: pid_t, range: Range<UInt64>)
    /// Another failure of `step`, with what it was working on and the errno.
    case failed(step: WriteTrackingStep, context: String, errno: Errno)

    public var description: String {
        switch self {
        case let .unsupported(step, missing, errno):
            return "\(step.rawValue): write tracking unsupported here (\(missing)): \(errno)"
        case let .notTracked(pid, range):
            return "\(WriteTrackingStep.scan.rawValue) pid \(pid) \(hex(range)): a mapping in the range is not registered for asynchronous write-protection"
        case let .failed(step, context, errno):
            return context.isEmpty ? "\(step.rawValue): \(errno)" : "\(step.rawValue) \(context): \(errno)"
        }
    }
}

func hex(_ r: Range<UInt64>) -> String { "0x\(String(r.lowerBound, radix: 16))-0x\(String(r.upperBound, radix: 16))" }

/// Dirty-page tracking for live migration, with no cooperation from the domain beyond one call at
/// start-up and no thread serving faults.
///
/// **Domain side** (`register`): the domain creates a userfaultfd (user-mode faults only, so an
/// unprivileged, capability-less process may), negotiates write-protection in asynchronous mode
/// (UFFD_FEATURE_WP_ASYNC, which the kernel completes with WP_UNPOPULATED; WP_HUGETLBFS_SHMEM for
/// its shmem-backed RAM) and registers its RAM mapping for write-protection. In asynchronous mode
/// the kernel resolves a write to a protected page itself, on the spot, and leaves the page's
/// entry without its write-protect bit: that is the record of the write. No message is queued,
/// nothing ever reads the descriptor.
///
/// **Supervisor side** (`mappings(of:file:)`, `DirtyScanner`): finds where the domain maps its
/// RAM memfd (/proc/PID/maps) and asks PAGEMAP_SCAN on /proc/PID/pagemap, per round, for the
/// pages whose entries lost the bit (PAGE_IS_WRITTEN), setting it again in the same walk
/// (PM_SCAN_WP_MATCHING): get-and-clear, atomic per page against the domain's writes.
///
/// What the kernel records (Linux 6.18, measured by `WriteTrackingTests`): every write through
/// the registered mapping, by the domain's code or by the kernel on its behalf (read(2) into the
/// RAM, process_vm_writev into it), costs one minor fault per page per round (the first write)
/// and is reported; nothing else is. Writes through any other mapping of the memfd (a second
/// mapping in the domain, the supervisor's, a backend's), pwrite(2) to the memfd and hole
/// punching change the pages without a record: whoever does those must add the pages to the
/// round itself. See docs/migration-dirty-tracking.md.
public enum WriteTracking {
    /// The page size the ranges are counted in.
    public static let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    /// UFFDIO_API features (`uffdio_api.features`).
    public struct Features: OptionSet, Sendable, CustomStringConvertible {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Write-protection of shmem and hugetlbfs mappings (the domain's RAM is a shmem memfd).
        public static let wpHugetlbfsShmem = Features(rawValue: PV_UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
        /// Page-table markers on entries never populated, so those pages are write-protected too.
        public static let wpUnpopulated = Features(rawValue: PV_UFFD_FEATURE_WP_UNPOPULATED)
        /// The kernel resolves write-protect faults itself and records the write (Linux 6.7).
        public static let wpAsync = Features(rawValue: PV_UFFD_FEATURE_WP_ASYNC)

        /// What `register` asks for. WP_UNPOPULATED is not asked: WP_ASYNC implies it (the kernel
        /// adds it, fs/userfaultfd.c userfaultfd_api), and asking for it too changes nothing (the
        /// same reports either way, measured on Linux 6.18).
        public static let requested: Features = [.wpAsync, .wpHugetlbfsShmem]

        public var description: String {
            var names: [String] = []
            if contains(.wpHugetlbfsShmem) { names.append("UFFD_FEATURE_WP_HUGETLBFS_SHMEM") }
            if contains(.wpUnpopulated) { names.append("UFFD_FEATURE_WP_UNPOPULATED") }
            if contains(.wpAsync) { names.append("UFFD_FEATURE_WP_ASYNC") }
            let known: Features = [.wpHugetlbfsShmem, .wpUnpopulated, .wpAsync]
            let rest = rawValue & ~known.rawValue
            if rest != 0 { names.append("0x\(String(rest, radix: 16))") }
            return names.isEmpty ? "none" : names.joined(separator: "|")
        }
    }

    /// The flags the domain's userfaultfd is created with, exactly: UFFD_USER_MODE_ONLY |
    /// O_CLOEXEC | O_NONBLOCK. The seccomp policies admit userfaultfd(2) with this value only.
    public static let descriptorFlags = pv_uffd_domain_flags()
    /// The ioctl request numbers `register` issues, the only two the seccomp policies admit.
    public static let apiRequest = UInt64(pv_uffdio_api_request())
    public static let registerRequest = UInt64(pv_uffdio_register_request())

    // The one userfaultfd of this process, made by the first `register` and kept open for the
    // life of the process. It must stay open: a registration lives exactly as long as the file.
    // When the last reference to the file goes (its last close; the file is close-on-exec and a
    // fork without UFFD_FEATURE_EVENT_FORK gives the child no registration), the kernel's
    // userfaultfd_release (fs/userfaultfd.c) calls userfaultfd_release_all (mm/userfaultfd.c),
    // which walks every VMA of the process whose vm_userfaultfd_ctx is this context and clears
    // VM_UFFD_WP and the context: from then on PAGEMAP_SCAN with PM_SCAN_CHECK_WPASYNC refuses
    // the range (EPERM) and writes go unrecorded. The VMAs reference the context, not the file,
    // so a registration does not keep the descriptor open by itself.
    // (`WriteTrackingTests.stoppingEndsTheRegistration` shows it.)
    private static let lock = Lock()
    private static var descriptor: FileDescriptor?
    private static var granted: Features = []
    private static var ranges: [Range<UInt64>] = []

    /// Registers `length` bytes at `base` (page-aligned, mapped) for write tracking, in the
    /// calling (domain) process. The first call creates the process's userfaultfd and negotiates
    /// the features; later calls register further ranges on the same descriptor (a mapping made
    /// over a registered range — MAP_FIXED, or moved by mremap — is a new VMA and is not
    /// registered: register it again). Registering a range twice is harmless.
    ///
    /// Nothing is write-protected yet: until the supervisor's first `DirtyScanner.reset` (or a
    /// collect with clear), every page of the range reads as written.
    ///
    /// Throws `WriteTrackingError.unsupported` when the kernel cannot (no userfaultfd, no
    /// UFFD_USER_MODE_ONLY before Linux 5.11, no WP_ASYNC before 6.7, no write-protection of
    /// shmem without CONFIG_PTE_MARKER_UFFD_WP) or the confinement refuses the call, naming the
    /// step and what is missing; `.failed` for anything else (EINVAL: a range not entirely
    /// mapped; EBUSY: registered with another userfaultfd).
    public static func register(base: UnsafeMutableRawPointer, length: Int) throws {
        let start = UInt64(UInt(bitPattern: base))
        let range = start..<(start + UInt64(length))
        guard length > 0, start % pageSize == 0, UInt64(length) % pageSize == 0 else {
            throw WriteTrackingError.failed(step: .register, context: "\(hex(range)): not whole pages", errno: .invalidArgument)
        }
        try lock.withLock {
            let fd = try descriptor ?? open()
            var ioctls: UInt64 = 0
            let rc = pv_uffd_register(fd.rawValue, start, UInt64(length), PV_UFFDIO_REGISTER_MODE_WP, &ioctls)
            if rc < 0 {
                // Whether the kernel can do it at all was settled by the negotiation: with WP_ASYNC
                // granted it write-protects any kind of memory (vma_can_userfault), so EINVAL here is
                // the range (not mapped, partly mapped, or a VMA the kernel never tracks).
                let e = Errno(rawValue: -rc)
                let why = e == .invalidArgument ? ": not (entirely) mapped, or a mapping the kernel cannot write-protect"
                    : e == .busy ? ": registered with another userfaultfd" : ""
                throw WriteTrackingError.failed(step: .register, context: "\(hex(range))\(why)", errno: e)
            }
            if !ranges.contains(range) { ranges.append(range) }
        }
    }

    /// Creates the descriptor and negotiates the features (under `lock`).
    private static func open() throws -> FileDescriptor {
        let raw = pv_userfaultfd(descriptorFlags)
        if raw < 0 {
            let e = Errno(rawValue: -raw)
            switch e {
            case .noSys:
                throw WriteTrackingError.unsupported(step: .create, missing: "userfaultfd (kernel built without CONFIG_USERFAULTFD)", errno: e)
            case .invalidArgument:
                throw WriteTrackingError.unsupported(step: .create, missing: "UFFD_USER_MODE_ONLY (Linux 5.11)", errno: e)
            case .notPermitted:
                throw WriteTrackingError.unsupported(step: .create, missing: "permission: a seccomp filter or LSM refused it, or a kernel before 5.11 with vm.unprivileged_userfaultfd = 0", errno: e)
            default:
                throw WriteTrackingError.failed(step: .create, context: "flags 0x\(String(descriptorFlags, radix: 16))", errno: e)
            }
        }
        let fd = FileDescriptor(rawValue: raw)
        var answered: UInt64 = 0, ioctls: UInt64 = 0
        let rc = pv_uffd_api(raw, Features.requested.rawValue, &answered, &ioctls)
        if rc < 0 {
            let e = Errno(rawValue: -rc)
            fd.close()
            if e == .invalidArgument, let supported = supportedFeatures() {
                let missing = Features(rawValue: Features.requested.rawValue & ~supported.rawValue)
                if !missing.isEmpty {
                    throw WriteTrackingError.unsupported(step: .negotiate, missing: missing.description, errno: e)
                }
            }
            throw WriteTrackingError.failed(step: .negotiate, context: "features \(Features.requested)", errno: e)
        }
        granted = Features(rawValue: answered)
        descriptor = fd
        return fd
    }

    /// What the kernel offers, asked on a descriptor of its own (UFFDIO_API is answered once per
    /// descriptor): nil when even that fails.
    private static func supportedFeatures() -> Features? {
        let raw = pv_userfaultfd(descriptorFlags)
        guard raw >= 0 else { return nil }
        defer { FileDescriptor(rawValue: raw).close() }
        var answered: UInt64 = 0, ioctls: UInt64 = 0
        guard pv_uffd_api(raw, 0, &answered, &ioctls) == 0 else { return nil }
        return Features(rawValue: answered)
    }

    /// The features the kernel reported when this process negotiated (every feature it supports),
    /// or nil before the first `register`.
    public static var kernelFeatures: Features? { lock.withLock { descriptor == nil ? nil : granted } }

    /// The ranges this process registered.
    public static var registeredRanges: [Range<UInt64>] { lock.withLock { ranges } }

    /// Ends write tracking in this process: closes its userfaultfd, and with it every
    /// registration (the kernel clears them: see above), so writes stop costing a fault. A later
    /// `register` starts over with a new descriptor. For a migration that was cancelled.
    public static func stop() {
        lock.withLock {
            descriptor?.close()
            descriptor = nil
            ranges = []
        }
    }

    // MARK: supervisor side

    /// One mapping of a file in a process (a line of /proc/PID/maps).
    public struct FileMapping: Equatable, Sendable, CustomStringConvertible {
        /// The virtual addresses it covers.
        public var range: Range<UInt64>
        /// The byte of the file mapped at `range.lowerBound`.
        public var fileOffset: UInt64
        public var readable: Bool
        public var writable: Bool
        /// MAP_SHARED ('s'), not private ('p').
        public var shared: Bool

        public var description: String {
            "\(hex(range)) \(readable ? "r" : "-")\(writable ? "w" : "-")\(shared ? "s" : "p") at file offset 0x\(String(fileOffset, radix: 16))"
        }
    }

    /// The virtual ranges in process `pid` that map the file `file` refers to (same device and
    /// inode), in address order. A domain may map its RAM several times, in pieces, or not at
    /// all: every mapping is returned, each VMA on its own (adjacent VMAs stay apart: they can
    /// differ in registration).
    public static func mappings(of pid: pid_t, file: FileDescriptor) throws -> [Range<UInt64>] {
        try fileMappings(of: pid, file: file).map(\.range)
    }

    /// As `mappings(of:file:)`, with each mapping's file offset and permissions (what a page's
    /// frame number is derived from: (fileOffset + address - range.lowerBound) / pageSize).
    public static func fileMappings(of pid: pid_t, file: FileDescriptor) throws -> [FileMapping] {
        let st: FileStatus
        do { st = try FileStatus(file) } catch let e as SystemError {
            throw WriteTrackingError.failed(step: .maps, context: "fstat \(file)", errno: e.errno)
        }
        let path = "/proc/\(pid)/maps"
        // A process has at most vm.max_map_count (65530 by default) VMAs; a line is about 100
        // bytes plus its path. Read it all, and refuse rather than cut it short.
        let limit = 256 << 20
        let bytes: [UInt8]
        do { bytes = try FileIO.read(path, limit: limit) } catch let e as SystemError {
            throw WriteTrackingError.failed(step: .maps, context: path, errno: e.errno)
        }
        guard bytes.count < limit else {
            throw WriteTrackingError.failed(step: .maps, context: "\(path): more than \(limit) bytes", errno: .noMemory)
        }
        return parseMaps(bytes, device: st.device, inode: st.inode)
    }

    /// The lines of a /proc/PID/maps text that map device `device` (an st_dev value) and inode
    /// `inode`. Lines that do not parse are skipped.
    static func parseMaps(_ bytes: [UInt8], device: UInt64, inode: UInt64) -> [FileMapping] {
        // st_dev as glibc encodes it (gnu_dev_major / gnu_dev_minor); maps prints "major:minor" in hex.
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        var out: [FileMapping] = []
        for line in bytes.split(separator: 0x0A) {
            // start-end perms offset major:minor inode [path]; the path may hold spaces: ignored.
            let fields = line.split(separator: 0x20, maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count >= 5, let ino = UInt64(ascii: fields[4], radix: 10), ino == inode else { continue }
            let dev = fields[3].split(separator: UInt8(ascii: ":"))
            guard dev.count == 2, UInt64(ascii: dev[0], radix: 16) == major, UInt64(ascii: dev[1], radix: 16) == minor else { continue }
            let bounds = fields[0].split(separator: UInt8(ascii: "-"))
            guard bounds.count == 2, let lo = UInt64(ascii: bounds[0], radix: 16), let hi = UInt64(ascii: bounds[1], radix: 16), lo < hi,
                  let offset = UInt64(ascii: fields[2], radix: 16) else { continue }
            let perms = Array(fields[1])
            guard perms.count >= 4 else { continue }
            out.append(FileMapping(range: lo..<hi, fileOffset: offset, readable: perms[0] == UInt8(ascii: "r"),
                                   writable: perms[1] == UInt8(ascii: "w"), shared: perms[3] == UInt8(ascii: "s")))
        }
        return out
    }
}

extension UInt64 {
    /// Parses ASCII digits in `radix` (no sign, no prefix); nil for anything else or an overflow.
    init?(ascii: ArraySlice<UInt8>, radix: UInt64) {
        guard !ascii.isEmpty else { return nil }
        var v: UInt64 = 0
        for c in ascii {
            let d: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt64(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt64(c - UInt8(ascii: "A") + 10)
            default: return nil
            }
            guard d < radix else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: radix)
            let (s, o2) = m.addingReportingOverflow(d)
            guard !o1, !o2 else { return nil }
            v = s
        }
        self = v
    }
}

/// The supervisor's reader of one process's write record: /proc/PID/pagemap opened once, then
/// PAGEMAP_SCAN per round. Not thread-safe: one round at a time.
///
/// Round semantics (Linux 6.18, measured by `WriteTrackingTests`). A page reads as written when
/// its page-table entry lacks the uffd-wp bit or marker. Right after `register` nothing is
/// protected yet, so the first scan reports every page of the range, populated or not (an empty
/// entry, or no page table at all, counts as unprotected; with PM_SCAN_WP_MATCHING the kernel then
/// puts a marker there, WP_UNPOPULATED). So: send every page in round 1, then `reset` the range
/// (one walk, nothing returned) to start a clean interval; from then on `collect` returns exactly
/// the pages written since the previous collect or reset. Reads are never reported. A write is
/// never missed: it finds the bit or the marker, and the kernel clears it as it lets the write
/// through, which is what the next scan sees.
public final class DirtyScanner {
    public let pid: pid_t
    private let pagemap: FileDescriptor
    private let capacity: Int
    private let regions: UnsafeMutablePointer<pv_page_region>
    private var closed = false

    /// Opens /proc/`pid`/pagemap (the caller must be allowed to read the process's memory map:
    /// root, or its parent-and-same-uid under Yama scope 1). `regionCapacity` runs of pages are
    /// fetched per ioctl; more are fetched by walking on from where the kernel stopped.
    public init(pid: pid_t, regionCapacity: Int = 4096) throws {
        precondition(regionCapacity > 0)
        let path = "/proc/\(pid)/pagemap"
        do {
            pagemap = try FileDescriptor.open(path, O_RDONLY)
        } catch let e as SystemError {
            throw WriteTrackingError.failed(step: .openPagemap, context: path, errno: e.errno)
        }
        self.pid = pid
        capacity = regionCapacity
        regions = .allocate(capacity: regionCapacity)
    }

    deinit {
        close()
        regions.deallocate()
    }

    /// Closes the pagemap descriptor; idempotent. The scanner cannot be used after.
    public func close() {
        guard !closed else { return }
        closed = true
        pagemap.close()
    }

    /// The page ranges (virtual addresses, merged where adjacent) in `range` written since the
    /// last collect with `clear` or `reset` of them, in address order. With `clear` (the
    /// default) the same walk write-protects them again, so the next collect reports only later
    /// writes; without it nothing changes.
    ///
    /// `range` must be whole pages and should be one registered mapping (one element of
    /// `WriteTracking.mappings(of:file:)`): a mapping in it that is not registered throws
    /// `.notTracked`; addresses with no mapping at all are skipped silently. After any error the
    /// pages the failing call had re-protected are not reported: treat the whole range as
    /// written for that round.
    public func collect(range: Range<UInt64>, clear: Bool = true) throws -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        try walk(range, clear: clear, report: true) { start, end in
            if let last = out.last, last.upperBound == start {
                out[out.count - 1] = last.lowerBound..<end
            } else {
                out.append(start..<end)
            }
        }
        return out
    }

    /// Write-protects every page of `range` and reports none: the start of a clean interval (after
    /// round 1 sent every page). The same errors as `collect`.
    public func reset(range: Range<UInt64>) throws {
        try walk(range, clear: true, report: false) { _, _ in }
    }

    /// The number of pages in `ranges`.
    public static func pageCount(_ ranges: [Range<UInt64>]) -> Int {
        ranges.reduce(0) { $0 + Int(($1.upperBound - $1.lowerBound) / WriteTracking.pageSize) }
    }

    private func walk(_ range: Range<UInt64>, clear: Bool, report: Bool, _ each: (UInt64, UInt64) -> Void) throws {
        precondition(!closed, "DirtyScanner used after close")
        let page = WriteTracking.pageSize
        guard range.lowerBound % page == 0, range.upperBound % page == 0 else {
            throw WriteTrackingError.failed(step: .scan, context: "pid \(pid) \(hex(range)): not whole pages", errno: .invalidArgument)
        }
        var at = range.lowerBound
        while at < range.upperBound {
            var walkEnd: UInt64 = 0
            let n = pv_pagemap_scan_written(pagemap.rawValue, at, range.upperBound, clear ? 1 : 0,
                                            report ? regions : nil, report ? UInt64(capacity) : 0, &walkEnd)
            if n < 0 {
                let e = Errno(rawValue: -n)
                switch e {
                case .notPermitted:
                    throw WriteTrackingError.notTracked(pid: pid, range: range)
                case Errno(rawValue: ENOTTY):
                    throw WriteTrackingError.unsupported(step: .scan, missing: "PAGEMAP_SCAN (Linux 6.7)", errno: e)
                default:
                    throw WriteTrackingError.failed(step: .scan, context: "pid \(pid) \(hex(at..<range.upperBound))", errno: e)
                }
            }
            for i in 0..<Int(n) { each(regions[i].start, regions[i].end) }
            // The kernel stops early only when the output vector is full; it never goes backwards.
            guard walkEnd > at else {
                throw WriteTrackingError.failed(step: .scan, context: "pid \(pid) \(hex(at..<range.upperBound)): no progress (walk_end 0x\(String(walkEnd, radix: 16)))", errno: .ioError)
            }
            at = walkEnd
        }
    }
}

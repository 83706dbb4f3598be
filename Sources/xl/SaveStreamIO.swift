import FoundationEssentials
import LinuxHost
import ProcvisorABI
import Toolstack

/// After a vectored transfer of `n` bytes: the vectors from `first` on that are done are skipped,
/// and the one it ended in is cut to what is left of it.
func advance(_ vectors: inout [IOVector], _ first: inout Int, by n: Int) {
    var left = n
    while left > 0, first < vectors.count {
        if left >= vectors[first].iov_len {
            left -= vectors[first].iov_len
            first += 1
        } else {
            vectors[first].iov_base += left
            vectors[first].iov_len -= left
            left = 0
        }
    }
}

/// A save stream's bytes into a file or a pipe: writev, looping over short writes.
final class DescriptorSink: SaveStreamSink {
    let fd: FileDescriptor
    let what: String
    init(_ fd: FileDescriptor, what: String) {
        self.fd = fd
        self.what = what
    }

    func write(_ pieces: [UnsafeRawBufferPointer]) throws {
        var vectors = pieces.filter { $0.count > 0 }.map { IOVector(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var first = 0
        while first < vectors.count {
            let count = min(vectors.count - first, 1024)
            let n: Int
            switch vectors.withUnsafeBufferPointer({ fd.write(vector: $0.baseAddress! + first, count: count) }) {
            case let .success(k): n = k
            case .failure(.interrupted): continue
            case let .failure(e): throw SystemError("writev", what, errno: e)
            }
            advance(&vectors, &first, by: n)
        }
    }
}

/// A save stream's bytes from a file or a pipe.
final class DescriptorSource: SaveStreamSource {
    let fd: FileDescriptor
    init(_ fd: FileDescriptor) { self.fd = fd }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try fd.read(into: buffer) }
    func read(into buffers: [UnsafeMutableRawBufferPointer]) throws -> Int {
        let vectors = buffers.prefix(1024).map { IOVector(iov_base: $0.baseAddress, iov_len: $0.count) }
        while true {
            switch vectors.withUnsafeBufferPointer({ fd.read(vector: $0.baseAddress!, count: $0.count) }) {
            case let .success(n): return n
            case .failure(.interrupted): continue
            case let .failure(e): throw SystemError("readv", "the save stream", errno: e)
            }
        }
    }
}

/// Sends a domain's image piece by piece: the headers, then pages (all of them once, then those
/// written since, for a live migration), then the rest. Pages are read from the domain's RAM
/// memfd with positioned reads, a batch at a time, into one buffer that stays in the cache while
/// it is checksummed and written out: no mapping of the whole RAM to fault in and tear down
/// (that cost as much as the reads), and the bytes sent are the bytes checked even while a
/// running domain writes the page (a page written while it is read is in the next round's log
/// anyway).
final class ImageSender {
    let writer: SaveStreamWriter
    let ram: FileDescriptor
    let span: UInt64
    private let bounce: SharedMapping
    /// Pages sent so far, data or not.
    private(set) var pagesSent = 0
    private(set) var bytesSent: UInt64 = 0

    init(sink: SaveStreamSink, ram: FileDescriptor, info: SavedDomainInfo, memory: SavedMemory, config: DomainConfig) throws {
        span = memory.spanPages
        self.ram = ram
        bounce = try SharedMapping(anonymous: SaveFormat.maxBatch * SaveFormat.pageSize)
        bounce.prefault(forWriting: true)
        writer = SaveStreamWriter(sink: sink)
        writer.xlHeader(config: Array(try JSONEncoder().encode(config)))
        writer.imageHeader(xenMajor: UInt32(ProcvisorVersion.major), xenMinor: UInt32(ProcvisorVersion.minor))
        writer.record(.domainInfo, Array(try JSONEncoder().encode(info)))
        writer.record(.memory, memory.encode())
    }

    deinit { bounce.unmap() }

    /// Sends `runs` of populated pages. With `skipHoles`, pages the memfd holds no data for go as
    /// XALLOC (populated, reads as zero) without contents.
    func send(_ runs: [PFNRun], skipHoles: Bool) throws {
        let extents = skipHoles ? try ram.dataExtents(size: Int64(span) * Int64(SaveFormat.pageSize)) : []
        var batch: [(pfn: UInt64, type: SavePageType)] = []
        batch.reserveCapacity(SaveFormat.maxBatch)
        var filled = 0  // pages of the batch with data, read (or to be read) into the buffer
        var pending = PFNRun(start: 0, count: 0)  // the last of them, not read yet
        var e = 0
        func hasData(_ pfn: UInt64) -> Bool {
            guard skipHoles else { return true }
            let at = Int64(pfn) * Int64(SaveFormat.pageSize)
            while e < extents.count, extents[e].upperBound <= at { e += 1 }
            return e < extents.count && extents[e].lowerBound < at + Int64(SaveFormat.pageSize)
        }
        func readPending() throws {
            guard pending.count > 0 else { return }
            let into = bounce.base + (filled - Int(pending.count)) * SaveFormat.pageSize
            let length = Int(pending.count) * SaveFormat.pageSize
            var done = 0
            while done < length {
                let n = try ram.read(into: UnsafeMutableRawBufferPointer(start: into + done, count: length - done),
                                     at: Int64(pending.start) * Int64(SaveFormat.pageSize) + Int64(done))
                if n == 0 {
                    // Past the end of the memfd: reads as zero, as the domain sees it.
                    (into + done).initializeMemory(as: UInt8.self, repeating: 0, count: length - done)
                    break
                }
                done += n
            }
            pending.count = 0
        }
        func flush() throws {
            guard !batch.isEmpty else { return }
            try readPending()
            try writer.pages(batch, contiguous: bounce.base)
            pagesSent += batch.count
            bytesSent += UInt64(filled * SaveFormat.pageSize)
            batch.removeAll(keepingCapacity: true)
            filled = 0
        }
        for run in runs {
            for pfn in run.start..<(run.start + run.count) where pfn < span {
                if hasData(pfn) {
                    batch.append((pfn, .normal))
                    if pending.count > 0, pending.start + pending.count != pfn { try readPending() }
                    if pending.count == 0 { pending.start = pfn }
                    pending.count += 1
                    filled += 1
                } else {
                    batch.append((pfn, .allocated))
                }
                if batch.count == SaveFormat.maxBatch { try flush() }
            }
        }
        try flush()
    }

    /// Says these pages are no longer populated (XTAB, no data).
    func sendAbsent(_ runs: [PFNRun]) throws {
        var batch: [(pfn: UInt64, type: SavePageType)] = []
        for run in runs {
            for pfn in run.start..<(run.start + run.count) where pfn < span {
                batch.append((pfn, .absent))
                if batch.count == SaveFormat.maxBatch {
                    try writer.pages(batch) { _ in fatalError("XTAB pages carry no data") }
                    batch.removeAll(keepingCapacity: true)
                }
            }
        }
        if !batch.isEmpty { try writer.pages(batch) { _ in fatalError("XTAB pages carry no data") } }
    }

    /// The records after the pages, and END.
    func finish(_ s: SuspendedDomain) throws {
        writer.record(.xenstoreData, SavedXenStore.encode(s.nodes.map { ($0.path, $0.value) }))
        writer.record(.console, Array(s.console))
        writer.record(.resumeRecord, Array(s.resumeRecord))
        try writer.end()
    }
}

enum SaveStreamIO {
    /// Writes a suspended domain's image: the xl header with `config`, the records, its pages
    /// read from `ram` (populated pages that were never written go as XALLOC, with no data).
    static func write(_ s: SuspendedDomain, ram: FileDescriptor, config: DomainConfig, to sink: SaveStreamSink) throws {
        let sender = try ImageSender(sink: sink, ram: ram, info: s.info, memory: s.memory, config: config)
        try sender.send(s.populated, skipHoles: true)
        try sender.finish(s)
    }

    /// Writes the pages read into `bounce` (the i-th is pfn `pfns[i]`) into the RAM memfd, one
    /// vectored positioned write per run of consecutive pfns.
    static func writeBounced(_ pfns: [UInt64], from bounce: SharedMapping, to ram: FileDescriptor) throws {
        var i = 0
        var vectors: [IOVector] = []
        vectors.reserveCapacity(pfns.count)
        while i < pfns.count {
            var j = i + 1
            while j < pfns.count, j - i < 1024, pfns[j] == pfns[j - 1] + 1 { j += 1 }
            vectors.removeAll(keepingCapacity: true)
            for k in i..<j { vectors.append(IOVector(iov_base: bounce.base + k * SaveFormat.pageSize, iov_len: SaveFormat.pageSize)) }
            var done = 0, first = 0
            let total = (j - i) * SaveFormat.pageSize
            while done < total {
                let n: Int
                switch vectors.withUnsafeBufferPointer({ ram.write(vector: $0.baseAddress! + first, count: $0.count - first, at: Int64(pfns[i]) * 4096 + Int64(done)) }) {
                case let .success(k) where k > 0: n = k
                case .success: throw SystemError("pwritev", "the domain's RAM", errno: .ioError)
                case .failure(.interrupted): continue
                case let .failure(e): throw SystemError("pwritev", "the domain's RAM at pfn \(pfns[i])", errno: e)
                }
                done += n
                advance(&vectors, &first, by: n)
            }
            i = j
        }
    }

    /// What a restore read besides the pages.
    struct Restored {
        var domid: UInt16
        var name: String
    }

    /// Reads an image and makes a domain of it through `client`: `.restoreBegin` once the
    /// MEMORY record is in, the pages straight into the new domain's RAM, `.restoreFinish` at
    /// END. `configOverride` replaces the saved config; `rename` the saved name.
    static func restore(from source: SaveStreamSource, client: inout ControlClient, configOverride: DomainConfig?,
                        rename: ((String) -> String)? = nil, paused: Bool,
                        onHeader: (DomainConfig) -> Void = { _ in }) throws -> Restored {
        var started: UInt16?
        // Out of the domain's cgroup before it is started or destroyed (a cgroup with a process
        // in it cannot be removed).
        defer { DomainCgroup.leave() }
        do {
            return try restoreStream(from: source, client: &client, configOverride: configOverride, rename: rename, paused: paused,
                                     onHeader: onHeader, started: &started)
        } catch {
            DomainCgroup.leave()
            // The domain made for it goes before xl says the restore failed (as libxl destroys
            // it): nothing half-restored is left, not even for a moment.
            if let id = started { _ = client.request(.destroy(domain: String(id))) }
            throw error
        }
    }

    private static func restoreStream(from source: SaveStreamSource, client: inout ControlClient, configOverride: DomainConfig?,
                                      rename: ((String) -> String)?, paused: Bool,
                                      onHeader: (DomainConfig) -> Void, started: inout UInt16?) throws -> Restored {
        let reader = SaveStreamReader(source: source)
        let header = try reader.xlHeader()
        var config: DomainConfig
        if let configOverride {
            config = configOverride
        } else {
            guard header.isJSON else { throw SaveStreamError(record: nil, type: nil, offset: 48, problem: "the saved config is not JSON") }
            do {
                config = try JSONDecoder().decode(DomainConfig.self, from: Data(header.config))
            } catch {
                throw SaveStreamError(record: nil, type: nil, offset: 52, problem: "the saved config cannot be read: \(error)")
            }
        }
        try reader.imageHeader()
        var info: SavedDomainInfo?
        var memory: SavedMemory?
        var ramDescriptor: FileDescriptor?
        // Pages land in a small buffer first (checked there, hot in the cache), then go into the
        // RAM memfd with positioned writes: no mapping of the domain's RAM to set up and tear
        // down, and shmem pages written whole are never zeroed first.
        let bounce = try SharedMapping(anonymous: SaveFormat.maxBatch * 2 * SaveFormat.pageSize)
        bounce.prefault(forWriting: true)
        var bounced: [UInt64] = []
        bounced.reserveCapacity(SaveFormat.maxBatch * 2)
        defer { ramDescriptor?.close() }
        var domid: UInt16?
        var populated: [UInt64] = []  // a bitmap of the span
        var nodes: [SavedNode] = [], console: [UInt8] = [], record: [UInt8] = []
        func fault(_ problem: String) -> SaveStreamError {
            SaveStreamError(record: reader.recordIndex, type: nil, offset: reader.offset, problem: problem)
        }
        while true {
            bounced.removeAll(keepingCapacity: true)
            let next = try reader.next { pfn, _ in
                guard let memory, ramDescriptor != nil else { throw fault("PAGE_DATA before the MEMORY record") }
                guard pfn < memory.spanPages else { throw fault("pfn \(pfn) is outside the domain's \(memory.spanPages)-page space") }
                guard bounced.count < SaveFormat.maxBatch * 2 else { throw fault("more pages in one record than a batch holds") }
                bounced.append(pfn)
                return bounce.base + (bounced.count - 1) * SaveFormat.pageSize
            }
            switch next {
            case let .pages(pages):
                guard let memory, domid != nil, let ram = ramDescriptor else { throw fault("PAGE_DATA before the MEMORY record") }
                try Self.writeBounced(bounced, from: bounce, to: ram)
                for p in pages {
                    guard p.pfn < memory.spanPages else { throw fault("pfn \(p.pfn) is outside the domain's \(memory.spanPages)-page space") }
                    let word = Int(p.pfn / 64), bit = UInt64(1) << (p.pfn % 64)
                    switch p.type {
                    case .normal, .allocated:
                        populated[word] |= bit
                    case .absent:
                        populated[word] &= ~bit
                        // A later round says the page went away: it reads as zero again.
                        if let fd = ramDescriptor {
                            try MemFD.punchHole(fd, offset: Int(p.pfn) * SaveFormat.pageSize, length: SaveFormat.pageSize)
                        }
                    }
                }
            case let .data(type, body):
                switch type {
                case .domainInfo:
                    guard info == nil else { throw fault("a second DOMAIN_INFO record") }
                    do {
                        info = try JSONDecoder().decode(SavedDomainInfo.self, from: Data(body))
                    } catch {
                        throw fault("DOMAIN_INFO cannot be read: \(error)")
                    }
                case .memory:
                    guard memory == nil else { throw fault("a second MEMORY record") }
                    guard let i = info else { throw fault("MEMORY before DOMAIN_INFO") }
                    let m: SavedMemory
                    do { m = try SavedMemory.decode(body) } catch { throw fault("\(error)") }
                    guard m.spanPages > 0, m.spanPages <= 1 << 31 else { throw fault("a pseudo-physical space of \(m.spanPages) pages") }
                    memory = m
                    // The name the domain had when saved (xl rename included), unless a config replaces it.
                    if configOverride == nil { config.name = i.name }
                    if let rename { config.name = rename(config.name) }
                    onHeader(config)
                    switch client.request(.restoreBegin(RestorePlan(config: config, info: i, memory: m, paused: paused))) {
                    case let .restoring(id, memoryCgroup):
                        started = id
                        // The kernel charges a shmem page to the cgroup of whoever faults it in:
                        // writing the pages from inside the domain's memory cgroup charges them to
                        // the domain, as if it had written them itself (xl leaves it when it exits;
                        // without the right to join, they are charged to xl and the domain's
                        // reservation check still bounds them).
                        if let memoryCgroup { DomainCgroup.join(memoryCgroup) }
                        guard let fd = client.receivedFDs.popLast() else { throw fault("the supervisor sent no RAM descriptor") }
                        domid = id
                        ramDescriptor = fd
                        populated = [UInt64](repeating: 0, count: Int((m.spanPages + 63) / 64))
                    case let .error(msg):
                        throw RestoreRefused(message: msg)
                    case let other:
                        throw RestoreRefused(message: "unexpected reply \(other)")
                    }
                case .xenstoreData:
                    do { nodes = try SavedXenStore.decode(body).map { SavedNode(path: $0.path, value: $0.value) } } catch { throw fault("\(error)") }
                case .console: console = body
                case .resumeRecord: record = body
                default: break
                }
            case .end:
                guard let memory, let id = domid else { throw fault("END before the MEMORY record: the image holds no domain") }
                var runs: [PFNRun] = []
                var pfn: UInt64 = 0
                while pfn < memory.spanPages {
                    if populated[Int(pfn / 64)] & (1 << (pfn % 64)) != 0 {
                        let start = pfn
                        while pfn < memory.spanPages, populated[Int(pfn / 64)] & (1 << (pfn % 64)) != 0 { pfn += 1 }
                        runs.append(PFNRun(start: start, count: pfn - start))
                    } else {
                        pfn += 1
                    }
                }
                DomainCgroup.startLeaving()
                switch client.request(.restoreFinish(domid: id, contents: RestoreContents(populated: runs, nodes: nodes, console: Data(console),
                                                                                            resumeRecord: Data(record), paused: paused))) {
                case .created:
                    return Restored(domid: id, name: config.name)
                case let .error(msg):
                    throw RestoreRefused(message: msg)
                case let other:
                    throw RestoreRefused(message: "unexpected reply \(other)")
                }
            }
        }
    }

}

/// xl's stay in a restored domain's memory cgroup while it writes the domain's pages. Moving a
/// process between cgroups takes milliseconds (the kernel waits for an RCU grace period), so the
/// move out runs on a thread of its own while the restore finishes; `leave` waits for it.
enum DomainCgroup {
    nonisolated(unsafe) private static var home: String?
    nonisolated(unsafe) private static var leaving: PosixThread?

    static func join(_ path: String) {
        guard home == nil, let (mine, _) = MemoryCgroup.current() else { return }
        if (try? FileIO.write(path + "/cgroup.procs", "\(Process.pid)\n")) != nil { home = mine }
    }

    /// Starts going back home; `leave` finishes. (Should the domain go meanwhile, the supervisor
    /// moves xl out itself before it removes the cgroup.)
    static func startLeaving() {
        guard let mine = home, leaving == nil else { return }
        home = nil
        leaving = try? PosixThread.start { try? FileIO.write(mine + "/cgroup.procs", "\(Process.pid)\n") }
        if leaving == nil { try? FileIO.write(mine + "/cgroup.procs", "\(Process.pid)\n") }
    }

    static func leave() {
        startLeaving()
        leaving?.join()
        leaving = nil
    }
}

/// The supervisor refused a restore (its message says why).
struct RestoreRefused: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

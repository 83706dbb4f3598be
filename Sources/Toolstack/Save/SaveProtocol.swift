import FoundationEssentials
import ProcvisorABI

/// Pages `start ..< start + count` (a run of pfns).
public struct PFNRun: Codable, Equatable, Sendable {
    public var start: UInt64
    public var count: UInt64
    public init(start: UInt64, count: UInt64) {
        self.start = start
        self.count = count
    }

    /// Pages in `runs`.
    public static func total(_ runs: [PFNRun]) -> UInt64 { runs.reduce(0) { $0 + $1.count } }

    /// The pages in both (sorted, non-overlapping runs in, the same out).
    public static func intersect(_ a: [PFNRun], _ b: [PFNRun]) -> [PFNRun] {
        var out: [PFNRun] = []
        var i = 0, j = 0
        while i < a.count, j < b.count {
            let lo = max(a[i].start, b[j].start), hi = min(a[i].start + a[i].count, b[j].start + b[j].count)
            if lo < hi { out.append(PFNRun(start: lo, count: hi - lo)) }
            if a[i].start + a[i].count < b[j].start + b[j].count { i += 1 } else { j += 1 }
        }
        return out
    }

    /// The pages of `a` not in `b` (sorted, non-overlapping runs in, the same out).
    public static func subtract(_ a: [PFNRun], _ b: [PFNRun]) -> [PFNRun] {
        var out: [PFNRun] = []
        var j = 0
        for run in a {
            var start = run.start
            let end = run.start + run.count
            while j < b.count, b[j].start + b[j].count <= start { j += 1 }
            var k = j
            while k < b.count, b[k].start < end {
                if b[k].start > start { out.append(PFNRun(start: start, count: b[k].start - start)) }
                start = max(start, b[k].start + b[k].count)
                k += 1
            }
            if start < end { out.append(PFNRun(start: start, count: end - start)) }
        }
        return out
    }

    /// Sorted runs covering exactly the pfns in `pfns` (any order, duplicates allowed).
    public static func runs(of pfns: [UInt64]) -> [PFNRun] {
        var out: [PFNRun] = []
        for p in pfns.sorted() {
            if let last = out.last, p < last.start + last.count { continue }
            if var last = out.last, p == last.start + last.count {
                last.count += 1
                out[out.count - 1] = last
            } else {
                out.append(PFNRun(start: p, count: 1))
            }
        }
        return out
    }
}

/// The domain's identity in a save file (the DOMAIN_INFO record, JSON).
public struct SavedDomainInfo: Codable, Equatable, Sendable {
    public var name: String
    public var uuid: String
    /// The domid it had when saved (informational: a restore gets a new one, as in Xen).
    public var domid: UInt16
    public init(name: String, uuid: String, domid: UInt16) {
        self.name = name
        self.uuid = uuid
        self.domid = domid
    }
}

/// A XenStore node the guest wrote, relative to its home (`data/...`).
public struct SavedNode: Codable, Equatable, Sendable {
    public var path: String
    public var value: [UInt8]
    public init(path: String, value: [UInt8]) {
        self.path = path
        self.value = value
    }
}

/// The reply to `.suspend`: everything a save needs but the pages, which xl reads through the
/// RAM memfd that comes with this reply (read-only). The domain stays suspended (stopped, its
/// SCHEDOP_shutdown unanswered) until `.resume` or `.destroy`.
public struct SuspendedDomain: Codable, Equatable, Sendable {
    public var info: SavedDomainInfo
    public var config: DomainConfig
    public var memory: SavedMemory
    /// The populated pfns (the P2M's valid entries), in runs.
    public var populated: [PFNRun]
    public var nodes: [SavedNode]
    /// Bytes travel as `Data` (base64 in the JSON), not as arrays of numbers.
    public var console: Data
    public var resumeRecord: Data
    public init(info: SavedDomainInfo, config: DomainConfig, memory: SavedMemory, populated: [PFNRun], nodes: [SavedNode],
                console: Data, resumeRecord: Data) {
        self.info = info
        self.config = config
        self.memory = memory
        self.populated = populated
        self.nodes = nodes
        self.console = console
        self.resumeRecord = resumeRecord
    }
}

/// The reply to `.dirtyLogStart` (with the RAM memfd, read-only): the domain runs on, and from
/// now on the pages it writes are logged for `.dirtyPages`.
public struct DirtyLogStart: Codable, Equatable, Sendable {
    public var info: SavedDomainInfo
    public var config: DomainConfig
    public var memory: SavedMemory
    public var populated: [PFNRun]
    /// How writes are tracked (for `xl migrate --debug`); nil when they cannot be, and
    /// `unavailable` says why: the migration then stops the domain for the whole copy.
    public var tracking: String?
    public var unavailable: String?
    public init(info: SavedDomainInfo, config: DomainConfig, memory: SavedMemory, populated: [PFNRun], tracking: String?, unavailable: String?) {
        self.info = info
        self.config = config
        self.memory = memory
        self.populated = populated
        self.tracking = tracking
        self.unavailable = unavailable
    }
}

/// The reply to `.dirtyPages`: the pages written (or populated, or given back) since the last
/// call, and which pages are populated now.
public struct DirtyPages: Codable, Equatable, Sendable {
    public var dirty: [PFNRun]
    public var populated: [PFNRun]
    public init(dirty: [PFNRun], populated: [PFNRun]) {
        self.dirty = dirty
        self.populated = populated
    }
}

/// `.restoreBegin`: a domain to make from a stream. The supervisor checks it as `xl create` does
/// (name free, kernel and disks present, machine memory for every populated page), makes the
/// domain (domid, name, RAM, devices) and starts its kernel, whose bootstrap waits for the pages,
/// and replies `.restoring` with the RAM memfd (writable). `paused`: it stays paused once it runs.
public struct RestorePlan: Codable, Equatable, Sendable {
    public var config: DomainConfig
    public var info: SavedDomainInfo
    public var memory: SavedMemory
    public var paused: Bool
    public init(config: DomainConfig, info: SavedDomainInfo, memory: SavedMemory, paused: Bool) {
        self.config = config
        self.info = info
        self.memory = memory
        self.paused = paused
    }
}

/// `.restoreFinish`: the rest of the stream; the supervisor populates `populated`, answers the
/// kernel's bootstrap telling it that it resumes, and replies `.created` once it engaged.
public struct RestoreContents: Codable, Equatable, Sendable {
    public var populated: [PFNRun]
    public var nodes: [SavedNode]
    public var console: Data
    public var resumeRecord: Data
    public var paused: Bool
    public init(populated: [PFNRun], nodes: [SavedNode], console: Data, resumeRecord: Data, paused: Bool) {
        self.populated = populated
        self.nodes = nodes
        self.console = console
        self.resumeRecord = resumeRecord
        self.paused = paused
    }
}

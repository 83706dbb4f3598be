import LinuxHost
import ProcvisorABI
import Toolstack

/// The write log of one domain during a live migration: the domain's runtime registered its
/// RAM mapping for userfaultfd write-protection (asynchronous), and the supervisor reads and
/// clears the written pages with PAGEMAP_SCAN on the domain's pagemap
/// (docs/migration-dirty-tracking.md).
final class DirtyLog {
    let scanner: DirtyScanner
    weak var owner: ControlConnection?
    init(scanner: DirtyScanner, owner: ControlConnection) {
        self.scanner = scanner
        self.owner = owner
    }
    deinit { scanner.close() }
}

extension Supervisor {
    /// `.dirtyLogStart`: every page of the domain's RAM mappings is write-protected, and from
    /// now on the pages it writes are logged. When the guest did not register its RAM (a kernel
    /// without asynchronous write-protection, or a guest that skipped the runtime), the reply
    /// says so and the migration copies with the domain stopped.
    func dirtyLogStart(_ spec: String, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else { return c.send(unknownDomain(spec)) }
        guard dom.hasProcess, !dom.released, dom.phase == .running, !dom.suspended else {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is not running"))
        }
        if dom.config.driverDomain {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is a driver domain: its backends hold host devices, it cannot be saved or migrated"))
        }
        if let log = dom.process.dirtyLog, log.owner != nil {
            return c.send(.error("domain \(dom.domid) (\(dom.name)) is already being migrated"))
        }
        guard let memory = machine.domains[dom.domid] else { return c.send(unknownDomain(spec)) }
        let ramFD: FileDescriptor
        do {
            ramFD = try FileDescriptor.open("/proc/self/fd/\(memory.ramFD.rawValue)", .readOnly)
        } catch {
            return c.send(.error("domain \(dom.domid) (\(dom.name)): cannot reopen its RAM read-only: \(error)"))
        }
        defer { ramFD.close() }
        var tracking: String?, unavailable: String?
        do {
            let mappings = try WriteTracking.fileMappings(of: dom.pid, file: memory.ramFD)
            guard !mappings.isEmpty else { throw CreateError("the guest has no mapping of its RAM") }
            let scanner = try DirtyScanner(pid: dom.pid)
            for m in mappings { try scanner.reset(range: m.range) }
            memory.changeLog = []
            dom.process.dirtyLog = DirtyLog(scanner: scanner, owner: c)
            tracking = "userfaultfd write-protect (async) read with PAGEMAP_SCAN, \(mappings.count) mapping(s) of its RAM"
        } catch {
            dom.process.dirtyLog = nil
            unavailable = "\(error)"
        }
        log("\(dom.label): write log \(tracking != nil ? "started" : "unavailable: \(unavailable ?? "")")")
        let start = DirtyLogStart(
            info: SavedDomainInfo(name: dom.name, uuid: dom.uuid, domid: dom.domid.rawValue), config: dom.config,
            memory: SavedMemory(spanPages: memory.spanPages, maxPages: memory.maxPages, populatedPages: memory.currentPages),
            populated: memory.populatedRuns(), tracking: tracking, unavailable: unavailable)
        c.send(.dirtyLogStarted(start), fds: [ramFD])
    }

    /// `.dirtyPages`: what the domain wrote since the last call, and what memory_op changed;
    /// the log starts again. A mapping that cannot be read counts as written whole.
    func dirtyPages(_ spec: String, from c: ControlConnection) {
        guard let dom = find(spec), let log = dom.process.dirtyLog, log.owner === c, dom.hasProcess,
              let memory = machine.domains[dom.domid] else {
            return c.send(.error("\(spec): no write log of this connection"))
        }
        var pfns: [UInt64] = memory.changeLog ?? []
        memory.changeLog = []
        var runs: [PFNRun] = []
        let mappings = (try? WriteTracking.fileMappings(of: dom.pid, file: memory.ramFD)) ?? []
        for m in mappings {
            let firstPFN = m.fileOffset / 4096
            // Only what can hold RAM: a mapping of the memfd past its span (a domain may map it
            // over any range it likes) is no page of its, and must not cost a scan per page.
            guard firstPFN < memory.spanPages else { continue }
            let pages = min((m.range.upperBound - m.range.lowerBound) / 4096, memory.spanPages - firstPFN)
            let range = m.range.lowerBound..<(m.range.lowerBound + pages * 4096)
            func pfnRun(_ r: Range<UInt64>) -> PFNRun {
                PFNRun(start: firstPFN + (r.lowerBound - m.range.lowerBound) / 4096, count: (r.upperBound - r.lowerBound) / 4096)
            }
            do {
                runs += try log.scanner.collect(range: range).map(pfnRun)
            } catch {
                // The pages it had re-protected before failing are not reported: all of it is dirty.
                runs.append(pfnRun(range))
                logger.warning("write log: a mapping could not be read; counted as written", metadata: ["domid": "\(dom.domid)", "error": "\(error)"])
            }
        }
        for r in runs { for p in r.start..<(r.start + r.count) where p < memory.spanPages { pfns.append(p) } }
        c.send(.dirtyPages(DirtyPages(dirty: PFNRun.runs(of: pfns), populated: memory.populatedRuns())))
    }

    /// The log ends (migration over, or its connection gone).
    func stopDirtyLog(_ dom: DomainRecord) {
        guard dom.process.dirtyLog != nil else { return }
        dom.process.dirtyLog = nil
        machine.domains[dom.domid]?.changeLog = nil
    }
}

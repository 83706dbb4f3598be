import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

enum LiveUpdateError: Error, CustomStringConvertible {
    /// The state handed over contradicts itself (or does not come from a supervisor at all).
    case badState(String)

    var description: String {
        switch self {
        case let .badState(why): return "live-update state: \(why)"
        }
    }

    static func cgroupVersion(_ s: String) throws -> MemoryCgroup.Version {
        guard let v = MemoryCgroup.Version(rawValue: s) else { throw badState("unknown cgroup version \(s)") }
        return v
    }
}

/// A live update under way: the new binary runs `--check-live-update-state` on a copy of the
/// state while this one goes on serving; when it says it can take the state over, this process
/// captures the state again and executes it.
final class LiveUpdateAttempt {
    let binary: String
    let requester: LiveUpdateRequester
    /// The `xl live-update` connection (nil for a XenStore request).
    weak var connection: ControlConnection?
    let pid: Int32
    /// The new binary, opened once: the file that was checked is the one executed, whatever
    /// happens to its path meanwhile (a build finishing).
    let executable: FileDescriptor
    let output: FileDescriptor
    var outputToken: UInt64 = 0
    var text: [UInt8] = []
    var timer: UInt64?

    init(binary: String, requester: LiveUpdateRequester, connection: ControlConnection?, pid: Int32, executable: FileDescriptor,
         output: FileDescriptor) {
        self.binary = binary
        self.requester = requester
        self.connection = connection
        self.pid = pid
        self.executable = executable
        self.output = output
    }
}

extension LiveUpdateImage {
    /// The state in the memfd `fd` (from offset 0), checked for magic and version.
    static func read(from fd: FileDescriptor) throws -> LiveUpdateImage {
        let size = try FileStatus(fd).size
        guard size > 0, size < 1 << 30 else { throw LiveUpdateError.badState("descriptor \(fd.rawValue) holds \(size) bytes") }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        while done < bytes.count {
            let n = try bytes.withUnsafeMutableBytes { try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]), at: Int64(done)) }
            guard n > 0 else { throw LiveUpdateError.badState("descriptor \(fd.rawValue) ended at byte \(done) of \(size)") }
            done += n
        }
        return try decode(bytes)
    }

    /// The state's layout: the magic line, the version (u32, little-endian), then the image in
    /// `BinaryCoder`'s form.
    func encoded(version: Int = LiveUpdateImage.currentVersion) throws -> [UInt8] {
        var out = Array((Self.magic + "\n").utf8)
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: version).littleEndian) { out += $0 }
        out += try BinaryCoder.encode(self)
        return out
    }

    static func decode(_ bytes: [UInt8]) throws -> LiveUpdateImage {
        let magicLine = Array((magic + "\n").utf8)
        guard bytes.count >= magicLine.count + 4, Array(bytes[0..<magicLine.count]) == magicLine else {
            throw LiveUpdateError.badState("not a supervisor state (no \"\(magic)\" line at its start)")
        }
        let v = bytes[magicLine.count..<magicLine.count + 4].reversed().reduce(0) { $0 << 8 | Int($1) }
        if v > currentVersion {
            throw LiveUpdateError.badState("state version \(v) is newer than this procvisord understands (\(currentVersion))")
        }
        if v < oldestVersion {
            throw LiveUpdateError.badState("state version \(v) is older than the oldest this procvisord takes over (\(oldestVersion))")
        }
        do {
            return try BinaryCoder.decode(LiveUpdateImage.self, from: Array(bytes[(magicLine.count + 4)...]))
        } catch {
            throw LiveUpdateError.badState("version \(v) state does not decode: \(error)")
        }
    }

    /// What the check run of a new binary verifies without touching any descriptor: whatever
    /// the takeover would refuse that can be seen in the values alone, so a state the new
    /// binary cannot take is a rollback, not the end of every domain.
    func validate() throws {
        func bad(_ why: String) -> LiveUpdateError { .badState(why) }
        _ = try XenStoreEngine(snapshot: xenstore.engine)
        let connections = Set(xenstore.engine.connectionIDs)
        let domids = Set(domains.map(\.state.domid))
        let m = machine
        guard m.totalFrames > 0, m.stride > 0, m.cursor <= m.totalFrames, m.returned.count % 8 == 0,
              m.totalFrames - m.cursor + UInt64(m.returned.count / 8) == m.freeFrames else {
            throw bad("machine memory: \(m.freeFrames) free of \(m.totalFrames) frames, cursor \(m.cursor), \(m.returned.count / 8) given back")
        }
        for c in [machine.domains.compactMap(\.cgroup), domains.compactMap(\.pidsCgroup),
                  (standbys ?? []).compactMap(\.memoryCgroup), (standbys ?? []).compactMap(\.pidsCgroup)].joined() {
            _ = try LiveUpdateError.cgroupVersion(c.version)
        }
        for ch in events.channels {
            for p in ch.ports where p.port == 0 || p.port >= UInt32(EventPages.maxPorts) || (p.kind == .virq && VIRQ(rawValue: p.virq) == nil) {
                throw bad("event channels: dom\(ch.domid) port \(p.port) (\(p.kind))")
            }
        }
        let pages = Set(grants.pages.map(\.fd))
        for t in grants.tables {
            for fd in Array(t.pages.values) + t.maptrack.map(\.page) where !pages.contains(fd) {
                throw bad("grant tables: dom\(t.domid) names page descriptor \(fd), which is not in the state")
            }
        }
        for d in domains {
            let own = [d.hypercallFD, d.consoleOutFD] + (d.boundListener.map { [$0] } ?? [])
            if let fd = d.watched.first(where: { !own.contains($0) }) { throw bad("dom\(d.state.domid) watches descriptor \(fd), which is none of its own") }
            for e in d.channelEvents where (try? ChannelEvent.decode(e)) == nil {
                throw bad("dom\(d.state.domid) has a queued channel event that does not decode")
            }
        }
        var standbyOf: Set<UInt16> = []
        let carried = Set(descriptors)
        for s in (standbys ?? []) where !s.retired {
            guard domids.contains(DomID(s.domid)) else {
                throw bad("the standby incarnation (pid \(s.pid)) of dom\(s.domid), which is not in the domain table")
            }
            guard standbyOf.insert(s.domid).inserted else { throw bad("dom\(s.domid) has two standby incarnations") }
            let fds = [s.hypercallFD, s.eventFD, s.consoleOutFD, s.consoleInFD] + (s.listener.map { [$0] } ?? [])
            if let fd = fds.first(where: { $0 < 0 || !carried.contains($0) }) {
                throw bad("the standby incarnation (pid \(s.pid)) of dom\(s.domid) names descriptor \(fd), which is not carried")
            }
        }
        for d in machine.domains where !domids.contains(DomID(d.domid)) {
            throw LiveUpdateError.badState("machine memory of dom\(d.domid), which is not in the domain table")
        }
        for dev in devices where !domids.contains(DomID(dev.frontend)) || !domids.contains(DomID(dev.backend)) {
            throw LiveUpdateError.badState("\(dev.kind) \(dev.frontend)/\(dev.devid) names a domain that is not in the table")
        }
        for dev in devices where (dev.block == nil) == (dev.network == nil)
            || (dev.block != nil && dev.kind != SplitDeviceType.block.kind) || (dev.network != nil && dev.kind != SplitDeviceType.network.kind) {
            throw bad("device \(dev.kind) \(dev.frontend)/\(dev.devid): its settings are not a \(dev.kind)'s")
        }
        let rings = Set(domains.compactMap { $0.storePageFD == nil ? nil : $0.state.domid.rawValue })
        for r in xenstore.rings where !rings.contains(r.domid) || (!r.broken && !connections.contains(r.id)) {
            throw bad("xenstore ring \(r.id) of dom\(r.domid): no store page, or no connection in the store")
        }
        for s in xenstore.sockets where !connections.contains(s.id) {
            throw bad("xenstore socket client \(s.id) has no connection in the store")
        }
    }
}

extension Supervisor {
    /// Why a live update cannot start now, if it cannot. What is refused is what would not
    /// survive the exec: work in progress that lives only in this process's timers and callbacks.
    func liveUpdateRefusal() -> String? {
        if stopping { return "the supervisor is stopping" }
        if let d = pendingRestores.keys.min() { return "a restore of dom\(d) is in progress" }
        for dom in domains.values.sorted(by: { $0.domid < $1.domid }) {
            if dom.hasProcess && dom.phase == .booting { return "\(dom.label) is still starting" }
            if dom.process.suspend != nil { return "\(dom.label) is being saved or migrated" }
            if dom.process.dirtyLog != nil { return "\(dom.label)'s writes are being logged for a migration" }
            if dom.createWaiter != nil || !dom.destroyWaiters.isEmpty || !dom.shutdownWaiters.isEmpty {
                return "xl commands are waiting on \(dom.label)"
            }
        }
        if let dev = devices.devices.values.first(where: { $0.removal != nil }) {
            return "\(devices.label(dev)) is being removed"
        }
        if let why = xenstore.liveUpdateRefusal { return why }
        if let d = consoles.attachedDomains.first { return "an xl console is attached to dom\(d) (detach it first)" }
        if control.consoleClients > 0 { return "an xl console is still being sent the last of its domain's output" }
        return nil
    }

    /// Everything this process holds, and (in `keep`) the descriptors the image names.
    func captureImage(requester: LiveUpdateRequester?, binary: String,
                      keep: inout [FileDescriptor]) throws -> LiveUpdateImage {
        guard let lock = lockFD, let controlListen = control.listenerDescriptor, let xsListen = xenstore.listenerDescriptor else {
            throw LiveUpdateError.badState("the supervisor has not started")
        }
        keep += [lock, controlListen, xsListen]
        var domainImages: [DomainImage] = []
        for dom in domains.values.sorted(by: { $0.domid < $1.domid }) {
            let p = dom.process
            let live = !p.released
            if live { keep += [p.hypercallFD, p.eventFD, p.consoleOutFD, p.consoleInFD] }
            if live, let l = p.boundListener { keep.append(l) }
            if let s = p.store { keep += [s.page.fd, s.kick] }
            for (_, fds) in p.pendingChannelEvents { keep += fds }
            domainImages.append(DomainImage(
                state: dom.state, pid: p.pid, startMonotonic: p.startMonotonic,
                hypercallFD: p.hypercallFD.rawValue, eventFD: p.eventFD.rawValue,
                consoleOutFD: p.consoleOutFD.rawValue, consoleInFD: p.consoleInFD.rawValue,
                watched: live ? p.watchTokens.map { $0.0.rawValue } : [],
                boundListener: live ? p.boundListener?.rawValue : nil,
                storePageFD: p.store?.page.fd.rawValue, storeKickFD: p.store?.kick.rawValue, storePort: p.store?.port.rawValue,
                pidsCgroup: p.pidsCgroup.map { CgroupImage(path: $0.path, version: $0.version.rawValue) },
                released: p.released, shutdownAckPending: p.shutdownAckTimer != nil,
                virqDeadline: loop.deadline(of: p.virqTimer),
                blockedSeqs: p.pendingBlocks.map(\.seq), blockedDeadlines: p.pendingBlocks.map { loop.deadline(of: $0.timer) },
                storeKept: p.storeKept,
                channelEvents: p.pendingChannelEvents.map { $0.event.encode() },
                channelEventFDs: p.pendingChannelEvents.map { $0.fds.map(\.rawValue) },
                channelBacklogSince: p.channelBacklogSince))
        }
        var deviceImages: [DeviceImage] = []
        for dev in devices.devices.values.sorted(by: { ($0.frontend, $0.devid) < ($1.frontend, $1.devid) }) {
            let logs = dev.inflightLogs.sorted { $0.key < $1.key }.map { q, l -> InflightLogImage in
                keep.append(l.fd)
                return InflightLogImage(queue: q, fd: l.fd.rawValue, bytes: l.bytes, incarnations: l.incarnations)
            }
            deviceImages.append(DeviceImage(kind: dev.type.kind, frontend: dev.frontend.rawValue, devid: dev.devid, backend: dev.backend.rawValue,
                                            block: (dev as? VirtualBlockDevice)?.settings, network: (dev as? VirtualNetworkDevice)?.settings,
                                            inflight: logs))
        }
        var image = LiveUpdateImage(
            pid: Process.pid, startTime: startTime, lockFD: lock.rawValue,
            controlListenFD: controlListen.rawValue, xenstoreListenFD: xsListen.rawValue,
            jail: jail, cgroupsUsable: cgroupsUsable, dmesg: dmesg.lines, driverRestarts: driverRestarts,
            keptTaps: keptTaps.sorted { $0.key < $1.key }.map { bridge, t in
                keep.append(t.fd)
                return KeptTapImage(bridge: bridge, backend: t.backend.rawValue, fd: t.fd.rawValue)
            },
            domidRover: domains.roverValue,
            machine: machine.image(keep: &keep), grants: grantService.image(keep: &keep), events: eventChannels.image(keep: &keep),
            xenstore: xenstore.image(keep: &keep), domains: domainImages, devices: deviceImages,
            consoleLogs: consoles.image(keep: &keep), control: control.image(keep: &keep),
            requester: requester, binary: binary, handoverStart: MonotonicClock.nanoseconds(),
            descriptors: [], recentShutdowns: domains.recentShutdowns.reduce(into: [:]) { $0[$1.key.rawValue] = $1.value.rawValue },
            standbys: standbyImages(keep: &keep))
        image.descriptors = Set(keep.map(\.rawValue)).sorted()
        if case let .control(fd)? = requester, !image.descriptors.contains(fd) {
            throw LiveUpdateError.badState("the connection that asked (descriptor \(fd)) is not among those carried")
        }
        return image
    }

    /// Writes `image` to a new memfd.
    func stateMemFD(_ image: LiveUpdateImage) throws -> FileDescriptor {
        // Test knob: stamp another layout version on the state, to see the new binary refuse it.
        let version = environment["PROCVISOR_TEST_LIVE_UPDATE_VERSION"].flatMap(Int.init) ?? LiveUpdateImage.currentVersion
        return try Self.memfd(try image.encoded(version: version))
    }

    static func memfd(_ bytes: [UInt8]) throws -> FileDescriptor {
        let fd = try MemFD.createUnsealed(name: "procvisord-live-update", size: bytes.count)
        do {
            try fd.writeAll(bytes)  // (readers use positioned reads: the file offset is shared)
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// `xl live-update` / XS_CONTROL `live-update -s`: checks the new binary against a copy of
    /// the state, then (from the event loop, when the check is done) hands over. Returns the
    /// answer when there is one now (a refusal); nil when the answer comes later.
    func beginLiveUpdate(binary: String, requester: LiveUpdateRequester, connection: ControlConnection?) -> String? {
        if liveUpdateAttempt != nil { return "a live update is already in progress" }
        if let why = liveUpdateRefusal() { return "live update refused: \(why)" }
        guard binary.hasPrefix("/") else { return "live update: the new binary must be given as an absolute path (got \(binary))" }
        guard FileIO.exists(binary) else { return "live update: \(binary): no such file" }
        guard FileIO.isExecutable(binary) else { return "live update: \(binary): not an executable file" }
        let executable: FileDescriptor
        do {
            executable = try FileDescriptor.open(binary, .readOnly)
        } catch {
            return "live update: cannot open \(binary): \(error)"
        }
        var keep: [FileDescriptor] = []
        let state: FileDescriptor
        do {
            state = try stateMemFD(try captureImage(requester: requester, binary: binary, keep: &keep))
        } catch {
            executable.close()
            return "live update: cannot capture the supervisor's state: \(error)"
        }
        // Only the check run needs the state (it gets its own copy as descriptor 3).
        defer { state.close() }
        let pipe: (read: FileDescriptor, write: FileDescriptor)
        let pid: Int32
        do {
            pipe = try FileDescriptor.pipe()
            do {
                pid = try Spawner.spawn(path: "/proc/\(Process.pid)/fd/\(executable.rawValue)", argv: [binary, "--check-live-update-state", "3"],
                                        env: environment.map { "\($0.key)=\($0.value)" },
                                        fds: [(.standardInput, 0), (pipe.write, 1), (pipe.write, 2), (state, 3)], limits: [], filter: nil)
            } catch {
                pipe.read.close()
                pipe.write.close()
                throw error
            }
            pipe.write.close()
            try pipe.read.setNonBlocking()
        } catch {
            executable.close()
            return "live update: cannot start \(binary): \(error)"
        }
        let attempt = LiveUpdateAttempt(binary: binary, requester: requester, connection: connection,
                                        pid: pid, executable: executable, output: pipe.read)
        liveUpdateAttempt = attempt
        attempt.outputToken = (try? loop.watch(pipe.read) { [unowned self] _ in liveUpdateOutput() }) ?? 0
        attempt.timer = loop.after(ms: Self.liveUpdateCheckTimeoutMs) { [weak self] in
            guard let self, let a = liveUpdateAttempt else { return }
            a.timer = nil
            try? Signals.send(Signals.kill, to: a.pid)
            liveUpdateChecked(status: nil, timedOut: true)
        }
        log("live update: checking \(binary) against the current state")
        logger.notice("live update: checking the new binary", metadata: ["binary": "\(binary)", "pid": "\(pid)"])
        return nil
    }

    static let liveUpdateCheckTimeoutMs: UInt64 = 10_000

    private func liveUpdateOutput() {
        guard let a = liveUpdateAttempt else { return }
        while let chunk = try? a.output.read(upTo: 4096), !chunk.isEmpty {
            if a.text.count < 16384 { a.text += chunk }
        }
    }

    /// SIGCHLD for the check run: true when `pid` was it.
    func liveUpdateCheckExited(pid: Int32, status: ProcessStatus) -> Bool {
        guard let a = liveUpdateAttempt, a.pid == pid else { return false }
        liveUpdateChecked(status: status, timedOut: false)
        return true
    }

    /// The check run is over: hand over, or give the error and go on as before.
    private func liveUpdateChecked(status: ProcessStatus?, timedOut: Bool) {
        guard let a = liveUpdateAttempt else { return }
        liveUpdateOutput()
        liveUpdateAttempt = nil
        loop.cancel(a.timer)
        loop.unwatch(a.output, token: a.outputToken)
        a.output.close()
        if timedOut { _ = try? ChildReaper.wait(a.pid) }
        let said = String(decoding: a.text.drop { $0 == 0x20 || (0x09...0x0d).contains($0) }
            .reversed().drop { $0 == 0x20 || (0x09...0x0d).contains($0) }.reversed(), as: UTF8.self)
        let accepted = !timedOut && status == .exited(0) && said.contains(Self.liveUpdateAcceptance)
        guard accepted else {
            let why: String
            switch status {
            case _ where timedOut: why = "did not answer within \(Self.liveUpdateCheckTimeoutMs / 1000) s"
            case .exited(0)?: why = "did not take the state over (it is not a procvisord that knows live update)"
            case let .exited(code)?: why = "exited with status \(code)"
            case let .signaled(sig)?: why = "was killed by signal \(sig)"
            case nil: why = "did not finish"
            }
            return finishLiveUpdate(a, "live update rolled back: \(a.binary) \(why)\(said.isEmpty ? "" : ": \(said)"); this supervisor goes on")
        }
        if let why = liveUpdateRefusal() {
            return finishLiveUpdate(a, "live update refused: \(why)")
        }
        handOver(a)
    }

    private func finishLiveUpdate(_ a: LiveUpdateAttempt, _ message: String) {
        a.executable.close()
        log(message)
        logger.error("live update failed", metadata: ["binary": "\(a.binary)", "reason": "\(message)"])
        switch a.requester {
        case .control: a.connection?.send(.error(message))
        case let .xenstore(connection, requestID): xenstore.answer(connection: connection, requestID: requestID, message)
        }
    }

    /// What the check run prints when it can take the state over.
    static let liveUpdateAcceptance = "procvisord: live-update state accepted"

    /// Captures the state again, clears close-on-exec on every descriptor it names and executes
    /// the new binary. Returns only when the exec failed (the flags are put back).
    private func handOver(_ a: LiveUpdateAttempt) {
        // Logged first, so the line is in the log the new binary continues.
        log("live update: handing over to \(a.binary) (\(domains.count) domains)")
        // An `xl live-update` that went away while the binary was checked has nobody to answer
        // (its descriptor number may name something else by now).
        var requester: LiveUpdateRequester? = a.requester
        if case .control = a.requester {
            requester = a.connection.flatMap { $0.closed ? nil : .control(fd: $0.fd.rawValue) }
        }
        var keep: [FileDescriptor] = []
        let state: FileDescriptor
        let t0 = MonotonicClock.nanoseconds()
        var tCaptured: UInt64 = 0
        do {
            let image = try captureImage(requester: requester, binary: a.binary, keep: &keep)
            tCaptured = MonotonicClock.nanoseconds()
            state = try stateMemFD(image)
        } catch {
            return finishLiveUpdate(a, "live update: cannot capture the supervisor's state: \(error)")
        }
        keep.append(state)
        var cleared: [FileDescriptor] = []
        var failure: String?
        for fd in keep {
            do {
                try fd.setCloseOnExec(false)
                cleared.append(fd)
            } catch {
                failure = "cannot keep descriptor \(fd.rawValue) open across the exec: \(error)"
                break
            }
        }
        if failure == nil {
            let size = (try? FileStatus(state).size) ?? 0
            logger.notice("live update: executing the new binary", metadata: [
                "binary": "\(a.binary)", "descriptors": "\(keep.count)", "state_bytes": "\(size)",
                "capture_ms": "\(Double(tCaptured - t0) / 1e6)", "encode_ms": "\(Double(MonotonicClock.nanoseconds() - tCaptured) / 1e6)"])
            do {
                try Process.replace(with: "/proc/self/fd/\(a.executable.rawValue)",
                                    argv: [a.binary, "--live-update-state", "\(state.rawValue)"], env: environment)
            } catch {
                failure = "exec failed: \(error)"
            }
        }
        for fd in cleared { try? fd.setCloseOnExec(true) }
        state.close()
        finishLiveUpdate(a, "live update rolled back: \(a.binary): \(failure ?? "unknown failure"); this supervisor goes on")
    }
}

import Glibc
import LinuxHost
import ProcvisorABI
import Toolstack

/// Failures of `xl create` the user must see, each naming the problem.
struct CreateError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension Supervisor {
    /// Domain names as libxl accepts them: printable, no '/', not a number (it would read as a domid).
    static func validateName(_ name: String) -> String? {
        if name.isEmpty { return "domain name must not be empty" }
        if name.utf8.count > 64 { return "domain name \"\(name)\" is longer than 64 bytes" }
        if name.allSatisfy(\.isNumber) { return "domain name \"\(name)\" is all digits and would be taken for a domid" }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0 == "/" || $0.value == 0x7f }) {
            return "domain name \"\(name)\" contains '/' or control characters"
        }
        return nil
    }

    /// Forks the domain's kernel, confined, and waits (in the event loop) for it to engage.
    /// `uuid` is reused on restart; nil generates one.
    @discardableResult
    func createDomain(_ config: DomainConfig, paused: Bool, waiter: ControlConnection?, uuid: String? = nil,
                      quickRestarts: Int = 0) throws -> DomainRecord {
        if stopping { throw CreateError("the supervisor is shutting down") }
        if let why = Self.validateName(config.name) { throw CreateError(why) }
        if let other = domains.values.first(where: { $0.name == config.name }) {
            throw CreateError("domain name \"\(config.name)\" already exists (dom\(other.domid))")
        }
        guard let kernel = config.kernel, !kernel.isEmpty else {
            throw CreateError("no kernel given: set kernel = \"/path/to/guest\" in the config")
        }
        if !FileIO.exists(kernel) { throw CreateError("kernel \(kernel): no such file") }
        if !FileIO.isExecutable(kernel) { throw CreateError("kernel \(kernel): not an executable file (check its mode)") }
        if config.vcpus < 1 || config.maxvcpus > 512 {
            throw CreateError("vcpus must be between 1 and 512 (got vcpus=\(config.vcpus), maxvcpus=\(config.maxvcpus))")
        }
        let free = freeMemoryMB
        if UInt64(config.memory) > free {
            throw CreateError("memory=\(config.memory) MiB is more than the free machine memory (\(free) MiB of \(options.memoryMB) MiB)")
        }
        if UInt64(config.maxmem) * 256 >= grantPageGFNBase {
            throw CreateError("maxmem=\(config.maxmem) MiB is larger than a domain's pseudo-physical space (8 TiB)")
        }
        let disks = try planDisks(config)
        guard let domid = allocateDomid() else { throw CreateError("no free domid") }
        let memory: DomainMemory
        do {
            memory = try DomainMemory(domid: domid, spanPages: UInt64(config.maxmem) * 256)
        } catch {
            throw CreateError("cannot create the RAM of dom\(domid): \(error)")
        }
        for pfn in 0..<(UInt64(config.memory) * 256) where !memory.populate(PFN(pfn), from: machine) {
            memory.releaseAll(to: machine)
            throw CreateError("out of machine frames while populating dom\(domid)")
        }

        let (hcParent, hcChild) = try UnixSocket.pair()
        let (evParent, evChild) = try UnixSocket.pair()
        let (conRead, conWrite) = try FileDescriptor.pipe()
        let (inRead, inWrite) = try FileDescriptor.pipe()
        let childEnds = [hcChild, evChild, conWrite, inRead]
        defer { childEnds.forEach { $0.close() } }
        let parentEnds = [hcParent, evParent, conRead, inWrite]
        let pid: pid_t
        do {
            for fd in parentEnds { try fd.setNonBlocking() }
            let argv = [kernel] + config.commandLine.split(separator: " ").map(String.init)
            pid = try Spawner.spawn(
                path: kernel, argv: argv,
                env: ["SWIFT_BACKTRACE=enable=no", "PATH=/usr/bin:/bin"],
                fds: [(inRead, BootstrapFD.consoleIn), (conWrite, BootstrapFD.consoleOut), (conWrite, 2),
                      (hcChild, BootstrapFD.hypercall), (evChild, BootstrapFD.events)],
                limits: [.init(Int32(RLIMIT_CORE.rawValue), 0, 0), .init(Int32(RLIMIT_NOFILE.rawValue), 1024, 1024)],
                filter: baselineBPF)
        } catch {
            parentEnds.forEach { $0.close() }
            memory.releaseAll(to: machine)
            throw CreateError("cannot start kernel \(kernel): \(error)")
        }
        attachCgroup(memory, pid: pid, domid: domid)
        let dom = DomainRecord(domid: domid, name: config.name, uuid: uuid ?? config.uuid ?? Self.makeUUID(),
                               config: config, startPaused: paused, pid: pid,
                               hypercallFD: hcParent, eventFD: evParent, consoleOutFD: conRead, consoleInFD: inWrite,
                               quickRestarts: quickRestarts)
        dom.createWaiter = waiter
        dom.evtchn = try? DomainEventChannels(domid: domid)
        dom.memory = memory
        domains[domid] = dom
        domidByPid[pid] = domid
        do {
            try setUpStore(dom)
        } catch {
            kill(dom)
            throw CreateError("cannot connect dom\(domid) to XenStore: \(error)")
        }
        attachDisks(dom, disks)
        dom.consoleLog = try? FileDescriptor.open(options.runDirectory.consoleLog(name: config.name),
                                                  O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        do {
            let t1 = try loop.watch(hcParent) { [unowned self, unowned dom] _ in hypercallReadable(dom) }
            let t2 = try loop.watch(conRead) { [unowned self, unowned dom] _ in consoleReadable(dom) }
            dom.watchTokens = [(hcParent, t1), (conRead, t2)]
        } catch {
            kill(dom)
            throw CreateError("cannot watch dom\(domid)'s descriptors: \(error)")
        }
        dom.engageTimer = loop.after(ms: options.engageTimeoutMs) { [weak self, weak dom] in
            guard let self, let dom, dom.phase == .booting else { return }
            dom.crashReason = "did not engage its sandbox within \(self.options.engageTimeoutMs) ms (is \(kernel) a DomainRuntime program?)"
            self.kill(dom)
        }
        logger.info("domain created", metadata: ["domid": "\(domid)", "name": "\(config.name)", "pid": "\(pid)", "kernel": "\(kernel)"])
        return dom
    }

    /// Memory cgroup slack above the reservation: the domain process's own heap, stacks and runtime.
    static let cgroupSlackBytes: UInt64 = 64 << 20

    /// Puts the domain in a memory cgroup limited to its reservation (plus slack) where cgroups are
    /// writable; otherwise measurement alone enforces it (said once in the log).
    func attachCgroup(_ memory: DomainMemory, pid: pid_t, domid: UInt16) {
        guard cgroupsUsable else { return }
        do {
            let cg = try MemoryCgroup(name: "procvisor-\(Process.pid)-dom\(domid)", limitBytes: memory.maxPages * 4096 + Self.cgroupSlackBytes)
            try cg.add(pid)
            memory.cgroup = cg
        } catch {
            cgroupsUsable = false
            logger.notice("memory cgroups unavailable; enforcing reservations by measurement", metadata: ["error": "\(error)"])
            log("memory cgroups unavailable (\(error)); enforcing reservations by measurement")
        }
    }

    /// A random (version 4) UUID.
    static func makeUUID() -> String {
        var bytes = SecureRandom.bytes(16)
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let hex = bytes.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-" + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }

    /// SIGKILL the domain's process (reaping and cleanup follow from SIGCHLD).
    func kill(_ dom: DomainRecord) {
        guard dom.hasProcess else { return }
        try? Signals.send(SIGKILL, to: dom.pid)
    }
}

import LinuxHost
import ProcvisorABI
import Toolstack

extension Supervisor {
    /// A control connection closed: what it waited for no longer needs answering.
    func connectionClosed(_ c: ControlConnection) {
        consoles.detach(c)
        saverGone(c)
        for dom in domains.values {
            if dom.createWaiter === c { dom.createWaiter = nil }
            dom.destroyWaiters.removeAll { $0 === c }
            dom.shutdownWaiters.removeAll { $0 === c }
        }
    }

    func unknownDomain(_ spec: String) -> ControlResponse {
        .error("\(spec) is an invalid domain identifier")
    }

    func handle(_ request: ControlRequest, from c: ControlConnection) {
        switch request {
        case let .liveUpdate(binary):
            guard let path = binary ?? binaryPath else {
                c.send(.error("live update: this supervisor does not know its own binary; give the new one's path"))
                return
            }
            if let answer = beginLiveUpdate(binary: path, requester: .control(fd: c.fd.rawValue), connection: c) {
                c.send(.error(answer))
            }
        case .ping:
            c.send(.pong(pid: Process.pid))
        case let .create(config, paused):
            do {
                try createDomain(config, paused: paused, waiter: c)
            } catch {
                log("create \(config.name): \(error)")
                c.send(.error("\(error)"))
            }
        case let .destroy(spec):
            guard let dom = find(spec), dom.domid != 0 else { return c.send(unknownDomain(spec)) }
            destroy(dom, waiter: c)
        case let .shutdown(spec, reason):
            guard let dom = find(spec) else { return c.send(unknownDomain(spec)) }
            guard dom.hasProcess, dom.phase == .running else {
                return c.send(.error("domain \(dom.domid) (\(dom.name)) is not running"))
            }
            if dom.paused { return c.send(.error("domain \(dom.domid) (\(dom.name)) is paused: unpause it first")) }
            log("\(dom.label): \(reason == .reboot ? "reboot" : "shutdown") requested by the toolstack")
            requestShutdown(dom, reason: reason)
            c.send(.ok)
        case let .pause(spec):
            guard let dom = find(spec) else { return c.send(unknownDomain(spec)) }
            do { try pause(dom); c.send(.ok) } catch { c.send(.error("\(error)")) }
        case let .unpause(spec):
            guard let dom = find(spec) else { return c.send(unknownDomain(spec)) }
            do { try unpause(dom); c.send(.ok) } catch { c.send(.error("\(error)")) }
        case let .rename(spec, newName):
            guard let dom = find(spec) else { return c.send(unknownDomain(spec)) }
            if let why = Self.validateName(newName) { return c.send(.error(why)) }
            if let other = domains.values.first(where: { $0.name == newName && $0 !== dom }) {
                return c.send(.error("domain name \"\(newName)\" already exists (dom\(other.domid))"))
            }
            log("\(dom.label): renamed to \(newName)")
            dom.name = newName
            // libxl_domain_rename writes the name where the rest of the toolstack reads it.
            store { e in
                try e.write("/local/domain/\(dom.domid)/name", Array(newName.utf8)) + e.write("/vm/\(dom.uuid)/name", Array(newName.utf8))
            }
            c.send(.ok)
        case let .list(specs, withConfig):
            var out: [DomainInfo] = []
            let config = withConfig ?? true
            if specs.isEmpty {
                out.append(dom0Info())
                out += domains.domids.compactMap { domains[$0].map { $0.info(includeConfig: config, memory: machine.domains[$0.domid]) } }
            } else {
                for spec in specs {
                    if spec == "0" || spec == "Domain-0" { out.append(dom0Info()); continue }
                    guard let dom = find(spec) else { return c.send(unknownDomain(spec)) }
                    out.append(dom.info(includeConfig: config, memory: machine.domains[dom.domid]))
                }
            }
            // As libxl, a domain's name is what /local/domain/N/name says (a dom0 tool may have
            // rewritten it): read here from the store, so `xl list` is one request.
            for i in out.indices where out[i].domid != 0 {
                out[i].name = storeName(DomID(out[i].domid)) ?? out[i].name
            }
            c.send(.domains(out))
        case .info:
            c.send(.info(hostInfo()))
        case let .memMax(spec, kb):
            guard let dom = find(spec), let mem = machine.domains[dom.domid] else { return c.send(unknownDomain(spec)) }
            let pages = kb / 4
            guard pages <= mem.spanPages else {
                return c.send(.error("cannot set mem-max of dom\(dom.domid) to \(kb / 1024) MiB: its pseudo-physical space is \(mem.spanPages / 256) MiB (maxmem at creation)"))
            }
            // As libxl_domain_setmaxmem: never below the balloon target (memory/target, KiB).
            let target = (try? xenstore.engine.read("/local/domain/\(dom.domid)/memory/target")).flatMap { UInt64(String(decoding: $0, as: UTF8.self)) }
            if let target, kb < target {
                return c.send(.error("memory_static_max must be greater than or equal to memory_dynamic_max: \(kb / 1024) MiB is below "
                                     + "the target of dom\(dom.domid), \(target / 1024) MiB (lower it first with xl mem-set)"))
            }
            mem.maxPages = pages
            try? mem.cgroup?.setLimit(pages * 4096 + Self.cgroupSlackBytes)
            log("\(dom.label): mem-max \(kb / 1024) MiB")
            c.send(.ok)
        case let .memSet(spec, kb):
            guard let dom = find(spec), let mem = machine.domains[dom.domid], dom.domid != 0 else { return c.send(unknownDomain(spec)) }
            // libxl refuses a target above the static maximum (maxmem).
            guard kb / 4 <= mem.spanPages else {
                return c.send(.error("memory_dynamic_max must be less than or equal to memory_static_max: \(kb) KiB > \(mem.spanPages * 4) KiB for dom\(dom.domid)"))
            }
            // As libxl_set_memory_target: the maximum reservation follows the target (plus
            // LIBXL_MAXMEM_CONSTANT, 1 MiB), so the balloon can grow back up to it.
            mem.maxPages = min(mem.spanPages, kb / 4 + 256)
            try? mem.cgroup?.setLimit(mem.maxPages * 4096 + Self.cgroupSlackBytes)
            store { e in try e.write("/local/domain/\(dom.domid)/memory/target", Array("\(kb)".utf8)) }
            log("\(dom.label): memory target \(kb / 1024) MiB")
            c.send(.ok)
        case let .waitShutdown(raw):
            let domid = DomID(raw)
            if let dom = domains[domid], dom.hasProcess {
                dom.shutdownWaiters.append(c)
            } else if let dom = domains[domid], let r = dom.shutdownReason {
                c.send(.shutdownDone(domid: raw, reason: r))
            } else if let r = domains.recentShutdowns[domid] {
                c.send(.shutdownDone(domid: raw, reason: r))
            } else {
                c.send(unknownDomain(String(domid)))
            }
        case let .blockAttach(spec, disk):
            c.send(blockAttach(spec, disk))
        case let .blockDetach(spec, device, force):
            blockDetach(spec, device, force: force, from: c)
        case let .blockList(spec):
            c.send(blockList(spec))
        case let .networkAttach(spec, vif):
            c.send(networkAttach(spec, vif))
        case let .networkDetach(spec, device):
            networkDetach(spec, device, from: c)
        case let .networkList(spec):
            c.send(networkList(spec))
        case let .networkFilter(backend, command):
            c.send(networkFilter(backend: backend, command))
        case let .dmesg(clear):
            c.send(.dmesg(dmesg.text))
            if clear { dmesg.clear() }
        case let .suspend(spec):
            requestSuspend(spec, from: c)
        case let .resume(spec, paused):
            resumeSuspended(spec, paused: paused, from: c)
        case let .restoreBegin(plan):
            restoreBegin(plan, from: c)
        case let .restoreFinish(domid, contents):
            restoreFinish(domid, contents, from: c)
        case let .dirtyLogStart(spec):
            dirtyLogStart(spec, from: c)
        case let .dirtyPages(spec):
            dirtyPages(spec, from: c)
        case .topSample:
            c.send(.topSample(topSample()))
        case let .schedGet(specs):
            c.send(schedGet(specs))
        case let .schedSet(spec, scheduler, weight, cap):
            c.send(schedSet(spec, scheduler: scheduler, weight: weight, cap: cap))
        case let .consoleAttach(spec):
            guard let dom = find(spec), dom.domid != 0 else { return c.send(unknownDomain(spec)) }
            guard dom.hasProcess, !dom.released else {
                return c.send(.error("domain \(dom.domid) (\(dom.name)) has no running console"))
            }
            consoles.attach(c, to: dom)
        }
    }

    func dom0Info() -> DomainInfo {
        DomainInfo(domid: 0, name: "Domain-0", uuid: "00000000-0000-0000-0000-000000000000",
                   currentMemoryKB: ProcFS.residentKB(of: Process.pid), maxMemoryKB: ProcFS.residentKB(of: Process.pid),
                   vcpusOnline: Host.onlineCPUs, maxVCPUs: Host.onlineCPUs,
                   running: true, blocked: false, paused: false, shutdown: false, shutdownReason: nil, dying: false,
                   cpuTimeNs: ProcFS.cpuTimeNs(of: Process.pid), startTime: startTime, pid: Process.pid)
    }

    func hostInfo() -> HostInfo {
        let u = Host.kernelIdentity()
        return HostInfo(
            host: u.nodeName, release: u.release, version: u.version, machine: u.machine,
            nrCPUs: Host.onlineCPUs, cpuMHz: ProcFS.cpuMHz(),
            totalMemoryMB: machine.totalFrames / 256, freeMemoryMB: freeMemoryMB,
            xenMajor: ProcvisorVersion.major, xenMinor: ProcvisorVersion.minor, xenExtra: ProcvisorVersion.extra,
            xenCaps: ProcvisorVersion.capabilities, xenScheduler: options.scheduler, pageSize: 4096,
            commandline: "procvisord rundir=\(options.runDirectory.path) \(jail.summary)", supervisorPid: Process.pid,
            runDirectory: options.runDirectory.path, controlSocket: options.runDirectory.controlSocket,
            nrDomains: domains.count, xenstoreSocket: options.runDirectory.xenstoreSocket)
    }
}

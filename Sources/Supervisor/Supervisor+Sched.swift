import LinuxHost
import ProcvisorABI
import Toolstack

/// The credit schedulers' weight and cap, kept in the domain's config (so a save, a migration
/// and a restart carry them) and enforced by its cpu cgroup.
extension Supervisor {
    func schedParams(_ dom: DomainRecord) -> SchedParams {
        SchedParams(domid: dom.domid.rawValue, name: dom.name, weight: dom.config.cpuWeight ?? SchedParams.defaultWeight, cap: dom.config.cap ?? 0)
    }

    /// Domain-0 is the supervisor, a host process: it shows Xen's defaults and cannot be changed.
    var dom0SchedParams: SchedParams { SchedParams(domid: 0, name: "Domain-0", weight: SchedParams.defaultWeight, cap: 0) }

    func schedGet(_ specs: [String]) -> ControlResponse {
        var out: [SchedParams] = []
        if specs.isEmpty {
            out.append(dom0SchedParams)
            out += domains.domids.compactMap { domains[$0] }.filter { $0.hasProcess }.map(schedParams)
        } else {
            for spec in specs {
                if spec == "0" || spec == "Domain-0" { out.append(dom0SchedParams); continue }
                guard let dom = find(spec) else { return unknownDomain(spec) }
                out.append(schedParams(dom))
            }
        }
        return .schedParams(scheduler: options.scheduler, out)
    }

    /// libxl's checks, in its words: weight 1–65535, cap 0 to 100 per vCPU.
    func schedSet(_ spec: String, scheduler: String, weight: Int?, cap: Int?) -> ControlResponse {
        guard scheduler == options.scheduler else {
            return .error("libxl_domain_sched_params_get returned \(options.scheduler) not \(scheduler).")
        }
        if spec == "0" || spec == "Domain-0" {
            return .error("Domain 0: the supervisor's own share is the host's to set (it runs as an ordinary host process)")
        }
        guard let dom = find(spec) else { return unknownDomain(spec) }
        let label = "Domain \(dom.domid)"
        if let weight, !SchedParams.weightRange.contains(weight) {
            return .error("\(label):Cpu weight out of range, valid values are within range from 1 to 65535")
        }
        if let cap, cap < 0 || cap > dom.config.maxvcpus * 100 {
            return .error("\(label):Cpu cap out of range, valid range is from 0 to \(dom.config.maxvcpus * 100) for specified number of vcpus")
        }
        guard dom.hasProcess, !dom.released else { return .error("\(label):is not running") }
        if case let .error(why) = applySched(dom, weight: weight, cap: cap) { return .error(why) }
        if let weight { dom.config.cpuWeight = weight }
        if let cap { dom.config.cap = cap }
        let p = schedParams(dom)
        log("\(dom.label): \(scheduler) weight \(p.weight), cap \(p.cap)")
        return .ok
    }

    /// Writes the weight and cap (nil: as they are) into the domain's cpu cgroup, making it
    /// first when the domain has none yet (a v1 host gives one only to a domain with a weight or
    /// a cap): named as its pids cgroup, and every process of the domain moved in.
    func applySched(_ dom: DomainRecord, weight: Int?, cap: Int?) -> ControlResponse {
        let label = "Domain \(dom.domid)"
        if dom.cpuCgroup == nil, jail.uses(.cgroups) {
            let name = dom.pidsCgroup?.name ?? "procvisor-\(Process.pid)-dom\(dom.domid)"
            do {
                let c = try CPUCgroup(name: name)
                // Kept at once, so the domain's end removes it whatever happens next.
                dom.cpuCgroup = c
                if c.ownsDirectory {
                    // A process may exit while the list is walked (ESRCH): what matters is that
                    // the domain's own process is in.
                    for pid in dom.pidsCgroup?.processes ?? [dom.pid] { try? FileIO.write(c.path + "/cgroup.procs", "\(pid)\n") }
                    guard c.processes.contains(dom.pid) else {
                        throw SystemError("cgroup.procs", "\(c.path): the domain's process \(dom.pid) could not be moved in", errno: .noSuchProcess)
                    }
                }
            } catch {
                return .error("\(label):cannot make its cpu cgroup: \(error)")
            }
        }
        guard let cg = dom.cpuCgroup else {
            return .error("\(label):cannot set scheduling parameters: the domain has no cpu cgroup (the host's cpu controller is not writable here)")
        }
        do {
            if let weight { try cg.setWeight(xen: weight) }
            if let cap { try cg.setCap(percent: cap) }
        } catch {
            // Nothing changes: the weight goes back if the cap could not be set.
            if weight != nil { try? cg.setWeight(xen: dom.config.cpuWeight ?? SchedParams.defaultWeight) }
            return .error("\(label):Setting domain sched: \(error)")
        }
        return .ok
    }
}

extension Supervisor {
    /// `xl top`'s sample: `xl list`'s figures plus, per domain, its vifs' and disks' totals from
    /// the `statistics` node their backends keep (netback's tx-bytes/rx-bytes, blkback's
    /// rd_req…wr_sect), read from the store here, one request for the whole screen.
    func topSample() -> TopSample {
        func stats(_ frontend: DomID, _ kind: String) -> [[String: UInt64]?] {
            let dir = "/local/domain/\(frontend)/device/\(kind)"
            return ((try? xenstore.engine.directory(dir)) ?? []).map { devid in
                guard let backend = try? xenstore.engine.read(dir + "/" + devid + "/backend"),
                      let text = try? xenstore.engine.read(String(decoding: backend, as: UTF8.self) + "/statistics") else { return nil }
                return TopSample.statistics(String(decoding: text, as: UTF8.self))
            }
        }
        var out: [TopSample.Domain] = [TopSample.Domain(info: dom0Info(), nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbd: TopSample.VBDTotals())]
        for domid in domains.domids {
            guard let dom = domains[domid] else { continue }
            var info = dom.info(includeConfig: false, memory: machine.domains[domid])
            info.name = storeName(domid) ?? info.name
            let vifs = stats(domid, "vif"), vbds = stats(domid, "vbd")
            // As xentop: no disks count as zeros; `-` only when disks have no statistics.
            var vbd: TopSample.VBDTotals? = vbds.isEmpty ? TopSample.VBDTotals() : nil
            for case let s? in vbds {
                var t = vbd ?? TopSample.VBDTotals()
                t.oo &+= s["oo_req"] ?? 0
                t.rd &+= s["rd_req"] ?? 0
                t.wr &+= s["wr_req"] ?? 0
                t.rdSect &+= s["rd_sect"] ?? 0
                t.wrSect &+= s["wr_sect"] ?? 0
                vbd = t
            }
            out.append(TopSample.Domain(info: info, nets: vifs.count,
                                        netTxBytes: vifs.reduce(0) { $0 &+ ($1?["tx-bytes"] ?? 0) },
                                        netRxBytes: vifs.reduce(0) { $0 &+ ($1?["rx-bytes"] ?? 0) },
                                        vbds: vbds.count, vbd: vbd))
        }
        return TopSample(host: hostInfo(), monotonicNs: MonotonicClock.nanoseconds(), domains: out)
    }
}

extension Supervisor {
    /// The name `/local/domain/N/name` holds (a dom0 tool may have rewritten it), where libxl
    /// reads a domain's name; nil when the node is missing or empty.
    func storeName(_ domid: DomID) -> String? {
        guard let raw = try? xenstore.engine.read("/local/domain/\(domid)/name"), !raw.isEmpty else { return nil }
        return String(decoding: raw, as: UTF8.self)
    }
}

import FoundationEssentials
import ProcvisorABI

/// Text `xl` prints, byte for byte as Xen's xl prints it.
public enum XLFormat {
    /// `xl list` header (xl_info.c list_domains).
    public static let listHeader = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    public static let listVerboseHeader = "   UUID                            Reason-Code\tSecurity Label"

    /// The six state letters: r b p s, the shutdown reason letter from "-rscwS", d.
    public static func stateLetters(_ d: DomainInfo) -> String {
        let reason: Character = d.shutdown ? (d.shutdownReason ?? .poweroff).letter : "-"
        return String([d.running ? "r" : "-", d.blocked ? "b" : "-", d.paused ? "p" : "-",
                       d.shutdown ? "s" : "-", reason, d.dying ? "d" : "-"])
    }

    /// One `xl list` row: `%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f`.
    public static func listRow(_ d: DomainInfo, verbose: Bool = false) -> String {
        var row = pad(d.name, 40) + " " + lpad(String(d.domid), 5) + " " + lpad(String(d.currentMemoryKB / 1024), 5)
            + " " + lpad(String(d.vcpusOnline), 5) + "     " + stateLetters(d) + "  "
            + lpad(fixed1(Double(Float(d.cpuTimeNs) / 1e9)), 8)
        if verbose {
            row += " " + d.uuid
            if d.shutdown { row += " " + lpad(String(d.shutdownReason?.rawValue ?? 0, radix: 16), 8) } else { row += " " + lpad("-", 8) }
            row += " " + lpad("-", 16)
        }
        return row
    }

    public static func list(_ domains: [DomainInfo], verbose: Bool = false) -> String {
        var out = listHeader + (verbose ? listVerboseHeader : "") + "\n"
        for d in domains { out += listRow(d, verbose: verbose) + "\n" }
        return out
    }

    /// `xl list -l`: a JSON array of `{"domid": N, "config": {...}}`, as libxl's domain config JSON
    /// (c_info, b_info, disks, nics, on_* actions) for the fields Procvisor has.
    public static func listLong(_ domains: [DomainInfo]) -> String {
        let entries = domains.compactMap { d -> String? in
            guard let c = d.config else { return nil }
            return "{\n    \"domid\": \(d.domid),\n    \"config\": " + configJSON(c, uuid: d.uuid, indent: "    ") + "\n}"
        }
        return "[\n" + entries.map { indentBlock($0, "    ") }.joined(separator: ",\n") + "\n]\n"
    }

    /// `xl create -n`: `{"domid": null, "config": {...}}`.
    public static func dryRun(_ c: DomainConfig) -> String {
        "{\n    \"domid\": null,\n    \"config\": " + configJSON(c, uuid: c.uuid ?? "00000000-0000-0000-0000-000000000000", indent: "    ") + "\n}\n"
    }

    static func configJSON(_ c: DomainConfig, uuid: String, indent: String) -> String {
        func q(_ s: String) -> String { jsonString(s) }
        let disks = c.disks.map { d -> String in
            var f = ["\"pdev_path\": \(q(d.target ?? ""))", "\"vdev\": \(q(d.vdev))", "\"format\": \(q(d.format.rawValue))",
                     "\"readwrite\": \(d.access == .readWrite ? 1 : 0)"]
            if d.isCDROM { f.append("\"is_cdrom\": 1") }
            if let b = d.backend { f.append("\"backend_domname\": \(q(b))") }
            return "{ " + f.joined(separator: ", ") + " }"
        }
        let devids = VifSpec.assignDevids(c.vifs)
        let nics = c.vifs.enumerated().map { (i, v) -> String in
            var f = ["\"devid\": \(devids[i])"]
            if let m = v.mac { f.append("\"mac\": \(q(m))") }
            if let b = v.bridge { f.append("\"bridge\": \(q(b))") }
            if let ip = v.ip { f.append("\"ip\": \(q(ip))") }
            if let b = v.backend { f.append("\"backend_domname\": \(q(b))") }
            return "{ " + f.joined(separator: ", ") + " }"
        }
        var lines: [String] = []
        lines.append("\"c_info\": {\n        \"type\": \(q(c.type)),\n        \"name\": \(q(c.name)),\n        \"uuid\": \(q(uuid))\n    }")
        var b = ["\"max_vcpus\": \(c.maxvcpus)", "\"avail_vcpus\": \(c.vcpus)",
                 "\"max_memkb\": \(c.maxmem * 1024)", "\"target_memkb\": \(c.memory * 1024)"]
        let sched = [c.cpuWeight.map { "\"weight\": \($0)" }, c.cap.map { "\"cap\": \($0)" }].compactMap { $0 }
        if !sched.isEmpty { b.append("\"sched_params\": {\n            " + sched.joined(separator: ",\n            ") + "\n        }") }
        if let k = c.kernel { b.append("\"kernel\": \(q(k))") }
        if let r = c.ramdisk { b.append("\"ramdisk\": \(q(r))") }
        let cl = c.commandLine
        if !cl.isEmpty { b.append("\"cmdline\": \(q(cl))") }
        lines.append("\"b_info\": {\n        " + b.joined(separator: ",\n        ") + "\n    }")
        if !disks.isEmpty { lines.append("\"disks\": [\n        " + disks.joined(separator: ",\n        ") + "\n    ]") }
        if !nics.isEmpty { lines.append("\"nics\": [\n        " + nics.joined(separator: ",\n        ") + "\n    ]") }
        lines.append("\"on_poweroff\": \(q(c.onPoweroff.rawValue))")
        lines.append("\"on_reboot\": \(q(c.onReboot.rawValue))")
        lines.append("\"on_crash\": \(q(c.onCrash.rawValue))")
        return "{\n" + lines.map { indent + $0 }.joined(separator: ",\n") + "\n}"
    }

    /// `xl info`: `%-23s: value` lines in xl's order, with the fields that make sense here.
    public static func info(_ h: HostInfo) -> String {
        let khz = Int((h.cpuMHz * 1000).rounded())
        let rows: [(String, String)] = [
            ("host", h.host), ("release", h.release), ("version", h.version), ("machine", h.machine),
            ("nr_cpus", String(h.nrCPUs)), ("max_cpu_id", String(h.nrCPUs - 1)), ("nr_nodes", "1"),
            ("cores_per_socket", String(h.nrCPUs)), ("threads_per_core", "1"),
            ("cpu_mhz", "\(khz / 1000).\(lpad(String(khz % 1000), 3, "0"))"),
            ("virt_caps", ""),
            ("total_memory", String(h.totalMemoryMB)), ("free_memory", String(h.freeMemoryMB)),
            ("sharing_freed_memory", "0"), ("sharing_used_memory", "0"), ("outstanding_claims", "0"),
            ("free_cpus", "0"),
            ("xen_major", String(h.xenMajor)), ("xen_minor", String(h.xenMinor)), ("xen_extra", h.xenExtra),
            ("xen_version", "\(h.xenMajor).\(h.xenMinor)\(h.xenExtra)"), ("xen_caps", h.xenCaps),
            ("xen_scheduler", h.xenScheduler), ("xen_pagesize", String(h.pageSize)),
            ("platform_params", "virt_start=0x0"), ("xen_changeset", ""), ("xen_commandline", h.commandline),
            ("cc_compiler", "swiftc"), ("cc_compile_by", ""), ("cc_compile_domain", ""), ("cc_compile_date", ""),
            ("build_id", ""),
            ("supervisor_pid", String(h.supervisorPid)), ("run_directory", h.runDirectory), ("control_socket", h.controlSocket),
            ("xenstore_socket", h.xenstoreSocket),
            ("xend_config_format", "4"),
        ]
        return rows.map { $0.1.isEmpty && $0.0 == "virt_caps" ? pad($0.0, 23) + ":\n" : pad($0.0, 23) + ": " + $0.1 + "\n" }.joined()
    }

    /// One field of `xl info NAME` (xl prints only the value after ": ").
    public static func infoField(_ h: HostInfo, _ name: String) -> String {
        info(h).split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix(name), let colon = line.firstIndex(of: ":") else { return nil }
            let value = line[line.index(after: colon)...]
            guard value.first == " " else { return nil }
            return String(value.dropFirst()) + "\n"
        }.joined()
    }

    /// xl's uptime_to_string.
    public static func uptime(_ seconds: UInt64, short: Bool) -> String {
        let day = seconds / 86400
        let hour = (seconds % 86400) / 3600
        let min = (seconds % 3600) / 60
        let sec = seconds % 60
        let hm = lpad(String(hour), 2) + ":" + lpad(String(min), 2, "0")
        let tail = short ? hm : hm + ":" + lpad(String(sec), 2, "0")
        if day > 1 { return "\(day) days, " + tail }
        if day == 1 { return "\(day) day, " + tail }
        return tail
    }

    /// `xl uptime` row (long form): `%-33s %4d %s`.
    public static func uptimeRow(name: String, domid: UInt16, seconds: UInt64) -> String {
        pad(name, 33) + " " + lpad(String(domid), 4) + " " + uptime(seconds, short: false)
    }

    public static let uptimeHeader = pad("Name", 33) + " " + lpad("ID", 4) + " Uptime"

    /// `xl block-list` header (xl_block.c): `%-5s %-3s %-6s %-5s %-6s %-8s %-30s`.
    public static let blockListHeader = blockListLine(["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"])

    /// One `xl block-list` row: `%-5d %-3d %-6d %-5d %-6d %-8d %-30s` with the device number,
    /// the backend domid, the frontend domid (xl's "handle" column), the frontend's state,
    /// event channel and ring-ref, and the backend path.
    public static func blockListRow(_ d: BlockDeviceInfo) -> String {
        blockListLine([String(d.devid), String(d.backendID), String(d.frontendID), String(d.state), String(d.eventChannel),
                       String(d.ringRef), d.backendPath])
    }

    static func blockListLine(_ fields: [String]) -> String {
        zip(fields, [5, 3, 6, 5, 6, 8, 30]).map { pad($0, $1) }.joined(separator: " ")
    }

    /// `xl network-list` header (xl_nic.c): `%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s`.
    public static let networkListHeader = pad("Idx", 3) + " " + pad("BE", 2) + " " + pad("Mac Addr.", 17) + " "
        + pad("handle", 6) + " " + pad("state", 5) + " " + pad("evt-ch", 6) + " " + lpad("tx-", 5) + "/"
        + pad("rx-ring-ref", 5) + " " + pad("BE-path", 30)

    /// One `xl network-list` row: `%-3d %-2d ` then the MAC (`%02hhx:...`, no space after it),
    /// then `%6d %5d %6d %5d/%-11d %-30s`: devid, backend domid, MAC, devid again (xl's
    /// "handle"), the frontend's state, event channel, tx and rx ring refs, backend path.
    public static func networkListRow(_ n: NetworkDeviceInfo) -> String {
        pad(String(n.devid), 3) + " " + pad(String(n.backendID), 2) + " " + n.mac
            + lpad(String(n.devid), 6) + " " + lpad(String(n.state), 5) + " " + lpad(String(n.eventChannel), 6) + " "
            + lpad(String(n.txRingRef), 5) + "/" + pad(String(n.rxRingRef), 11) + " " + pad(n.backendPath, 30)
    }

    /// `xl network-filter list` (a Procvisor command): per bridge a `BRIDGE:` line, then its
    /// rules in order, each numbered from 1 as `del` and `insert` count them (`%4d  RULE`).
    public static func networkFilterList(_ sets: [NetworkFilterRules]) -> String {
        var out = ""
        for set in sets {
            out += set.bridge + ":\n"
            for (i, rule) in set.rules.enumerated() { out += lpad(String(i + 1), 4) + "  " + rule + "\n" }
        }
        return out
    }

    // MARK: helpers

    public static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }

    public static func lpad(_ s: String, _ width: Int, _ fill: Character = " ") -> String {
        s.count >= width ? s : String(repeating: fill, count: width - s.count) + s
    }

    /// printf("%.1f") without Foundation's formatter: round half to even is what glibc does for
    /// exact ties; the values here are never exact ties at one decimal, so round-half-up matches.
    public static func fixed1(_ v: Double) -> String {
        let tenths = (v * 10).rounded(.toNearestOrEven)
        let whole = Int64(tenths) / 10
        let frac = abs(Int64(tenths) % 10)
        return "\(whole).\(frac)"
    }

    static func indentBlock(_ s: String, _ indent: String) -> String {
        s.split(separator: "\n", omittingEmptySubsequences: false).map { indent + $0 }.joined(separator: "\n")
    }

    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 { out += "\\u" + lpad(String(u.value, radix: 16), 4, "0") } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

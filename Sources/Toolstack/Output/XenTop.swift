/// `xl top`'s screen, laid out as xentop (tools/xentop) lays it out: the summary lines of its
/// interactive screen, then a header of right-aligned column names and one row per domain,
/// each field printed with xentop's printf format and width, fields joined by one space.
public enum XenTop {
    /// The summary above the table (interactive mode only, as xentop): program and time, the
    /// domains by state, memory and CPUs.
    public static func summary(_ s: TopSample, time: String) -> String {
        let h = s.host
        var run = 0, block = 0, pause = 0, crash = 0, dying = 0, shutdown = 0
        for d in s.domains.map(\.info) {
            // xentop's tally: the first state that holds, in this order.
            if d.running { run += 1 } else if d.blocked { block += 1 } else if d.paused { pause += 1 }
            else if d.shutdown { shutdown += 1 } else if crashed(d) { crash += 1 } else if d.dying { dying += 1 }
        }
        let total = h.totalMemoryMB * 1024, free = h.freeMemoryMB * 1024
        return "xentop - \(time)   Xen \(h.xenMajor).\(h.xenMinor)\(h.xenExtra)\n"
            + "\(s.domains.count) domains: \(run) running, \(block) blocked, \(pause) paused, \(crash) crashed, \(dying) dying, \(shutdown) shutdown \n"
            + "Mem: \(total)k total, \(total - min(free, total))k used, \(free)k free    CPUs: \(h.nrCPUs) @ \(Int(h.cpuMHz))MHz\n"
    }

    static func crashed(_ d: DomainInfo) -> Bool { d.shutdown && d.shutdownReason == .crash }

    /// The header and one row per domain. `previous` is the sample before (for CPU(%): the CPU
    /// time used between the two over the time between them; 0.0 without one, as xentop).
    /// `fullName` is xentop's `-f`: names are not cut to 10 characters.
    public static func table(_ s: TopSample, previous: TopSample?, fullName: Bool = false) -> String {
        // Widths that grow with the figures (xentop's adjust_field_widths).
        var w = ["NAME": 10, "NETTX(k)": 8, "NETRX(k)": 8, "VBD_RD": 8, "VBD_WR": 8, "VBD_RSECT": 10, "VBD_WSECT": 10]
        func digits(_ n: UInt64) -> Int { String(n).count }
        for d in s.domains {
            if fullName { w["NAME"] = max(w["NAME"]!, d.info.name.count) }
            w["NETTX(k)"] = max(w["NETTX(k)"]!, digits(d.netTxBytes / 1024 &+ 1))
            w["NETRX(k)"] = max(w["NETRX(k)"]!, digits(d.netRxBytes / 1024 &+ 1))
            let v = d.vbd ?? TopSample.VBDTotals()
            w["VBD_RD"] = max(w["VBD_RD"]!, digits(v.rd &+ 1))
            w["VBD_WR"] = max(w["VBD_WR"]!, digits(v.wr &+ 1))
            w["VBD_RSECT"] = max(w["VBD_RSECT"]!, digits(v.rdSect &+ 1))
            w["VBD_WSECT"] = max(w["VBD_WSECT"]!, digits(v.wrSect &+ 1))
        }
        let columns: [(String, Int)] = [
            ("NAME", w["NAME"]!), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10), ("MEM(%)", 6), ("MAXMEM(k)", 10),
            ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4), ("NETTX(k)", w["NETTX(k)"]!), ("NETRX(k)", w["NETRX(k)"]!), ("VBDS", 4),
            ("VBD_OO", 8), ("VBD_RD", w["VBD_RD"]!), ("VBD_WR", w["VBD_WR"]!), ("VBD_RSECT", w["VBD_RSECT"]!),
            ("VBD_WSECT", w["VBD_WSECT"]!), ("SSID", 4),
        ]
        func r(_ text: String, _ width: Int) -> String { XLFormat.lpad(text, width) }
        var out = columns.map { r($0.0, $0.1) }.joined(separator: " ") + "\n"
        let totalKB = Double(s.host.totalMemoryMB * 1024)
        let elapsedUs = previous.map { Double(s.monotonicNs &- $0.monotonicNs) / 1000 } ?? 0
        for d in s.domains {
            let i = d.info
            var name = i.name
            if !fullName && name.count > 10 { name = String(name.prefix(10)) }
            let state = [i.dying, i.shutdown, i.blocked, crashed(i), i.paused, i.running]
                .enumerated().map { $0.element ? Array("dsbcpr")[$0.offset] : "-" }
            var pct = 0.0
            if let old = previous?.domains.first(where: { $0.info.domid == i.domid }), elapsedUs > 0, i.cpuTimeNs >= old.info.cpuTimeNs {
                pct = Double(i.cpuTimeNs - old.info.cpuTimeNs) / 10.0 / elapsedUs
            }
            func vbd(_ value: (TopSample.VBDTotals) -> UInt64, _ col: String) -> String {
                r(d.vbd.map { String(value($0)) } ?? "-", w[col] ?? 8)
            }
            let fields: [String] = [
                r(name, w["NAME"]!), String(state), r(String(i.cpuTimeNs / 1_000_000_000), 10), r(XLFormat.fixed1(pct), 6),
                r(String(i.currentMemoryKB), 10), r(XLFormat.fixed1(Double(i.currentMemoryKB) / totalKB * 100), 6),
                r(String(i.maxMemoryKB), 10), r(XLFormat.fixed1(Double(i.maxMemoryKB) / totalKB * 100), 9),
                r(String(i.vcpusOnline), 5), r(String(d.nets), 4), r(String(d.netTxBytes / 1024), w["NETTX(k)"]!),
                r(String(d.netRxBytes / 1024), w["NETRX(k)"]!), r(String(d.vbds), 4),
                vbd({ $0.oo }, "VBD_OO"), vbd({ $0.rd }, "VBD_RD"), vbd({ $0.wr }, "VBD_WR"),
                vbd({ $0.rdSect }, "VBD_RSECT"), vbd({ $0.wrSect }, "VBD_WSECT"), r("0", 4),
            ]
            out += fields.joined(separator: " ") + "\n"
        }
        return out
    }
}

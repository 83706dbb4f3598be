import ProcvisorABI

extension XenStoreEngine {
    /// XS_CONTROL (do_control in control.c): the command is the first string, its parameters follow.
    /// Supported: check, log, logfile, memreport, print, quota, quota-soft, live-update, help.
    /// Other commands are EINVAL, as unknown ones are in xenstored.
    func control(_ conn: Connection, _ request: XSMessage, _ args: RequestArgs) throws(XSError) {
        guard let cmd = args.string(0) else { throw .EINVAL }
        let params = args.strings.dropFirst().map { String(decoding: $0, as: UTF8.self) }
        let text: String?
        switch cmd {
        case "check":
            guard params.isEmpty else { throw .EINVAL }
            text = nil
        case "log":
            text = try controlLog(params)
        case "logfile":
            // The trace log goes to this file from now on (the host's side opens it).
            guard params.count == 1, !params[0].isEmpty else { throw .EINVAL }
            guard let onLogfile else { throw .EINVAL }
            if let e = onLogfile(params[0]) { throw e }
            text = nil
        case "memreport":
            // What the store holds, per domain, into FILE or (without one) the trace log.
            guard params.count <= 1 else { throw .EINVAL }
            guard let onMemreport else { throw .EINVAL }
            if let e = onMemreport(memoryReport(), params.first) { throw e }
            text = nil
        case "print":
            guard params.count == 1 else { throw .EINVAL }
            logSink?("control: \(params[0])")
            text = nil
        case "quota":
            text = try controlQuota(params)
        case "quota-soft":
            if params.isEmpty {
                text = "Quota settings:\n" + quotaLine("memory", quota.softMemory, "Total Xenstore memory per domain (warning level)")
            } else if params[0] == "set", params.count == 3, params[1] == "memory" {
                let v = cAtoi(params[2].utf8)
                guard v >= 1 else { throw .EINVAL }
                quota.softMemory = Int(v)
                text = nil
            } else {
                throw .EINVAL
            }
        case "live-update":
            guard conn.domid == 0 else { throw .EACCES }
            guard let t = try controlLiveUpdate(conn, request, params) else { return }
            text = t
        case "help":
            guard params.isEmpty else { throw .EINVAL }
            text = [("check", ""), ("log", "[on|off|+<switch>|-<switch>]"), ("logfile", "<file>"), ("memreport", "[<file>]"),
                    ("print", "<string>"),
                    ("quota", "[set <name> <val>|<domid>|max [-r]]"), ("quota-soft", "[set <name> <val>]"),
                    ("live-update", "[-c <cmdline>] [-F] [-t <timeout>] <file>\n    Default timeout is 60 seconds."), ("help", "")]
                .map { pad($0.0, 15) + " " + $0.1 + "\n" }.joined()
        default:
            throw .EINVAL
        }
        if let text {
            reply(conn, to: request, .control, Array(text.utf8) + [0])
        } else {
            ack(conn, to: request, .control)
        }
    }

    /// xenstored's `live-update` subcommands as xenstore-control sends them: `-f FILE` names the
    /// new binary, `-c CMDLINE` is accepted and kept, `-a` aborts, `-s [-t SECONDS] [-F]`
    /// starts the update (the hook answers: nil when the new binary will reply "OK", else the
    /// reason it cannot). `-v N` is accepted and ignored. `-b`/`-d` (a stubdom's binary
    /// transfer) are refused.
    /// Returns the reply text, or nil when the reply will come later.
    func controlLiveUpdate(_ conn: Connection, _ request: XSMessage, _ params: [String]) throws(XSError) -> String? {
        guard let flag = params.first else { throw .EINVAL }
        switch flag {
        case "-f":
            guard params.count == 2, !params[1].isEmpty else { throw .EINVAL }
            liveUpdateBinary = params[1]
            return "OK"
        case "-c":
            guard params.count == 2 else { throw .EINVAL }
            return "OK"
        case "-a":
            liveUpdateBinary = nil
            return "OK"
        case "-s":
            var force = false
            var timeout = 60
            var i = 1
            while i < params.count {
                switch params[i] {
                case "-F": force = true
                case "-t":
                    guard i + 1 < params.count, let t = Int(params[i + 1]), t >= 0 else { throw .EINVAL }
                    timeout = t
                    i += 1
                case "-v":
                    // The state version to write (newer xenstore-control): the supervisor
                    // always writes its own, which the new binary checks.
                    guard i + 1 < params.count, Int(params[i + 1]) != nil else { throw .EINVAL }
                    i += 1
                default: throw .EINVAL
                }
                i += 1
            }
            guard let binary = liveUpdateBinary else { return "No binary given: send live-update -f <file> first" }
            guard let hook = onLiveUpdate else { return "live update is not supported here" }
            return hook(conn.id, request.requestID, binary, force, timeout)
        case "-b", "-d":
            return "binary transfer is for a stubdom xenstored: give the new procvisord's path with -f"
        default:
            throw .EINVAL
        }
    }

    /// `memreport`'s text: the store as a whole, then each domain's accounted figures (the ones
    /// `quota` limits).
    func memoryReport() -> String {
        let bytes = nodes.values.reduce(0) { $0 + $1.accountedSize }
        var out = "xenstore memory report: \(nodes.count) nodes, \(bytes) bytes, \(connections.count) connections, "
            + "\(connections.values.reduce(0) { $0 + $1.watchIDs.count }) watches, "
            + "\(connections.values.reduce(0) { $0 + $1.transactions.count }) transactions\n"
        for (domid, d) in domains.sorted(by: { $0.key < $1.key }) {
            out += "domain \(domid)\(d.introduced ? "" : " (not introduced)"): "
                + [AccItem.nodes, .memory, .watches, .transactions, .outstanding].map { "\($0.name) \(d.acc[$0.rawValue])" }.joined(separator: ", ")
                + "\n"
        }
        return out
    }

    func controlLog(_ params: [String]) throws(XSError) -> String? {
        if params.isEmpty {
            return "Log switch settings:\n" + traceSwitches.map { pad($0.name, 8) + ": " + ($0.on ? "on" : "off") + "\n" }.joined()
        }
        guard params.count == 1 else { throw .EINVAL }
        switch params[0] {
        case "on": logEnabled = true
        case "off": logEnabled = false
        default:
            let p = params[0]
            guard let sign = p.first, sign == "+" || sign == "-",
                  let i = traceSwitches.firstIndex(where: { $0.name == p.dropFirst() }) else { throw .EINVAL }
            traceSwitches[i].on = sign == "+"
        }
        return nil
    }

    func controlQuota(_ params: [String]) throws(XSError) -> String? {
        if params.isEmpty {
            return "Quota settings:\n" + AccItem.allCases.map { quotaLine($0.name, quota[$0], $0.descr) }.joined()
        }
        switch params[0] {
        case "set":
            guard params.count == 3 else { throw .EINVAL }
            let v = cAtoi(params[2].utf8)
            guard v >= 1, let item = AccItem.allCases.first(where: { $0.name == params[1] }) else { throw .EINVAL }
            quota[item] = item == .pathMax ? min(Int(v), XenStoreWire.relPathMax) : Int(v)
            return nil
        case "max":
            guard params.count <= 2 else { throw .EINVAL }
            if params.count == 2 {
                guard params[1] == "-r" else { throw .EINVAL }
                for d in domains.keys { domains[d]!.max = domains[d]!.acc }
            }
            var out = "Max. seen accounting values:\n"
            for item in AccItem.allCases {
                let m = domains.filter { $0.key != 0 }.map { $0.value.max[item.rawValue] }.max() ?? 0
                out += pad(item.name, 17) + ": " + padLeft(String(m), 8) + "\n"
            }
            return out
        default:
            guard params.count == 1 else { throw .EINVAL }
            let domid = UInt32(bitPattern: cAtoi(params[0].utf8))
            guard domid <= UInt32(UInt16.max), let d = domains[UInt16(domid)] else { throw .ENOENT }
            var out = "Domain \(domid):\n"
            for item in AccItem.allCases {
                out += pad(item.name, 17) + ": " + padLeft(String(d.acc[item.rawValue]), 8) + " (max " + padLeft(String(d.max[item.rawValue]), 8) + ")\n"
            }
            return out
        }
    }

    /// One line of "%-17s: %8d %s\n".
    func quotaLine(_ name: String, _ value: Int, _ descr: String) -> String {
        pad(name, 17) + ": " + padLeft(String(value), 8) + " " + descr + "\n"
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

func padLeft(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

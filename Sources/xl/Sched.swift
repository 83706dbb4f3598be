import ArgumentParser
import Toolstack

/// `xl sched-credit` and `xl sched-credit2`: xl_sched.c's commands. There is one cpupool,
/// Pool-0, run by the host's scheduler (`xl info`'s xen_scheduler); the command for the other
/// scheduler lists nothing and cannot set anything, as on Xen.
struct SchedOptions: ParsableArguments {
    @Option(name: [.customShort("d"), .customLong("domain")], help: "Domain to modify.") var domain: String?
    @Option(name: [.customShort("w"), .customLong("weight")], parsing: .unconditional, help: "Weight (int).") var weight: String?
    @Option(name: [.customShort("c"), .customLong("cap")], parsing: .unconditional, help: "Cap (int).") var cap: String?
    @Flag(name: [.customShort("s"), .customLong("schedparam")], help: "Query / modify scheduler parameters.") var schedparam = false
    @Option(name: [.customShort("r"), .customLong("ratelimit_us")], help: "Set the scheduling rate limit, in microseconds.") var ratelimit: String?
    @Option(name: [.customShort("p"), .customLong("cpupool")], help: "Restrict output to CPUPOOL.") var cpupool: String?

    /// The scheduler's pool parameters, as Xen's defaults (Linux's scheduler has no such knobs).
    static func poolLine(_ scheduler: String) -> String {
        scheduler == "credit" ? "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us"
                              : "Cpupool Pool-0: ratelimit=1000us"
    }

    static func row(_ name: String, _ id: String, _ weight: String, _ cap: String) -> String {
        XLFormat.pad(name, 33) + " " + XLFormat.lpad(id, 4) + " " + XLFormat.lpad(weight, 6) + " " + XLFormat.lpad(cap, 4)
    }

    static let header = row("Name", "ID", "Weight", "Cap")

    static func number(_ text: String, _ what: String) -> Int {
        guard let v = Int(text) else { fail("xl: invalid \(what) '\(text)' (expected an integer)") }
        return v
    }

    /// What both commands do; `tuning` is set when -t or -m (credit only) were given.
    func run(scheduler: String, tuning: Bool) {
        if cpupool != nil, domain != nil || weight != nil || cap != nil {
            fail(scheduler == "credit" ? "Specifying a cpupool or schedparam is not allowed with domain options."
                                       : "Specifying a cpupool is not allowed with other options.")
        }
        if scheduler == "credit", schedparam, domain != nil || weight != nil || cap != nil {
            fail("Specifying a cpupool or schedparam is not allowed with domain options.")
        }
        if domain == nil, weight != nil || cap != nil { fail("Must specify a domain.") }
        if scheduler == "credit", !schedparam, tuning || ratelimit != nil {
            fail("Must specify schedparam to set schedule parameter values.")
        }
        if let cpupool, cpupool != "Pool-0", cpupool != "0" { fail("unknown cpupool '\(cpupool)'") }
        let w = weight.map { Self.number($0, "weight") }
        let c = cap.map { Self.number($0, "cap") }
        var client = ControlClient.connect()
        if schedparam {
            if tuning || ratelimit != nil {
                fail("xl: the \(scheduler) pool parameters cannot be set here: Linux's scheduler runs the domains (only weight and cap are theirs)")
            }
            let host = hostScheduler(&client)
            print(host == scheduler ? Self.poolLine(scheduler) : "Cpupool Pool-0: [sched params unavailable]")
            return
        }
        guard let domain else {
            guard case let .schedParams(host, list) = client.request(.schedGet(domains: [])) else { fail("xl: unexpected reply from the supervisor") }
            guard host == scheduler else { return }
            print(Self.poolLine(scheduler))
            print(Self.header)
            for p in list { print(Self.row(p.name, String(p.domid), String(p.weight), String(p.cap))) }
            return
        }
        // xl's find_domain comes first: an unknown domain prints nothing else.
        guard !client.domains([domain]).isEmpty else { fail("\(domain) is an invalid domain identifier") }
        if w == nil && c == nil {
            print(Self.header)
            switch client.request(.schedGet(domains: [domain])) {
            case let .schedParams(host, list):
                guard host == scheduler else { fail("libxl_domain_sched_params_get returned \(host) not \(scheduler).") }
                for p in list { print(Self.row(p.name, String(p.domid), String(p.weight), String(p.cap))) }
            case let .error(msg): fail(msg)
            case let other: fail("xl: unexpected reply \(other)")
            }
            return
        }
        switch client.request(.schedSet(domain: domain, scheduler: scheduler, weight: w, cap: c)) {
        case .ok: return
        case let .error(msg):
            // libxl's log line, then xl's own.
            if msg.hasSuffix("is an invalid domain identifier") || msg.hasPrefix("libxl_domain_sched_params_get") { fail(msg) }
            fail("libxl: error: \(msg)\nlibxl_domain_sched_params_set failed.")
        case let other: fail("xl: unexpected reply \(other)")
        }
    }

    private func hostScheduler(_ client: inout ControlClient) -> String {
        guard case let .info(h) = client.request(.info) else { fail("xl: unexpected reply from the supervisor") }
        return h.xenScheduler
    }
}

struct SchedCredit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sched-credit", abstract: "Get/set credit scheduler parameters.")
    @OptionGroup var options: SchedOptions
    @Option(name: [.customShort("t"), .customLong("tslice_ms")], help: "Set the timeslice, in milliseconds.") var tslice: String?
    @Option(name: [.customShort("m"), .customLong("migration_delay_us")], help: "Set the migration delay, in microseconds.") var migrationDelay: String?

    func run() throws {
        options.run(scheduler: "credit", tuning: tslice != nil || migrationDelay != nil)
    }
}

struct SchedCredit2: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sched-credit2", abstract: "Get/set credit2 scheduler parameters.")
    @OptionGroup var options: SchedOptions

    func run() throws {
        options.run(scheduler: "credit2", tuning: false)
    }
}

import LinuxHost
import ProcvisorABI
import Toolstack

/// What every device type shares at `xl create` and at an xl attach: checking the entries,
/// giving those without `backend=` their type's default driver domain, writing the nodes, and
/// routing a backend's `deviceFD` request to its type.
extension Supervisor {
    /// Checks every device entry of the config, type by type, before anything is started; only
    /// once every entry passed are the default driver domains (`blkback`, `netback`) found or
    /// started for the entries without `backend=`.
    func planDevices(_ config: DomainConfig) throws -> [PlannedDevice] {
        let checked = try DeviceRegistration.all.map { try $0.plan(self, config) }
        return try checked.flatMap { try resolveBackends($0) }
    }

    /// Gives the devices without `backend=` their type's default driver domain (found or
    /// started). The devices are of one type.
    func resolveBackends(_ planned: [PlannedDevice]) throws -> [PlannedDevice] {
        guard let first = planned.first(where: { $0.backend == nil }) else { return planned }
        let dd = try defaultDriverDomain(first.type.defaultBackend, for: first.what)
        return planned.map { p in
            var p = p
            if p.backend == nil { p.backend = dd }
            return p
        }
    }

    /// The domain a `backend=` names, which must be a running driver domain (or, where
    /// `booting` allows it, one still booting).
    func namedBackend(_ name: String, for what: String, booting: Bool) throws -> DomainRecord {
        guard let b = domains.named(name), b.hasProcess,
              b.phase == .running || (booting && b.phase == .booting) else {
            throw CreateError("\(what): backend domain \"\(name)\" is not running")
        }
        guard b.config.driverDomain else {
            throw CreateError("\(what): domain \"\(name)\" is not a driver domain (set driver_domain = 1 in its config)")
        }
        return b
    }

    /// The running (or still booting) driver domain called `name` (`blkback`, `netback`); if
    /// there is none, one is started from the executable of that name next to procvisord
    /// (driver_domain = 1, 64 MiB, 2 vCPUs), as a domain like any other.
    func defaultDriverDomain(_ name: String, for what: String) throws -> DomainRecord {
        if let d = domains.named(name) {
            guard d.config.driverDomain, d.hasProcess, d.phase == .running || d.phase == .booting else {
                throw CreateError("\(what): no backend= given, and the default driver domain \"\(name)\" (dom\(d.domid)) is not a running driver domain")
            }
            return d
        }
        let exe = Process.executablePath() ?? "/proc/self/exe"
        let dir = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)])
        // Next to procvisord (a build tree), or where scripts/install.sh puts driver domains
        // (PREFIX/lib/procvisor/bin beside PREFIX/sbin).
        let beside = dir + "/" + name
        let installed = dir + "/../lib/procvisor/bin/" + name
        guard let found = [beside, installed].first(where: FileIO.isExecutable) else {
            throw CreateError("\(what): no backend= given and the default driver domain cannot be started: \(beside) is missing or not executable (install \(name) next to procvisord, or start a driver domain and name it with backend=)")
        }
        let kernel = DynamicLoader.realPath(found) ?? found
        var config = DomainConfig(name: name, kernel: kernel)
        config.driverDomain = true
        config.onCrash = .restart
        config.memory = 64
        config.maxmem = 64
        config.vcpus = 2
        config.maxvcpus = 2
        let dom: DomainRecord
        do {
            dom = try createDomain(config, paused: false, waiter: nil)
        } catch {
            throw CreateError("\(what): no backend= given and the default driver domain could not be started: \(error)")
        }
        log("\(what): no backend= given: started the default driver domain \(dom.label) from \(kernel)")
        return dom
    }

    /// Attaches the devices planned for `dom` (`createDomain` calls it once the domain's tree
    /// exists; the xl attach commands once their checks passed).
    func attachDevices(_ dom: DomainRecord, _ planned: [PlannedDevice]) {
        for p in planned {
            guard let backend = p.backend else { continue }  // resolveBackends gave every device one
            devices.attach(p.make(dom.domid, backend.domid))
        }
    }

    /// The checks an xl attach makes of its domain: it exists, is not Domain-0, and runs. Nil
    /// with `refusal` set to the answer otherwise.
    func attachTarget(_ spec: String, _ type: SplitDeviceType, unknown: (String) -> ControlResponse,
                      refusal: inout ControlResponse) -> DomainRecord? {
        guard let dom = find(spec), dom.domid != 0 else {
            if spec == "0" || spec == "Domain-0" {
                refusal = .error("Domain-0 cannot take \(type.plural) here (it is the supervisor)")
            } else {
                refusal = unknown(spec)
            }
            return nil
        }
        guard dom.hasProcess, !dom.released, dom.phase == .running || dom.phase == .booting else {
            refusal = .error("domain \(dom.domid) (\(dom.name)) is not running")
            return nil
        }
        return dom
    }

    /// `deviceFD`: a backend asks for a descriptor of a device it serves; the device's type
    /// answers.
    func deviceFD(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let kind = DeviceKind(rawValue: r.args[0]) else { return .error(.EINVAL) }
        for registration in DeviceRegistration.all {
            if let handler = registration.descriptors[kind] { return handler(self, dom, r) }
        }
        // netback needs no descriptor per vif: its frontends' rings come through grants.
        return .error(.EINVAL)
    }

    /// Queues a device may have logs for, and the largest log (a ring of 16 pages has 512 slots
    /// of at most 2 KiB of log each).
    static let inflightLogQueues = 16
    static let inflightLogMaxBytes = 1 << 20

    /// `inflightLog`: a backend asks for one queue's in-flight log of a device it serves. Made
    /// (zeroed) the first time, the same memfd afterwards, to every incarnation of the backend.
    func inflightLog(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard r.args.count >= 5, let kind = DeviceKind(rawValue: r.args[0]), let (frontend, devid) = Self.deviceKeyArguments(r) else {
            return .error(.EINVAL)
        }
        let type: SplitDeviceType
        switch kind {
        case .vbd: type = .block
        case .vif: type = .network
        case .uplink: return .error(.EINVAL)
        }
        let queue = r.args[3], bytes = r.args[4]
        guard queue < UInt64(Self.inflightLogQueues), bytes > 0, bytes <= UInt64(Self.inflightLogMaxBytes), bytes % 4096 == 0 else {
            return .error(.EINVAL)
        }
        guard let dev = devices.device(type, frontend: frontend, devid: devid), dev.backend == dom.domid else {
            log("\(dom.label): asked for the in-flight log of dom\(frontend)'s \(type.kind) \(devid), which it does not serve: refused")
            return .error(.EPERM)
        }
        // A log serves only a restart in place, which only on_crash = "restart" gives: without
        // one the backend knows a crash of its own would lose its devices, and fails only the
        // device an error of its own hits.
        guard dom.config.onCrash == .restart else { return .error(.EOPNOTSUPP) }
        if var log = dev.inflightLogs[Int(queue)] {
            guard log.bytes == Int(bytes) else { return .error(.EINVAL) }
            let before = log.incarnations
            log.incarnations += 1
            dev.inflightLogs[Int(queue)] = log
            return .reply(rc: Int64(before), payload: [], fds: [log.fd], owned: [])
        }
        let fd: FileDescriptor
        do {
            fd = try MemFD.create(name: "pv-inflight-\(type.kind)-\(frontend)-\(devid)-\(queue)", size: Int(bytes))
        } catch {
            logger.warning("in-flight log not made", metadata: ["domid": "\(dom.domid)", "device": "\(type.kind) \(frontend)/\(devid)", "error": "\(error)"])
            return .error(.ENOMEM)
        }
        dev.inflightLogs[Int(queue)] = InflightLogMemory(fd: fd, bytes: Int(bytes), incarnations: 1)
        return .reply(rc: 0, payload: [], fds: [fd], owned: [])
    }

    /// The frontend and device number a `deviceFD` request names (`args[1]`, `args[2]`).
    static func deviceKeyArguments(_ r: HypercallRequest) -> (frontend: DomID, devid: UInt32)? {
        guard r.args[1] <= UInt64(UInt16.max), r.args[2] <= UInt64(UInt32.max) else { return nil }
        return (DomID(UInt16(r.args[1])), UInt32(r.args[2]))
    }

    /// How a DOMAIN argument that names no domain is reported: xl's find_domain refuses an
    /// unknown name; a number it takes as it is, and libxl then fails.
    func noSuchDomain(_ spec: String, numeric: String) -> ControlResponse {
        let isNumber = !spec.isEmpty && spec.allSatisfy(\.isNumber)
        return .error(isNumber ? numeric : "\(spec) is an invalid domain identifier (rc=-6)")
    }
}

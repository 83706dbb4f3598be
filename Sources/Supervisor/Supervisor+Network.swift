import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// A virtual network interface: one `vif=` entry of a frontend, served by a netback domain.
final class VirtualNetworkDevice: SplitDevice {
    let frontend: UInt16
    let devid: UInt32
    let backend: UInt16
    /// `aa:bb:cc:dd:ee:ff`, given or generated.
    let mac: String
    let bridge: String
    let spec: VifSpec
    /// `xl network-detach` in progress.
    var removal: DeviceRemoval?

    init(frontend: UInt16, devid: UInt32, backend: UInt16, mac: String, bridge: String, spec: VifSpec) {
        self.frontend = frontend
        self.devid = devid
        self.backend = backend
        self.mac = mac
        self.bridge = bridge
        self.spec = spec
    }

    var frontendPath: String { "/local/domain/\(frontend)/device/vif/\(devid)" }
    var backendPath: String { "/local/domain/\(backend)/backend/vif/\(frontend)/\(devid)" }
    var what: String { "vif \(devid) (\(mac))" }
    var mtu: Int { spec.mtu ?? VifSpec.defaultMTU }
}

/// A vif checked at `xl create` (before the domain exists) or `xl network-attach`.
struct PlannedVif {
    let spec: VifSpec
    let devid: UInt32
    /// Nil until resolved: the vif has no `backend=` and goes to the default netback.
    var backend: DomainRecord?
    var mac: String
    let bridge: String
    /// How errors name it.
    let what: String
}

/// Virtual network interfaces: `vif=` at `xl create`, `xl network-attach/-detach/-list`, the
/// tap uplinks netback asks for (`deviceFD(.uplink)`), and `xl network-filter`.
extension Supervisor {
    /// The driver domain vifs without `backend=` go to, started on demand.
    static let defaultNetbackName = "netback"

    // MARK: planning

    /// Checks vifs before anything is started: each spec (as `VifSpec.parse` would), its devid
    /// (libxl's numbering at create; for `xl network-attach` into `frontend`, one above the
    /// highest in use, as libxl__device_nextid; a given one must be free), its `backend=` (a
    /// running driver domain), and that no two vifs on the same backend and bridge share a MAC
    /// address, in this config or among every domain's vifs. Vifs without `mac=` get a random
    /// one with Xen's OUI, 00:16:3e, unused on their bridge.
    func planVifs(_ vifs: [VifSpec], frontend dom: DomainRecord?) throws -> [PlannedVif] {
        var devids = VifSpec.assignDevids(vifs)
        if let dom {
            let used = networkDevices.values.filter { $0.frontend == dom.domid }.map { Int($0.devid) }
                + ((try? xenstore.engine.directory("/local/domain/\(dom.domid)/device/vif")) ?? []).compactMap { Int($0) }
            let next = (used.max() ?? -1) + 1
            devids = vifs.map { $0.devid ?? next }
        }
        var planned: [PlannedVif] = []
        for (i, vif) in vifs.enumerated() {
            let devid = devids[i]
            let what = "vif \(devid)" + (vif.spec.isEmpty ? "" : " (\(vif.spec))")
            if let problem = vif.validationProblem() { throw CreateError("\(what): \(problem)") }
            guard let id = UInt32(exactly: devid), devid <= 999_999_999 else { throw CreateError("\(what): devid \(devid) is out of range") }
            if let j = devids[..<i].firstIndex(of: devid) {
                throw CreateError("\(what): devid \(devid) is given twice (vif entries \(j + 1) and \(i + 1); each vif needs its own)")
            }
            if let dom {
                let frontendPath = "/local/domain/\(dom.domid)/device/vif/\(devid)"
                if let other = networkDevices[DeviceKey(frontend: dom.domid, devid: id)] {
                    throw CreateError("\(what): devid \(devid) is already in use by \(dom.label) (its vif with MAC \(other.mac))")
                }
                if (try? xenstore.engine.read(frontendPath)) != nil {
                    throw CreateError("\(what): devid \(devid) is already in use by \(dom.label): \(frontendPath) already exists in xenstore")
                }
            }
            var backend: DomainRecord?
            if let name = vif.backend {
                guard let b = domains.values.first(where: { $0.name == name }), b.hasProcess, b.phase == .running || b.phase == .booting else {
                    throw CreateError("\(what): backend domain \"\(name)\" is not running")
                }
                guard b.config.driverDomain else {
                    throw CreateError("\(what): domain \"\(name)\" is not a driver domain (set driver_domain = 1 in its config)")
                }
                if b === dom { throw CreateError("\(what): \(b.label) cannot be its own backend") }
                backend = b
            }
            planned.append(PlannedVif(spec: vif, devid: id, backend: backend, mac: vif.mac ?? "",
                                      bridge: vif.bridge ?? VifSpec.defaultBridge, what: what))
        }
        try assignMACs(&planned)
        return planned
    }

    /// Checks the given MACs and draws the others: one MAC per backend and bridge.
    func assignMACs(_ planned: inout [PlannedVif]) throws {
        struct Key: Hashable {
            var backend: Int
            var bridge: String
            var mac: String
        }
        // The default netback, if it runs already, is a backend like the others; one still to be
        // started serves nothing yet (-1).
        let defaultNetback = domains.values.first { $0.name == Self.defaultNetbackName }
        func backendID(_ p: PlannedVif) -> Int { Int(p.backend?.domid ?? defaultNetback?.domid ?? UInt16.max) }
        func backendName(_ p: PlannedVif) -> String {
            if let b = p.backend ?? defaultNetback { return b.label }
            return "the default netback"
        }
        var used: [Key: String] = [:]
        // A domain whose process is gone (preserved, or being restarted) sends nothing.
        for dev in networkDevices.values where domains[dev.frontend]?.hasProcess == true {
            used[Key(backend: Int(dev.backend), bridge: dev.bridge, mac: dev.mac)] = "\(domains[dev.frontend]?.label ?? "dom\(dev.frontend)")'s vif \(dev.devid)"
        }
        for p in planned where p.spec.mac != nil {
            let key = Key(backend: backendID(p), bridge: p.bridge, mac: p.mac)
            if let other = used[key] {
                throw CreateError("\(p.what): MAC address \(p.mac) is already used on bridge \(p.bridge) of backend \(backendName(p)) by \(other) (give each vif its own mac=, or leave it out to get a random one)")
            }
            used[key] = "vif \(p.devid) of the same config"
        }
        for i in planned.indices where planned[i].spec.mac == nil {
            while true {
                // libxl__device_nic_setdefault: Xen's OUI, the first random octet below 0x80.
                let r = SecureRandom.bytes(3)
                let mac = MACAddress(octets: [0x00, 0x16, 0x3e, r[0] & 0x7f, r[1], r[2]]).description
                let key = Key(backend: backendID(planned[i]), bridge: planned[i].bridge, mac: mac)
                if used[key] == nil {
                    used[key] = "vif \(planned[i].devid) of the same config"
                    planned[i].mac = mac
                    break
                }
            }
        }
    }

    /// Gives the vifs without `backend=` the default netback (found or started).
    func resolveVifBackends(_ vifs: [PlannedVif]) throws -> [PlannedVif] {
        guard let first = vifs.first(where: { $0.backend == nil }) else { return vifs }
        let netback = try defaultDriverDomain(Self.defaultNetbackName, for: first.what)
        return vifs.map { v in
            var v = v
            if v.backend == nil { v.backend = netback }
            return v
        }
    }

    /// The config a restarted domain (on_reboot/on_crash restart) is created from: as libxl
    /// writes a generated MAC back into the domain's config, vifs without `mac=` keep the MAC
    /// they had.
    func configForRestart(_ dom: DomainRecord) -> DomainConfig {
        var config = dom.config
        let devids = VifSpec.assignDevids(config.vifs)
        for i in config.vifs.indices where config.vifs[i].mac == nil {
            guard let devid = UInt32(exactly: devids[i]) else { continue }
            if let vif = networkDevices[DeviceKey(frontend: dom.domid, devid: devid)] { config.vifs[i].mac = vif.mac }
        }
        return config
    }

    // MARK: nodes

    /// Writes the nodes libxl__device_nic_add writes (libxl__set_xenstore_nic and the generic
    /// device nodes) with their permissions, and records the vifs. Backend
    /// `/local/domain/B/backend/vif/F/DEVID` (owner B, read F): frontend, frontend-id, online,
    /// state, script, mac, bridge, handle, type, mtu, and ip, rate, vifname, gatewaydev and
    /// (Procvisor) gateway when given. Frontend `/local/domain/F/device/vif/DEVID` (owner F,
    /// read B): backend, backend-id, state, handle, mac, trusted; and, read-only for the guest
    /// (owner B, read F, as libxl writes mtu), mtu and the Procvisor keys ip and gateway its
    /// network stack configures itself from.
    func attachVifs(_ dom: DomainRecord, _ planned: [PlannedVif]) {
        for p in planned {
            guard let backend = p.backend else { continue }  // resolveVifBackends gave every vif one
            let vif = VirtualNetworkDevice(frontend: dom.domid, devid: p.devid, backend: backend.domid, mac: p.mac,
                                           bridge: p.bridge, spec: p.spec)
            networkDevices[DeviceKey(frontend: dom.domid, devid: p.devid)] = vif
            let fperm = [XSPermission(domid: vif.frontend, access: .none), XSPermission(domid: vif.backend, access: .read)]
            let bperm = [XSPermission(domid: vif.backend, access: .none), XSPermission(domid: vif.frontend, access: .read)]
            let f = vif.frontendPath, b = vif.backendPath, s = p.spec
            var back: [(String, String)] = [
                ("frontend", f), ("frontend-id", "\(vif.frontend)"), ("online", "1"), ("state", "1"),
                ("script", s.script ?? VifSpec.defaultScript), ("mac", vif.mac), ("bridge", vif.bridge),
                ("handle", "\(vif.devid)"), ("type", "vif"), ("mtu", "\(vif.mtu)"),
            ]
            if let ip = s.ip { back.append(("ip", ip)) }
            if let rate = s.rate { back.append(("rate", VifSpec.rateNode(rate))) }
            if let name = s.vifname { back.append(("vifname", name)) }
            if let dev = s.gatewaydev { back.append(("gatewaydev", dev)) }
            if let gw = s.gateway { back.append(("gateway", gw)) }
            let front: [(String, String)] = [("backend", b), ("backend-id", "\(vif.backend)"), ("state", "1"),
                                             ("handle", "\(vif.devid)"), ("mac", vif.mac), ("trusted", s.trusted == false ? "0" : "1")]
            var readOnlyFront: [(String, String)] = [("mtu", "\(vif.mtu)")]
            if let ip = s.ip { readOnlyFront.append(("ip", ip)) }
            if let gw = s.gateway { readOnlyFront.append(("gateway", gw)) }
            store { e in
                var out = try e.mkdir(b, perms: bperm)
                for (k, v) in back { out += try e.write(b + "/" + k, Array(v.utf8)) }
                out += try e.mkdir(f, perms: fperm)
                for (k, v) in front { out += try e.write(f + "/" + k, Array(v.utf8)) }
                for (k, v) in readOnlyFront { out += try e.write(f + "/" + k, Array(v.utf8), perms: bperm) }
                return out
            }
            log("\(dom.label): vif \(vif.devid) mac \(vif.mac) bridge \(vif.bridge)\(s.ip.map { " ip \($0)" } ?? ""), backend dom\(vif.backend)")
        }
    }

    // MARK: xl network-attach / -list / -detach

    /// How a DOMAIN argument that names no domain is reported: xl's find_domain refuses an
    /// unknown name; a number it takes as it is, and libxl then fails.
    func noSuchDomain(_ spec: String, numeric: String) -> ControlResponse {
        let isNumber = !spec.isEmpty && spec.allSatisfy(\.isNumber)
        return .error(isNumber ? numeric : "\(spec) is an invalid domain identifier (rc=-6)")
    }

    /// `xl network-attach`: the checks of `xl create` for one vif plus a free devid, then the
    /// nodes `xl create` writes. The guest finds the vif with its own watch on `device/vif`.
    func networkAttach(_ spec: String, _ vif: VifSpec) -> ControlResponse {
        guard let dom = find(spec), dom.domid != 0 else {
            if spec == "0" || spec == "Domain-0" {
                return .error("Domain-0 cannot take virtual network interfaces here (it is the supervisor)")
            }
            return noSuchDomain(spec, numeric: "domain \(spec) does not exist")
        }
        guard dom.hasProcess, !dom.released, dom.phase == .running || dom.phase == .booting else {
            return .error("domain \(dom.domid) (\(dom.name)) is not running")
        }
        do {
            let planned = try resolveVifBackends(try planVifs([vif], frontend: dom))
            if let p = planned.first, p.backend === dom { throw CreateError("\(p.what): \(dom.label) cannot be its own backend") }
            attachVifs(dom, planned)
            return .ok
        } catch {
            log("\(dom.label): network-attach \(vif.spec) refused: \(error)")
            return .error("\(error)")
        }
    }

    /// `xl network-list`: what libxl_device_nic_getinfo reads, from the store now.
    func networkList(_ spec: String) -> ControlResponse {
        if spec == "0" || spec == "Domain-0" { return .networkDevices([]) }
        guard let dom = find(spec) else {
            // A number that is no domain lists nothing (libxl finds no nics), a name is refused.
            return !spec.isEmpty && spec.allSatisfy(\.isNumber) ? .networkDevices([]) : noSuchDomain(spec, numeric: "")
        }
        let number = storeNumber
        let rows = networkDevices.values.filter { $0.frontend == dom.domid }.sorted { $0.devid < $1.devid }.map { vif in
            let f = vif.frontendPath
            return NetworkDeviceInfo(devid: vif.devid, backendID: vif.backend, frontendID: vif.frontend, mac: vif.mac,
                                     state: number(f + "/state") ?? -1,
                                     eventChannel: number(f + "/event-channel") ?? number(f + "/event-channel-tx") ?? -1,
                                     txRingRef: number(f + "/tx-ring-ref") ?? -1, rxRingRef: number(f + "/rx-ring-ref") ?? -1,
                                     backendPath: vif.backendPath)
        }
        return .networkDevices(rows)
    }

    /// `xl network-detach DOMAIN DEVID|MAC`: libxl_device_nic_remove. As a disk's safe removal
    /// until the device removal timeout; then, as libxl's LIBXL__FORCE_AUTO, the removal is
    /// forced (the frontend's nodes go, the backend is asked again) and after a second timeout
    /// the nodes are removed anyway and the detach reports the failure.
    func networkDetach(_ spec: String, _ device: String, from c: ControlConnection) {
        guard let dom = find(spec), dom.domid != 0 else {
            return c.send(noSuchDomain(spec, numeric: "Unknown device \(device)."))
        }
        let mine = networkDevices.values.filter { $0.frontend == dom.domid }
        let vif: VirtualNetworkDevice?
        if device.contains(":") {
            let mac = MACAddress(device)
            vif = mac.flatMap { m in mine.first { $0.mac == m.description } }
        } else {
            // xl uses atoi (junk reads as devid 0); a word that is no number names no device here.
            vif = UInt32(device).flatMap { d in mine.first { $0.devid == d } }
        }
        guard let vif else { return c.send(.error("Unknown device \(device).")) }
        startRemoval(vif, force: .auto, from: c)
    }

    // MARK: deviceFD(.uplink)

    /// `deviceFD(.uplink)`: the backend of vif (`args[1]` frontend, `args[2]` devid) asks for the
    /// uplink of that vif's bridge. The supervisor creates a tap named exactly like the bridge
    /// (IFF_TAP|IFF_NO_PI, not persistent, exclusive: an interface of that name that exists
    /// already is EBUSY), sets the vif's MTU on it when not 1500, brings it up and hands over the
    /// only descriptor: the tap goes away when the backend closes it (or dies). Errors: EINVAL
    /// bad arguments; ENOENT no such vif; EACCES the caller does not serve it; the errno of
    /// TUNSETIFF or SIOCSIFFLAGS otherwise (EPERM without CAP_NET_ADMIN, EBUSY name in use).
    func uplinkFD(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard r.args[1] <= UInt64(UInt16.max), r.args[2] <= UInt64(UInt32.max) else { return .error(.EINVAL) }
        guard let vif = networkDevices[DeviceKey(frontend: UInt16(r.args[1]), devid: UInt32(r.args[2]))] else {
            return .error(.ENOENT)
        }
        guard vif.backend == dom.domid else {
            log("\(dom.label): asked for the uplink of dom\(vif.frontend)'s vif \(vif.devid) (bridge \(vif.bridge)), which dom\(vif.backend) serves: refused")
            return .error(.EACCES)
        }
        let name = vif.bridge
        let fd: FileDescriptor
        do {
            fd = try Tap.open(name: name)
        } catch let e as SystemError {
            log("\(dom.label): cannot create tap \(name) as the uplink of bridge \(name): \(e.errno.description)\(Self.tapHint(e.errno))")
            return .ok(-Int64(e.errno.rawValue))
        } catch {
            return .error(.EIO)
        }
        if vif.mtu != VifSpec.defaultMTU {
            do {
                try Tap.setMTU(name, vif.mtu)
            } catch let e as SystemError {
                log("\(dom.label): tap \(name): cannot set mtu \(vif.mtu) (of dom\(vif.frontend)'s vif \(vif.devid)): \(e.errno.description); it stays 1500")
            } catch {}
        }
        do {
            try Tap.setUp(name)
        } catch let e as SystemError {
            fd.close()
            log("\(dom.label): cannot bring tap \(name) up: \(e.errno.description)")
            return .ok(-Int64(e.errno.rawValue))
        } catch {
            fd.close()
            return .error(.EIO)
        }
        log("\(dom.label): tap \(name) created as the uplink of bridge \(name) (asked for through dom\(vif.frontend)'s vif \(vif.devid)) and handed over")
        return .ok(0, fds: [fd], owned: [fd])
    }

    static func tapHint(_ e: Errno) -> String {
        switch e {
        case .notPermitted: return " (the supervisor needs CAP_NET_ADMIN to create taps)"
        case .busy: return " (an interface of that name exists already, or the tap is open)"
        case .noSuchFile, .noDevice: return " (no /dev/net/tun: load the tun module)"
        default: return ""
        }
    }

    // MARK: xl network-filter

    /// `xl network-filter`: the ordered rules of a bridge, stored where netback reads them,
    /// `/local/domain/B/netfilter/BRIDGE` (one rule per line, in NetFilterRule's own text form),
    /// owned by dom0 and readable by backend domain B alone. A rule is checked with
    /// `NetFilterRule.parse` before it is stored. `backend` nil is the default netback (started
    /// for `add` and `insert`).
    func networkFilter(backend name: String?, _ command: NetworkFilterCommand) -> ControlResponse {
        do {
            return try networkFilterChecked(backend: name, command)
        } catch {
            log("network-filter: \(error)")
            return .error("\(error)")
        }
    }

    func networkFilterChecked(backend name: String?, _ command: NetworkFilterCommand) throws -> ControlResponse {
        let backend: DomainRecord?
        switch (name, command) {
        case let (name?, _):
            guard let b = find(name), b.domid != 0, b.hasProcess, b.phase == .running || b.phase == .booting else {
                throw CreateError("backend domain \"\(name)\" is not running")
            }
            guard b.config.driverDomain else {
                throw CreateError("domain \"\(name)\" is not a driver domain (set driver_domain = 1 in its config)")
            }
            backend = b
        case (nil, .add), (nil, .insert):
            backend = try defaultDriverDomain(Self.defaultNetbackName, for: "network-filter")
        case (nil, _):
            backend = domains.values.first { $0.name == Self.defaultNetbackName && $0.hasProcess }
        }
        var bridge: String?
        switch command {
        case let .list(b): bridge = b
        case let .add(b, _), let .insert(b, _, _), let .delete(b, _), let .flush(b): bridge = b
        }
        if let bridge {
            if let p = VifSpec.interfaceNameProblem(bridge) { throw CreateError("invalid bridge name `\(bridge)': \(p)") }
            // ASCII letters and digits (what isalnum accepts in the C locale), '-', '_', '@'.
            let allowed: (UInt8) -> Bool = {
                (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0)
                    || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "@")
            }
            if !bridge.utf8.allSatisfy(allowed) {
                throw CreateError("bridge \(bridge): filter rules can only be kept for bridges named with letters, digits, '-', '_' and '@' (the name is a XenStore node)")
            }
        }
        guard let backend else {
            // No default netback runs: it has no bridges, so no rules.
            switch command {
            case .list(nil): return .networkFilters([])
            case let .list(b?): return .networkFilters([NetworkFilterRules(bridge: b, rules: [])])
            case .flush: return .ok
            case let .delete(b, n): throw CreateError("bridge \(b) has no rule \(n) (it has none: the default netback is not running)")
            case .add, .insert: return .ok  // not reached: started above
            }
        }
        let dir = "/local/domain/\(backend.domid)/netfilter"
        func rules(_ b: String) -> [String] {
            guard let v = try? xenstore.engine.read(dir + "/" + b) else { return [] }
            return String(decoding: v, as: UTF8.self).split(separator: "\n").map(String.init)
        }
        func parse(_ text: String) throws -> String {
            do {
                return try NetFilterRule.parse(text).description
            } catch {
                throw CreateError("bad rule \"\(text)\": \(error)")
            }
        }
        var list: [String]
        switch command {
        case let .list(b?):
            return .networkFilters([NetworkFilterRules(bridge: b, rules: rules(b))])
        case .list(nil):
            let bridges = ((try? xenstore.engine.directory(dir)) ?? []).sorted()
            return .networkFilters(bridges.map { NetworkFilterRules(bridge: $0, rules: rules($0)) }.filter { !$0.rules.isEmpty })
        case let .add(b, text):
            list = rules(b)
            list.append(try parse(text))
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(list.count) added: \(list[list.count - 1])")
        case let .insert(b, n, text):
            list = rules(b)
            guard (1...(list.count + 1)).contains(n) else {
                throw CreateError("bridge \(b): cannot insert at \(n): it has \(list.count) rule\(list.count == 1 ? "" : "s") (positions 1 to \(list.count + 1))")
            }
            list.insert(try parse(text), at: n - 1)
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(n) inserted: \(list[n - 1])")
        case let .delete(b, n):
            list = rules(b)
            guard n >= 1, n <= list.count else {
                throw CreateError("bridge \(b) has no rule \(n) (it has \(list.count) rule\(list.count == 1 ? "" : "s"))")
            }
            let gone = list.remove(at: n - 1)
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(n) deleted: \(gone)")
        case let .flush(b):
            try storeRules(backend, b, [])
            log("network-filter: \(backend.label) bridge \(b): rules flushed")
        }
        return .ok
    }

    /// Writes a bridge's rules (removes the node when there are none), dom0's, readable by the
    /// backend alone.
    func storeRules(_ backend: DomainRecord, _ bridge: String, _ rules: [String]) throws {
        let dir = "/local/domain/\(backend.domid)/netfilter", node = dir + "/" + bridge
        let text = rules.joined(separator: "\n")
        guard text.utf8.count <= XenStoreWire.payloadMax else {
            throw CreateError("bridge \(bridge): \(rules.count) rules take \(text.utf8.count) bytes, more than a XenStore value holds (\(XenStoreWire.payloadMax))")
        }
        let perms = [XSPermission(domid: 0, access: .none), XSPermission(domid: backend.domid, access: .read)]
        var failure: Error?
        store { e in
            do {
                if rules.isEmpty { return (try? e.rm(node)) ?? [] }
                var out = try e.mkdir(dir, perms: perms)
                out += try e.write(node, Array(text.utf8), perms: perms)
                return out
            } catch {
                failure = error
                return []
            }
        }
        if let failure { throw CreateError("bridge \(bridge): cannot store the rules in \(node): \(failure)") }
    }
}

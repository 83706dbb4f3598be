import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

extension DeviceRegistration {
    /// Virtual network interfaces: `vif=` entries, `xl network-attach/-detach/-list`, and the
    /// tap uplinks netback asks for (`deviceFD(.uplink)`). (`xl network-filter` keeps the rules
    /// of a netback's bridges.)
    static let network = DeviceRegistration(
        type: .network,
        plan: { supervisor, config in try supervisor.planVifs(config.vifs, frontend: nil).map(\.device) },
        descriptors: [.uplink: { $0.uplinkFD($1, $2) }])
}

extension DeviceManager {
    func vif(_ frontend: DomID, _ devid: UInt32) -> VirtualNetworkDevice? {
        device(.network, frontend: frontend, devid: devid) as? VirtualNetworkDevice
    }

    var vifs: [VirtualNetworkDevice] { all(.network).compactMap { $0 as? VirtualNetworkDevice } }
}

extension Supervisor {
    /// The driver domain vifs without `backend=` go to, started on demand.
    static let defaultNetbackName = SplitDeviceType.network.defaultBackend

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
            let used = devices.devices(of: dom.domid, .network).map { Int($0.devid) } + devices.storedDevids(.network, frontend: dom.domid)
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
                if let other = devices.vif(dom.domid, id) {
                    throw CreateError("\(what): devid \(devid) is already in use by \(dom.label) (its vif with MAC \(other.mac))")
                }
                if let path = devices.frontendExists(.network, frontend: dom.domid, devid: id) {
                    throw CreateError("\(what): devid \(devid) is already in use by \(dom.label): \(path) already exists in xenstore")
                }
            }
            var backend: DomainRecord?
            if let name = vif.backend {
                let b = try namedBackend(name, for: what, booting: true)
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
        let defaultNetback = domains.named(Self.defaultNetbackName)
        func backendID(_ p: PlannedVif) -> Int { Int(p.backend?.domid.rawValue ?? defaultNetback?.domid.rawValue ?? UInt16.max) }
        func backendName(_ p: PlannedVif) -> String {
            if let b = p.backend ?? defaultNetback { return b.label }
            return "the default netback"
        }
        var used: [Key: String] = [:]
        // A domain whose process is gone (preserved, or being restarted) sends nothing; nor does
        // one suspended for a save, or the domain a restore is the copy of (a migration to this
        // same supervisor: the incoming copy takes over the source's MAC, as in Xen).
        var sourceMACs: Set<Key> = []
        for dev in devices.vifs {
            guard let owner = domains[dev.frontend], owner.hasProcess else { continue }
            // The source of the migration being restored (the same uuid): its copy's vifs are
            // made while it runs, and used once it is suspended; a copy restored beside a running
            // original is refused when it would start (`restoreFinish`).
            let source = owner.uuid == restoringUUID
            if source { sourceMACs.insert(Key(backend: Int(dev.backend.rawValue), bridge: dev.bridge, mac: dev.mac)) }
            guard !owner.suspended, !source else { continue }
            used[Key(backend: Int(dev.backend.rawValue), bridge: dev.bridge, mac: dev.mac)] = "\(domains[dev.frontend]?.label ?? "dom\(dev.frontend)")'s vif \(dev.devid)"
        }
        for p in planned where p.spec.mac != nil {
            let key = Key(backend: backendID(p), bridge: p.bridge, mac: p.mac)
            if let other = used[key] {
                throw CreateError("\(p.what): MAC address \(p.mac) is already used on bridge \(p.bridge) of backend \(backendName(p)) by \(other) (give each vif its own mac=, or leave it out to get a random one)")
            }
            used[key] = "vif \(p.devid) of the same config"
        }
        for i in planned.indices where planned[i].spec.mac != nil {
            planned[i].takeover = sourceMACs.contains(Key(backend: backendID(planned[i]), bridge: planned[i].bridge, mac: planned[i].mac))
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

    /// The config a restarted domain (on_reboot/on_crash restart) is created from: as libxl
    /// writes a generated MAC back into the domain's config, vifs without `mac=` keep the MAC
    /// they had.
    func configForRestart(_ dom: DomainRecord) -> DomainConfig {
        var config = dom.config
        let devids = VifSpec.assignDevids(config.vifs)
        for i in config.vifs.indices where config.vifs[i].mac == nil {
            guard let devid = UInt32(exactly: devids[i]) else { continue }
            if let vif = devices.vif(dom.domid, devid) { config.vifs[i].mac = vif.mac }
        }
        return config
    }

    // MARK: xl network-attach / -list / -detach

    /// `xl network-attach`: the checks of `xl create` for one vif plus a free devid, then the
    /// nodes `xl create` writes. The guest finds the vif with its own watch on `device/vif`.
    func networkAttach(_ spec: String, _ vif: VifSpec) -> ControlResponse {
        var refusal = ControlResponse.ok
        guard let dom = attachTarget(spec, .network, unknown: { self.noSuchDomain($0, numeric: "domain \($0) does not exist") }, refusal: &refusal) else { return refusal }
        do {
            let planned = try resolveBackends(try planVifs([vif], frontend: dom).map(\.device))
            if let p = planned.first, p.backend === dom { throw CreateError("\(p.what): \(dom.label) cannot be its own backend") }
            attachDevices(dom, planned)
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
        let number = devices.number
        let rows = devices.devices(of: dom.domid, .network).compactMap { $0 as? VirtualNetworkDevice }.map { vif in
            let f = vif.frontendPath
            return NetworkDeviceInfo(devid: vif.devid, backendID: vif.backend.rawValue, frontendID: vif.frontend.rawValue, mac: vif.mac,
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
        let mine = devices.devices(of: dom.domid, .network).compactMap { $0 as? VirtualNetworkDevice }
        let vif: VirtualNetworkDevice?
        if device.contains(":") {
            let mac = MACAddress(device)
            vif = mac.flatMap { m in mine.first { $0.mac == m.description } }
        } else {
            // xl uses atoi (junk reads as devid 0); a word that is no number names no device here.
            vif = UInt32(device).flatMap { d in mine.first { $0.devid == d } }
        }
        guard let vif else { return c.send(.error("Unknown device \(device).")) }
        devices.startRemoval(vif, force: .auto, from: c)
    }

    // MARK: deviceFD(.uplink)

    /// `deviceFD(.uplink)`: the backend of vif (`args[1]` frontend, `args[2]` devid) asks for the
    /// uplink of that vif's bridge. The supervisor creates a tap named exactly like the bridge
    /// (IFF_TAP|IFF_NO_PI, not persistent, exclusive: an interface of that name that exists
    /// already is EBUSY), sets the vif's MTU on it when not 1500, brings it up and hands over a
    /// descriptor, keeping one (`keptTaps`): the tap lives as long as that driver domain, across
    /// its restarts in place (a new incarnation asking again gets the same tap, and frames the
    /// host sent meanwhile wait in its queue), and goes when the domain does. Errors: EINVAL
    /// bad arguments; ENOENT no such vif; EACCES the caller does not serve it; the errno of
    /// TUNSETIFF or SIOCSIFFLAGS otherwise (EPERM without CAP_NET_ADMIN, EBUSY name in use).
    func uplinkFD(_ dom: DomainRecord, _ r: HypercallRequest) -> HypercallOutcome {
        guard let (frontend, devid) = Self.deviceKeyArguments(r) else { return .error(.EINVAL) }
        guard let vif = devices.vif(frontend, devid) else { return .error(.ENOENT) }
        guard vif.backend == dom.domid else {
            log("\(dom.label): asked for the uplink of dom\(vif.frontend)'s vif \(vif.devid) (bridge \(vif.bridge)), which dom\(vif.backend) serves: refused")
            return .error(.EACCES)
        }
        let name = vif.bridge
        if let kept = keptTaps[name], kept.backend == dom.domid {
            log("\(dom.label): tap \(name) handed over again as the uplink of bridge \(name)")
            return .ok(0, fds: [kept.fd], owned: [])
        }
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
        keptTaps[name] = (dom.domid, fd)
        return .ok(0, fds: [fd], owned: [])
    }

    /// Closes the taps `backend` was given (the driver domain is gone for good).
    func releaseTaps(of backend: DomID) {
        for (name, kept) in keptTaps where kept.backend == backend {
            kept.fd.close()
            keptTaps[name] = nil
        }
    }

    static func tapHint(_ e: Errno) -> String {
        switch e {
        case .notPermitted: return " (the supervisor needs CAP_NET_ADMIN to create taps)"
        case .busy: return " (an interface of that name exists already, or the tap is open)"
        case .noSuchFile, .noDevice: return " (no /dev/net/tun: load the tun module)"
        default: return ""
        }
    }
}

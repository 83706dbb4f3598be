import FoundationEssentials
import ProcvisorABI

/// Requests `xl` sends to the supervisor over its control socket (`$PROCVISOR_RUNDIR/control`).
/// Framing: a little-endian u32 length, then that many bytes of JSON.
public enum ControlRequest: Codable, Equatable, Sendable {
    case create(config: DomainConfig, paused: Bool)
    case destroy(domain: String)
    /// `xl shutdown` (reason poweroff) and `xl reboot` (reason reboot).
    case shutdown(domain: String, reason: ShutdownReason)
    case pause(domain: String)
    case unpause(domain: String)
    case rename(domain: String, newName: String)
    /// Domains matching the names/ids given, or all domains (dom0 first) when empty. Their
    /// configs come too unless `withConfig` is false (nil, from an older xl, is true).
    case list(domains: [String], withConfig: Bool? = nil)
    case info
    /// After `.consoleAttached` the connection carries raw console bytes both ways.
    case consoleAttach(domain: String)
    /// `xl sched-credit` / `sched-credit2` without -w/-c: the weight and cap of the domains
    /// named, or of all (dom0 first) when empty; replied as `.schedParams`.
    case schedGet(domains: [String])
    /// `xl top`: every domain's figures with its devices' statistics and the host's, replied as
    /// `.topSample`.
    case topSample
    /// `xl sched-credit -d DOMAIN [-w WEIGHT] [-c CAP]`: nil leaves that parameter as it is.
    /// `scheduler` is the one the command is for ("credit", "credit2"); it must be the host's.
    case schedSet(domain: String, scheduler: String, weight: Int?, cap: Int?)
    case dmesg(clear: Bool)
    /// `xl mem-max`: the most memory (KiB) the domain may hold.
    case memMax(domain: String, kb: UInt64)
    /// `xl mem-set`: writes `memory/target`; the guest's balloon driver follows it.
    case memSet(domain: String, kb: UInt64)
    /// Replies `.shutdownDone` once domain `domid` has shut down (or at once if it already has).
    case waitShutdown(domid: UInt16)
    /// `xl block-attach`: a disk (parsed by xl with the `disk=` grammar) for a running domain.
    /// The same checks as `xl create`, plus the vdev must be free; `.ok` once the nodes are written.
    case blockAttach(domain: String, disk: DiskSpec)
    /// `xl block-detach`: `device` is a vdev name or number. Without `force`, libxl's safe removal
    /// (backend `online`=0, `state`=Closing; the backend must reach Closed within the device
    /// removal timeout, else it fails and the device stays); with `force`, libxl's destroy (the
    /// frontend's nodes go first, and everything goes even if the backend does not answer).
    /// Replies when the removal is over.
    case blockDetach(domain: String, device: String, force: Bool)
    /// `xl block-list`: one domain's virtual block devices, replied as `.blockDevices`.
    case blockList(domain: String)
    /// `xl network-attach`: a vif (parsed by xl with the `vif=` grammar) for a running domain.
    /// The checks of `xl create` plus a free devid; `.ok` once the nodes are written.
    case networkAttach(domain: String, vif: VifSpec)
    /// `xl network-detach`: `device` is a devid or a MAC address. libxl_device_nic_remove:
    /// backend `online`=0, `state`=Closing; if the backend does not reach Closed within the
    /// device removal timeout, the removal is forced (the frontend's nodes go, the backend is
    /// asked again) and, after one more timeout, the nodes are removed anyway and the reply is
    /// an error. Replies when the removal is over.
    case networkDetach(domain: String, device: String)
    /// `xl network-list`: one domain's vifs, replied as `.networkDevices`.
    case networkList(domain: String)
    /// `xl network-filter` (Procvisor): the packet filter rules of the bridges of a netback
    /// driver domain (`backend`, nil = the default `netback`). `.networkFilters` for `.list`,
    /// `.ok` for the others.
    case networkFilter(backend: String?, command: NetworkFilterCommand)
    case ping
    /// `xl save` / `xl migrate`: libxl's suspend (`control/shutdown` = "suspend", then wait for
    /// SCHEDOP_shutdown(SHUTDOWN_suspend) within the suspend timeout). `.suspended` with the
    /// RAM memfd once the guest has suspended; the domain stays suspended until `.resume` or
    /// `.destroy`, or this connection closes (then it resumes).
    case suspend(domain: String)
    /// After `.suspended`: the domain carries on where it stopped (its SCHEDOP_shutdown returns
    /// 1, a cancelled suspend, as after `xc_domain_resume(fast)`); `paused` leaves it paused.
    case resume(domain: String, paused: Bool)
    /// `xl restore` / `xl migrate-receive`, step 1: reserve a domain for a stream (`.restoring`).
    /// The reservation ends with this connection unless `.restoreFinish` started the domain.
    case restoreBegin(RestorePlan)
    /// Step 2: the pages are in the RAM memfd; start the domain (`.created` once it engaged).
    case restoreFinish(domid: UInt16, contents: RestoreContents)
    /// `xl migrate`, live: log the pages the running domain writes (`.dirtyLogStarted` with its
    /// RAM memfd). The log ends with this connection, a resume, or the domain.
    case dirtyLogStart(domain: String)
    /// The pages written since the last call (`.dirtyPages`), and the log cleared.
    case dirtyPages(domain: String)
    /// `xl live-update`: the supervisor replaces itself with `binary` (nil: the binary it was
    /// started from), keeping every domain; `.liveUpdated` comes from the new binary.
    case liveUpdate(binary: String?)
}

/// Supervisor replies.
public enum ControlResponse: Codable, Equatable, Sendable {
    case ok
    case error(String)
    case created(domid: UInt16)
    case domains([DomainInfo])
    case info(HostInfo)
    case dmesg(String)
    case consoleAttached(domid: UInt16)
    case schedParams(scheduler: String, [SchedParams])
    case topSample(TopSample)
    case pong(pid: Int32)
    /// Domain `domid` has shut down with this `SHUTDOWN_*` reason code.
    case shutdownDone(domid: UInt16, reason: ShutdownReason)
    /// The reply to `.blockList`, in device number order.
    case blockDevices([BlockDeviceInfo])
    /// The reply to `.networkList`, in devid order.
    case networkDevices([NetworkDeviceInfo])
    /// The reply to `.networkFilter(.list)`, bridges in name order.
    case networkFilters([NetworkFilterRules])
    /// The reply to `.suspend`; the domain's RAM memfd (read-only) comes with it.
    case suspended(SuspendedDomain)
    /// The reply to `.restoreBegin`; the new domain's RAM memfd (writable) comes with it.
    /// `memoryCgroup`: the domain's memory cgroup, which the writer of its pages joins so they
    /// are charged to the domain (nil: none).
    case restoring(domid: UInt16, memoryCgroup: String?)
    /// The reply to `.dirtyLogStart`; the domain's RAM memfd (read-only) comes with it.
    case dirtyLogStarted(DirtyLogStart)
    case dirtyPages(DirtyPages)
    /// The reply to `.liveUpdate`, from the new binary: how long the supervisor was away.
    case liveUpdated(binary: String, pauseMs: Double)
}

/// What `xl network-filter` asks of a bridge's rule list. Positions count from 1.
public enum NetworkFilterCommand: Codable, Equatable, Sendable {
    /// The rules of one bridge, or of every bridge that has some.
    case list(bridge: String?)
    /// Appends a rule.
    case add(bridge: String, rule: String)
    /// Inserts a rule before rule `position` (`count + 1` appends).
    case insert(bridge: String, position: Int, rule: String)
    /// Deletes rule `position`.
    case delete(bridge: String, position: Int)
    /// Deletes every rule of the bridge.
    case flush(bridge: String)
}

/// The ordered packet filter rules of one bridge, one rule per element.
public struct NetworkFilterRules: Codable, Equatable, Sendable {
    public var bridge: String
    public var rules: [String]

    public init(bridge: String, rules: [String]) {
        self.bridge = bridge
        self.rules = rules
    }
}

/// One vif as `xl network-list` shows it (libxl_nicinfo): values read from XenStore when
/// asked; -1 where a node is missing, as libxl.
public struct NetworkDeviceInfo: Codable, Equatable, Sendable {
    public var devid: UInt32
    public var backendID: UInt16
    public var frontendID: UInt16
    /// `aa:bb:cc:dd:ee:ff`.
    public var mac: String
    /// The frontend's xenbus `state`.
    public var state: Int
    /// The frontend's `event-channel` (`event-channel-tx` with split event channels).
    public var eventChannel: Int
    /// The frontend's `tx-ring-ref` and `rx-ring-ref`.
    public var txRingRef: Int
    public var rxRingRef: Int
    /// `/local/domain/B/backend/vif/F/DEVID`.
    public var backendPath: String

    public init(devid: UInt32, backendID: UInt16, frontendID: UInt16, mac: String, state: Int, eventChannel: Int,
                txRingRef: Int, rxRingRef: Int, backendPath: String) {
        self.devid = devid
        self.backendID = backendID
        self.frontendID = frontendID
        self.mac = mac
        self.state = state
        self.eventChannel = eventChannel
        self.txRingRef = txRingRef
        self.rxRingRef = rxRingRef
        self.backendPath = backendPath
    }
}

/// One virtual block device as `xl block-list` shows it (libxl_diskinfo): the values are read
/// from XenStore when asked; -1 where a node is missing, as libxl.
public struct BlockDeviceInfo: Codable, Equatable, Sendable {
    /// The device number (`virtual-device`), e.g. 51712.
    public var devid: UInt32
    /// The name it was attached with, e.g. `xvda`.
    public var vdev: String
    public var backendID: UInt16
    public var frontendID: UInt16
    /// The frontend's xenbus `state`.
    public var state: Int
    /// The frontend's `event-channel`.
    public var eventChannel: Int
    /// The frontend's `ring-ref` (`ring-ref0` for a multi-page ring).
    public var ringRef: Int
    /// `/local/domain/B/backend/vbd/F/DEVID`.
    public var backendPath: String

    public init(devid: UInt32, vdev: String, backendID: UInt16, frontendID: UInt16, state: Int, eventChannel: Int,
                ringRef: Int, backendPath: String) {
        self.devid = devid
        self.vdev = vdev
        self.backendID = backendID
        self.frontendID = frontendID
        self.state = state
        self.eventChannel = eventChannel
        self.ringRef = ringRef
        self.backendPath = backendPath
    }
}

/// One row of the domain table, as `xl list` needs it.
public struct DomainInfo: Codable, Equatable, Sendable {
    public var domid: UInt16
    public var name: String
    public var uuid: String
    public var currentMemoryKB: UInt64
    public var maxMemoryKB: UInt64
    public var vcpusOnline: Int
    public var maxVCPUs: Int
    public var running: Bool
    public var blocked: Bool
    public var paused: Bool
    public var shutdown: Bool
    /// Meaningful when `shutdown` is set.
    public var shutdownReason: ShutdownReason?
    public var dying: Bool
    public var cpuTimeNs: UInt64
    /// Seconds since the epoch when the domain was started.
    public var startTime: UInt64
    /// Host pid of the domain process (0 for dom0's row and for domains whose process is gone).
    public var pid: Int32
    /// Why the domain crashed, when it did (e.g. "forbidden system call openat").
    public var crashReason: String?
    public var config: DomainConfig?

    public init(domid: UInt16, name: String, uuid: String, currentMemoryKB: UInt64, maxMemoryKB: UInt64,
                vcpusOnline: Int, maxVCPUs: Int, running: Bool, blocked: Bool, paused: Bool, shutdown: Bool,
                shutdownReason: ShutdownReason?, dying: Bool, cpuTimeNs: UInt64, startTime: UInt64, pid: Int32,
                crashReason: String? = nil, config: DomainConfig? = nil) {
        self.domid = domid
        self.name = name
        self.uuid = uuid
        self.currentMemoryKB = currentMemoryKB
        self.maxMemoryKB = maxMemoryKB
        self.vcpusOnline = vcpusOnline
        self.maxVCPUs = maxVCPUs
        self.running = running
        self.blocked = blocked
        self.paused = paused
        self.shutdown = shutdown
        self.shutdownReason = shutdownReason
        self.dying = dying
        self.cpuTimeNs = cpuTimeNs
        self.startTime = startTime
        self.pid = pid
        self.crashReason = crashReason
        self.config = config
    }
}

/// What `xl info` prints, gathered by the supervisor.
public struct HostInfo: Codable, Equatable, Sendable {
    public var host: String
    public var release: String
    public var version: String
    public var machine: String
    public var nrCPUs: Int
    public var cpuMHz: Double
    public var totalMemoryMB: UInt64
    public var freeMemoryMB: UInt64
    public var xenMajor: UInt32
    public var xenMinor: UInt32
    public var xenExtra: String
    public var xenCaps: String
    public var xenScheduler: String
    public var pageSize: Int
    public var commandline: String
    public var supervisorPid: Int32
    public var runDirectory: String
    public var controlSocket: String
    public var nrDomains: Int
    /// The dom0 XenStore socket (what `XENSTORED_PATH` should name).
    public var xenstoreSocket: String = ""

    public init(host: String, release: String, version: String, machine: String, nrCPUs: Int, cpuMHz: Double,
                totalMemoryMB: UInt64, freeMemoryMB: UInt64, xenMajor: UInt32, xenMinor: UInt32, xenExtra: String,
                xenCaps: String, xenScheduler: String, pageSize: Int, commandline: String, supervisorPid: Int32,
                runDirectory: String, controlSocket: String, nrDomains: Int, xenstoreSocket: String = "") {
        self.xenstoreSocket = xenstoreSocket
        self.host = host
        self.release = release
        self.version = version
        self.machine = machine
        self.nrCPUs = nrCPUs
        self.cpuMHz = cpuMHz
        self.totalMemoryMB = totalMemoryMB
        self.freeMemoryMB = freeMemoryMB
        self.xenMajor = xenMajor
        self.xenMinor = xenMinor
        self.xenExtra = xenExtra
        self.xenCaps = xenCaps
        self.xenScheduler = xenScheduler
        self.pageSize = pageSize
        self.commandline = commandline
        self.supervisorPid = supervisorPid
        self.runDirectory = runDirectory
        self.controlSocket = controlSocket
        self.nrDomains = nrDomains
    }
}

/// Length-prefixed JSON frames on a stream.
public enum ControlFraming {
    public static let maxFrame = 16 << 20

    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let json = try JSONEncoder().encode(value)
        var out = WireWriter(capacity: json.count + 4)
        out.u32(UInt32(json.count))
        out.raw(json)
        return out.bytes
    }

    /// Pops one complete frame off the front of `buffer`, or nil when more bytes are needed.
    public static func decode<T: Decodable>(_ type: T.Type, from buffer: inout [UInt8]) throws -> T? {
        guard buffer.count >= 4 else { return nil }
        let len = Int(UInt32(buffer[0]) | UInt32(buffer[1]) << 8 | UInt32(buffer[2]) << 16 | UInt32(buffer[3]) << 24)
        if len > maxFrame { throw WireError.tooLarge(what: "control frame", size: len, limit: maxFrame) }
        guard buffer.count >= 4 + len else { return nil }
        let body = Data(buffer[4..<(4 + len)])
        buffer.removeFirst(4 + len)
        return try JSONDecoder().decode(T.self, from: body)
    }
}

/// Where things live: the run directory and the files in it.
public struct RunDirectory: Sendable {
    public var path: String

    /// `$PROCVISOR_RUNDIR`, else `/run/procvisor` for root, else `$XDG_RUNTIME_DIR/procvisor`,
    /// else `/tmp/procvisor-UID`.
    public static func resolve(environment: [String: String], uid: UInt32) -> RunDirectory {
        if let dir = environment["PROCVISOR_RUNDIR"], !dir.isEmpty { return RunDirectory(path: dir) }
        if uid == 0 { return RunDirectory(path: "/run/procvisor") }
        if let xdg = environment["XDG_RUNTIME_DIR"], !xdg.isEmpty { return RunDirectory(path: xdg + "/procvisor") }
        return RunDirectory(path: "/tmp/procvisor-\(uid)")
    }

    public init(path: String) { self.path = path }

    public var controlSocket: String { path + "/control" }
    /// The XenStore socket for dom0 tools (`XENSTORED_PATH`), in its own 0700 directory as Xen's
    /// /run/xenstored.
    public var xenstoreDirectory: String { path + "/xenstored" }
    public var xenstoreSocket: String { xenstoreDirectory + "/socket" }
    public var pidFile: String { path + "/procvisord.pid" }
    public var lockFile: String { path + "/procvisord.lock" }
    public var supervisorLog: String { path + "/procvisord.log" }
    public var consoleLogDirectory: String { path + "/console" }
    /// Where each domain's read-only root is mounted, in that domain's own mount namespace only
    /// (on the host it stays an empty directory).
    public var jailMountPoint: String { path + "/jail" }
    public func consoleLog(name: String) -> String { consoleLogDirectory + "/guest-\(name).log" }
}

/// A domain's credit scheduler parameters, as `xl sched-credit` shows them.
public struct SchedParams: Codable, Equatable, Sendable {
    /// Xen's default weight.
    public static let defaultWeight = 256
    public static let weightRange = 1...65535

    public var domid: UInt16
    public var name: String
    public var weight: Int
    /// Percent of one CPU, 0 for no cap.
    public var cap: Int

    public init(domid: UInt16, name: String, weight: Int, cap: Int) {
        self.domid = domid
        self.name = name
        self.weight = weight
        self.cap = cap
    }
}

/// What `xl top` shows at one instant (xentop's libxenstat node): the host and, per domain, its
/// `xl list` figures and its devices' totals from their backends' `statistics` nodes.
public struct TopSample: Codable, Equatable, Sendable {
    public struct Domain: Codable, Equatable, Sendable {
        public var info: DomainInfo
        public var nets: Int
        /// Bytes the domain sent and received on all its vifs (netback's tx-bytes, rx-bytes).
        public var netTxBytes: UInt64
        public var netRxBytes: UInt64
        public var vbds: Int
        /// blkback's counts summed over the domain's disks; nil when none of its disks has
        /// statistics (xentop shows `-`).
        public var vbd: VBDTotals?

        public init(info: DomainInfo, nets: Int, netTxBytes: UInt64, netRxBytes: UInt64, vbds: Int, vbd: VBDTotals?) {
            self.info = info
            self.nets = nets
            self.netTxBytes = netTxBytes
            self.netRxBytes = netRxBytes
            self.vbds = vbds
            self.vbd = vbd
        }
    }

    public struct VBDTotals: Codable, Equatable, Sendable {
        public var oo: UInt64 = 0, rd: UInt64 = 0, wr: UInt64 = 0, rdSect: UInt64 = 0, wrSect: UInt64 = 0
        public init(oo: UInt64 = 0, rd: UInt64 = 0, wr: UInt64 = 0, rdSect: UInt64 = 0, wrSect: UInt64 = 0) {
            self.oo = oo
            self.rd = rd
            self.wr = wr
            self.rdSect = rdSect
            self.wrSect = wrSect
        }
    }

    public var host: HostInfo
    /// When the sample was taken (CLOCK_MONOTONIC, ns): CPU(%) is the CPU time between two
    /// samples over the time between them.
    public var monotonicNs: UInt64
    public var domains: [Domain]

    public init(host: HostInfo, monotonicNs: UInt64, domains: [Domain]) {
        self.host = host
        self.monotonicNs = monotonicNs
        self.domains = domains
    }

    /// `key value key value …` (a backend's `statistics` node) as a dictionary; words that do
    /// not pair up with a number are skipped.
    public static func statistics(_ text: String) -> [String: UInt64] {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        var out: [String: UInt64] = [:]
        var i = 0
        while i + 1 < words.count {
            if let v = UInt64(words[i + 1]) { out[String(words[i])] = v; i += 2 } else { i += 1 }
        }
        return out
    }
}

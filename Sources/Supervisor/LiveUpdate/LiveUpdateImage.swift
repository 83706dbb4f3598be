import ProcvisorABI
import Toolstack
import XenStore

/// Everything a running supervisor holds, as plain values and descriptor numbers: what a live
/// update hands to the binary that replaces it (written to a memfd whose number the new
/// binary gets as `--live-update-state FD`, after a magic line and the version, in
/// `BinaryCoder`'s form). Descriptors are not copied: the old process
/// clears their close-on-exec flag, so after `execve` the same numbers name the same files.
struct LiveUpdateImage: Codable {
    static let magic = "Procvisor supervisor live-update state"
    /// The layout written by this binary.
    static let currentVersion = 2
    /// The oldest layout this binary can take over (version 1 had no standby incarnations: its
    /// `standbys` is absent).
    static let oldestVersion = 1

    /// The process the state belongs to (the same pid after the exec).
    var pid: Int32
    var startTime: UInt64
    var lockFD: Int32
    var controlListenFD: Int32
    var xenstoreListenFD: Int32
    var jail: JailSettings
    var cgroupsUsable: Bool
    var dmesg: [String]
    var driverRestarts: [String: [UInt64]]
    var keptTaps: [KeptTapImage]
    var domidRover: UInt16
    var machine: MachineImage
    var grants: GrantImage
    var events: EventChannelImage
    var xenstore: XenStoreServerImage
    var domains: [DomainImage]
    var devices: [DeviceImage]
    var consoleLogs: [ConsoleLogImage]
    var control: [ControlConnectionImage]
    /// Who asked for the update and waits for its answer from the new binary.
    var requester: LiveUpdateRequester?
    /// The binary that was executed.
    var binary: String
    /// When the old binary began the handover (monotonic ns): the pause domains saw ends when
    /// the new one serves again.
    var handoverStart: UInt64
    /// Every descriptor the state names (close-on-exec is cleared on them for the exec and
    /// set again by the new binary).
    var descriptors: [Int32]
    /// How recently gone domains ended (domid → shutdown reason), for late `waitShutdown`s.
    var recentShutdowns: [UInt16: UInt32]
    /// Driver domains' standby incarnations, and those killed but not yet reaped (nil in a
    /// version 1 state).
    var standbys: [StandbyImage]?
}

struct StandbyImage: Codable {
    var domid: UInt16
    var uuid: String
    var kernel: String
    var stamp: KernelStamp?
    var pid: Int32
    /// Killed, waiting to be reaped (its descriptors are closed: only its cgroups are left).
    var retired: Bool
    var hypercallFD: Int32
    var eventFD: Int32
    var consoleOutFD: Int32
    var consoleInFD: Int32
    var listener: Int32?
    var memoryCgroup: CgroupImage?
    var pidsCgroup: CgroupImage?
}

enum LiveUpdateRequester: Codable, Equatable {
    /// An `xl live-update` connection (its descriptor).
    case control(fd: Int32)
    /// An XS_CONTROL `live-update` request on a XenStore connection.
    case xenstore(connection: Int, requestID: UInt32)
}

struct KeptTapImage: Codable {
    var bridge: String
    var backend: UInt16
    var fd: Int32
}

struct CgroupImage: Codable {
    var path: String
    var version: String
}

struct MachineImage: Codable {
    var totalFrames: UInt64
    var freeFrames: UInt64
    /// Frames given back, to be handed out again first: u64s, little-endian, as one byte string.
    var returned: [UInt8]
    /// Frames handed out so far in the allocator's stride order.
    var cursor: UInt64
    var stride: UInt64
    var m2pFD: Int32
    var m2pReadOnlyFD: Int32
    var domains: [DomainMemoryImage]
}

struct DomainMemoryImage: Codable {
    var domid: UInt16
    var ramFD: Int32
    var p2mFD: Int32
    var p2mReadOnlyFD: Int32
    var spanPages: UInt64
    var maxPages: UInt64
    var currentPages: UInt64
    var cgroup: CgroupImage?
}

struct GrantPageImage: Codable {
    var fd: Int32
    var name: String
    var owner: UInt16
    var gfn: UInt64
    var mapCount: Int
}

struct MapTrackImage: Codable {
    var handle: UInt32
    var granter: UInt16
    var ref: UInt32
    /// The page's descriptor (its key in `GrantImage.pages`).
    var page: Int32
    var readonly: Bool
}

struct DomainGrantsImage: Codable {
    var domid: UInt16
    var maxFrames: Int
    var nrFrames: Int
    var tableFD: Int32?
    /// gfn → the page's descriptor.
    var pages: [UInt64: Int32]
    var nextGFN: UInt64
    var freeGFNs: [UInt64]
    var exposureFD: Int32?
    var exposureReadOnlyFD: Int32?
    var budgetRefusalLogged: Bool
    var maptrack: [MapTrackImage]
    var nextHandle: UInt32
    /// ref → (readers, writers).
    var active: [UInt32: [Int]]
}

struct GrantImage: Codable {
    var nextSerial: UInt64
    var pages: [GrantPageImage]
    var tables: [DomainGrantsImage]
}

struct PortImage: Codable {
    enum Kind: String, Codable { case unbound, interdomain, virq, ipi }
    var port: UInt32
    var kind: Kind
    var remote: UInt16 = 0
    var remotePort: UInt32 = 0
    var virq: UInt32 = 0
    var vcpu: UInt32 = 0
}

struct DomainChannelsImage: Codable {
    var domid: UInt16
    var ports: [PortImage]
    var doorbellFD: Int32
    var peersGiven: [UInt16]
    var maxVCPUs: Int
}

struct EventChannelImage: Codable {
    var channels: [DomainChannelsImage]
    /// pair key → page descriptor.
    var pairPages: [UInt32: Int32]
}

struct XSSocketImage: Codable {
    var id: Int
    var fd: Int32
    var input: [UInt8]
    var output: [UInt8]
}

struct XSRingImage: Codable {
    var id: Int
    var domid: UInt16
    var input: [UInt8]
    var output: [UInt8]
    /// Ends of the queued replies, relative to `output`.
    var replyEnds: [Int]
    var outstanding: Int
    var throttled: Bool
    var broken: Bool
    /// Since when its queued output has not moved (monotonic ns; nil while it takes it).
    var stalledSince: UInt64?
}

struct XenStoreServerImage: Codable {
    var engine: XenStoreSnapshot
    var nextID: Int
    var sockets: [XSSocketImage]
    var rings: [XSRingImage]
}

struct DomainImage: Codable {
    var state: DomainState
    var pid: Int32
    var startMonotonic: UInt64
    var hypercallFD: Int32
    var eventFD: Int32
    var consoleOutFD: Int32
    var consoleInFD: Int32
    /// Which of the descriptors above (and the listener) the loop was watching.
    var watched: [Int32]
    var boundListener: Int32?
    var storePageFD: Int32?
    var storeKickFD: Int32?
    var storePort: UInt32?
    var pidsCgroup: CgroupImage?
    var released: Bool
    /// A `control/shutdown` request waits for its acknowledgement (the fallback timer restarts).
    var shutdownAckPending: Bool
    /// `set_timer_op`'s deadline (monotonic ns).
    var virqDeadline: UInt64?
    /// SCHEDOP_block calls waiting: their sequence numbers and deadlines (monotonic ns).
    var blockedSeqs: [UInt64]
    var blockedDeadlines: [UInt64?]
    var storeKept: Bool
    /// Channel events its event socket had no room for: each encoded, with its descriptors,
    /// and since when the queue has waited (monotonic ns).
    var channelEvents: [[UInt8]]
    var channelEventFDs: [[Int32]]
    var channelBacklogSince: UInt64?
}

struct InflightLogImage: Codable {
    var queue: Int
    var fd: Int32
    var bytes: Int
    var incarnations: Int
}

struct DeviceImage: Codable {
    var kind: String
    var frontend: UInt16
    var devid: UInt32
    var backend: UInt16
    var block: BlockDeviceSettings?
    var network: NetworkDeviceSettings?
    var inflight: [InflightLogImage]
}

struct ConsoleLogImage: Codable {
    var domid: UInt16
    var fd: Int32
    var path: String
    var size: Int
}

struct ControlConnectionImage: Codable {
    var fd: Int32
    var input: [UInt8]
    var output: [UInt8]
    var closing: Bool
}

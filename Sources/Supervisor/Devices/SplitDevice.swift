import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

/// A split device the toolstack attached (a vbd, a vif): a frontend domain's device served by
/// a backend domain, with its nodes in XenStore. The device manager writes and removes the
/// nodes every type shares; a type adds its own (`nodes`) and its log line.
protocol SplitDevice: AnyObject {
    var type: SplitDeviceType { get }
    var frontend: DomID { get }
    var devid: UInt32 { get }
    var backend: DomID { get }
    /// How logs and errors name it: `disk xvdb (51728)`, `vif 0 (00:16:3e:12:34:56)`.
    var what: String { get }
    /// The type's own nodes, written when the device is attached.
    var nodes: DeviceNodes { get }
    /// The `xl dmesg` line of the attach (after `domN (name): `).
    var attachSummary: String { get }
    /// A detach in progress.
    var removal: DeviceRemoval? { get set }
    /// The backend's in-flight logs, by queue: kept for the device's life, across restarts of
    /// its backend domain.
    var inflightLogs: [Int: InflightLogMemory] { get set }
}

/// One queue's in-flight log: a memfd the supervisor made for the device's backend, and how
/// many incarnations of the backend have had it.
struct InflightLogMemory {
    let fd: FileDescriptor
    let bytes: Int
    var incarnations: Int
}

extension SplitDevice {
    /// `/local/domain/F/device/KIND/DEVID`.
    var frontendPath: String { "/local/domain/\(frontend)/device/\(type.kind)/\(devid)" }
    /// `/local/domain/B/backend/KIND/F/DEVID`.
    var backendPath: String { "/local/domain/\(backend)/backend/\(type.kind)/\(frontend)/\(devid)" }
    var key: DeviceKey { DeviceKey(kind: type.kind, frontend: frontend, devid: devid) }
}

/// A type's own nodes of one device, beyond those libxl__device_generic_add writes for every
/// device (backend: frontend, frontend-id, online, state; frontend: backend, backend-id, state).
struct DeviceNodes {
    /// In the backend's directory (owner backend, read frontend).
    var backend: [(String, String)] = []
    /// In the frontend's directory (owner frontend, read backend).
    var frontend: [(String, String)] = []
    /// In the frontend's directory but read-only for the guest (owner backend, read frontend),
    /// as libxl writes a vif's `mtu`.
    var frontendReadOnly: [(String, String)] = []
}

/// What a device type adds to the device every type shares: its own values (a disk's image,
/// a vif's MAC), how it is named, and its own nodes.
protocol DeviceSettings {
    static var type: SplitDeviceType { get }
    /// How logs and errors name the device: `disk xvdb (51728)`.
    func what(devid: UInt32) -> String
    /// The `xl dmesg` line of the attach (after `domN (name): `).
    func attachSummary(devid: UInt32) -> String
    /// The type's own nodes.
    func nodes(devid: UInt32) -> DeviceNodes
}

/// A device of one type: its frontend, devid and backend, and its type's settings, readable
/// as its own properties (`vbd.target` is `vbd.settings.target`).
@dynamicMemberLookup
final class Device<Settings: DeviceSettings>: SplitDevice {
    let frontend: DomID
    let devid: UInt32
    let backend: DomID
    let settings: Settings
    var removal: DeviceRemoval?
    var inflightLogs: [Int: InflightLogMemory] = [:]

    deinit { for log in inflightLogs.values { log.fd.close() } }

    init(frontend: DomID, devid: UInt32, backend: DomID, settings: Settings) {
        self.frontend = frontend
        self.devid = devid
        self.backend = backend
        self.settings = settings
    }

    var type: SplitDeviceType { Settings.type }
    var what: String { settings.what(devid: devid) }
    var attachSummary: String { settings.attachSummary(devid: devid) }
    var nodes: DeviceNodes { settings.nodes(devid: devid) }

    subscript<T>(dynamicMember path: KeyPath<Settings, T>) -> T { settings[keyPath: path] }
}

struct DeviceKey: Hashable {
    let kind: String
    let frontend: DomID
    let devid: UInt32
}

/// A device checked at `xl create` (before the frontend exists) or at an xl attach.
struct PlannedDevice {
    let type: SplitDeviceType
    let devid: UInt32
    /// How errors name it.
    let what: String
    /// Nil until resolved: no `backend=` was given, and the type's default driver domain serves it.
    var backend: DomainRecord?
    /// The device, once its frontend and backend are known.
    let make: (_ frontend: DomID, _ backend: DomID) -> SplitDevice
}

/// A device type as the supervisor serves it: its names, how its xl.cfg entries are checked,
/// and what its backend may ask for through `deviceFD`. Block and net are the two
/// registrations; a new type is a folder under Devices/ that adds one here.
struct DeviceRegistration {
    let type: SplitDeviceType
    /// Checks the config's entries of this type before anything is started, without starting
    /// any domain (default backends are resolved once every type's entries passed).
    let plan: (Supervisor, DomainConfig) throws -> [PlannedDevice]
    /// The `deviceFD` kinds the type's backend asks for, and the handler of each.
    let descriptors: [DeviceKind: (Supervisor, DomainRecord, HypercallRequest) -> HypercallOutcome]

    static let all: [DeviceRegistration] = [.block, .network]
}

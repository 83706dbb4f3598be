/// A type of split device as the toolstack names it, after libxl's device-type table
/// (`libxl__device_type`): the directory its nodes live in, the xl.cfg key its entries come
/// from, the driver domain that serves it by default, xl's commands for it and libxl's name
/// for it in their error lines. `xl` and the supervisor read the same description.
public struct SplitDeviceType: Hashable, Sendable {
    /// The directory under `device/` and `backend/` (libxl__device_kind): `vbd`, `vif`.
    public let kind: String
    /// The xl.cfg key whose entries are devices of this type: `disk`, `vif`.
    public let configKey: String
    /// The driver domain that serves entries without `backend=`, started on demand.
    public let defaultBackend: String
    /// libxl's name in `libxl_device_<name>_add failed.`: `disk`, `nic`.
    public let libxlName: String
    /// The prefix of xl's commands: `block` for `block-attach`, `block-detach`, `block-list`.
    public let commandPrefix: String
    /// What the devices are called in messages: `virtual block devices`.
    public let plural: String

    public var attachCommand: String { commandPrefix + "-attach" }
    public var detachCommand: String { commandPrefix + "-detach" }
    public var listCommand: String { commandPrefix + "-list" }

    /// Virtual block devices: `disk=`, served by `blkback`.
    public static let block = SplitDeviceType(kind: "vbd", configKey: "disk", defaultBackend: "blkback", libxlName: "disk", commandPrefix: "block",
                                                   plural: "virtual block devices")
    /// Virtual network interfaces: `vif=`, served by `netback`.
    public static let network = SplitDeviceType(kind: "vif", configKey: "vif", defaultBackend: "netback", libxlName: "nic", commandPrefix: "network",
                                                     plural: "virtual network interfaces")
}

/// A split device: its type (`vbd`, `vif`), its devid, the two domains and the standard
/// XenStore directories that link them (as `libxl__device_frontend_path` and
/// `libxl__device_backend_path` build them).
public struct XenbusDevice: Equatable, Hashable, Sendable {
    public var type: String
    public var devid: UInt32
    public var frontendDomid: UInt16
    public var backendDomid: UInt16

    public init(type: String, devid: UInt32, frontendDomid: UInt16, backendDomid: UInt16) {
        self.type = type
        self.devid = devid
        self.frontendDomid = frontendDomid
        self.backendDomid = backendDomid
    }

    /// `/local/domain/F/device/<type>/<devid>`.
    public var frontendPath: String { "/local/domain/\(frontendDomid)/device/\(type)/\(devid)" }
    /// `/local/domain/B/backend/<type>/<F>/<devid>`.
    public var backendPath: String { "/local/domain/\(backendDomid)/backend/\(type)/\(frontendDomid)/\(devid)" }

    /// The nodes the toolstack writes before either end starts (libxl's `device_generic_add`
    /// cross-links plus both states at Initialising); the device's own keys (`virtual-device`,
    /// `params` …) are the toolstack's business.
    public var toolstackNodes: [(path: String, value: String)] {
        [
            ("\(frontendPath)/backend", backendPath),
            ("\(frontendPath)/backend-id", String(backendDomid)),
            ("\(frontendPath)/state", XenbusState.initialising.storeValue),
            ("\(backendPath)/frontend", frontendPath),
            ("\(backendPath)/frontend-id", String(frontendDomid)),
            ("\(backendPath)/state", XenbusState.initialising.storeValue),
        ]
    }

    /// Writes `toolstackNodes`.
    public func writeToolstackNodes(to store: XenbusStore) throws {
        for (path, value) in toolstackNodes { try store.write(path, value) }
    }

    /// The device as its frontend in domain `domid` finds it: `backend-id` and `backend` read
    /// from its directory (Linux's `xenbus_read_otherend_details`) and checked to be the
    /// standard backend path.
    public static func frontend(store: XenbusStore, domid: UInt16, type: String, devid: UInt32) throws -> XenbusDevice {
        let dir = "/local/domain/\(domid)/device/\(type)/\(devid)"
        let idPath = "\(dir)/backend-id"
        let idText = try store.read(idPath)
        guard let backend = UInt16(idText) else {
            throw XenbusError.badLink(path: idPath, value: idText, expected: "a domid")
        }
        let device = XenbusDevice(type: type, devid: devid, frontendDomid: domid, backendDomid: backend)
        let linkPath = "\(dir)/backend"
        let link = try store.read(linkPath)
        guard link == device.backendPath else {
            throw XenbusError.badLink(path: linkPath, value: link, expected: device.backendPath)
        }
        return device
    }

    /// The device as its backend in domain `domid` finds it: `frontend-id` and `frontend`
    /// read from the backend directory and checked to be the standard frontend path.
    public static func backend(store: XenbusStore, domid: UInt16, type: String, frontendDomid: UInt16,
                               devid: UInt32) throws -> XenbusDevice {
        let device = XenbusDevice(type: type, devid: devid, frontendDomid: frontendDomid, backendDomid: domid)
        let idPath = "\(device.backendPath)/frontend-id"
        let idText = try store.read(idPath)
        guard UInt16(idText) == frontendDomid else {
            throw XenbusError.badLink(path: idPath, value: idText, expected: String(frontendDomid))
        }
        let linkPath = "\(device.backendPath)/frontend"
        let link = try store.read(linkPath)
        guard link == device.frontendPath else {
            throw XenbusError.badLink(path: linkPath, value: link, expected: device.frontendPath)
        }
        return device
    }
}

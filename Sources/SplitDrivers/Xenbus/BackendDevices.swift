import DomainRuntime
import LinuxHost

/// The devices of one type a backend serves, one per toolstack directory
/// `/local/domain/SELF/backend/TYPE/F/N`: `scan` (on the watch of `backend/TYPE`) starts a device
/// for every new directory and stops the devices whose directory vanished. A device that ended
/// stays known (so a disconnected frontend is not reconnected behind its back) until its
/// directory goes or its frontend starts over (back to Initialising), as Linux's backends
/// reconnect.
final class BackendDevices<Device: AnyObject> {
    private let domain: Domain
    private let type: String
    private let make: (_ frontend: UInt16, _ devid: UInt32) -> Device
    private let start: (Device) -> Void
    private let stop: (Device) -> Void
    /// One scan at a time (the watch thread and finishing devices both scan), so a directory
    /// never gets two devices.
    private let scanLock = Lock()
    private let mutex = Lock()
    private var devices: [String: (device: Device, finished: Bool)] = [:]

    init(domain: Domain, type: String, make: @escaping (UInt16, UInt32) -> Device, start: @escaping (Device) -> Void,
         stop: @escaping (Device) -> Void) {
        self.domain = domain
        self.type = type
        self.make = make
        self.start = start
        self.stop = stop
    }

    func scan() {
        scanLock.lock()
        defer { scanLock.unlock() }
        let base = "backend/\(type)"
        var present = Set<String>()
        for fe in (try? domain.store.directory(base)) ?? [] {
            guard let f = UInt16(fe) else { continue }
            for dev in (try? domain.store.directory("\(base)/\(fe)")) ?? [] {
                guard let d = UInt32(dev) else { continue }
                let key = "\(f)/\(d)"
                present.insert(key)
                mutex.lock()
                let existing = devices[key]
                mutex.unlock()
                if let existing {
                    guard existing.finished, let feDir = try? domain.store.read("\(base)/\(fe)/\(dev)/frontend"),
                          (try? domain.store.read(feDir + "/state")) == XenbusState.initialising.storeValue else { continue }
                }
                let device = make(f, d)
                mutex.lock()
                devices[key] = (device, false)
                mutex.unlock()
                start(device)
            }
        }
        mutex.lock()
        let gone = devices.filter { !present.contains($0.key) }.map(\.value.device)
        for (key, entry) in devices where !present.contains(key) && entry.finished { devices[key] = nil }
        mutex.unlock()
        gone.forEach(stop)
    }

    /// A device ended: it is marked so, and the directories are scanned again (from the watch
    /// thread: the scan lock may be held by a scan waiting for this device's directory to settle).
    func finished(frontend: UInt16, devid: UInt32) {
        mutex.lock()
        devices["\(frontend)/\(devid)"]?.finished = true
        mutex.unlock()
        domain.store.onWatchThread { [weak self] in self?.scan() }
    }
}

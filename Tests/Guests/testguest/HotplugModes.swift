import DomainRuntime
import Glibc
import LinuxHost
import SplitDrivers

/// The byte a hot-plug guest writes at byte `i` of disk sector `sector`: every write of a sector
/// writes the same bytes, so on the image each sector is either all zero or exactly this.
func hotplugPattern(sector: UInt64, byte i: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: sector &* 131 &+ UInt64(i) &* 7 &+ 1)
}

/// `mode=hotplug`: a guest that finds its vbds through its own watch on `device/vbd`, as Linux's
/// xenbus does, so disks come and go while it runs (`xl block-attach` / `xl block-detach`).
/// Everything is printed on the console as `hotplug: ...` lines the integration tests look for.
///
/// For each device that appears: connect with blkfront, write `HOTPLUG <vdev> dom<N>` at sector
/// 0 and a pattern at sectors 8..23, read both back ("verified"). Then:
/// - `busy=VDEV`: keep up to 16 writes and reads in flight on it at once until it goes; reads
///   check every sector is zero or the pattern; at the end "io stopped: ok=N failed=M ...".
/// - `deaf=SECONDS`: once `data/deaf` is written (by the test, through dom0's socket), stop
///   calling blkfront for that long, requests in flight and all (so a toolstack's safe removal
///   meanwhile times out), then carry on.
/// - `queues=N`, `ring_order=N`: blkfront's options for every device (multi-queue, multi-page).
/// When a device goes, every other device is verified again ("xvda ok after xvdb left").
/// An `alive N` line every second shows the guest still runs.
func runHotplugMode(_ mode: String, _ domain: Domain) -> Bool {
    guard mode == "hotplug" else { return false }
    func say(_ s: String) { print("hotplug: " + s); fflush(stdout) }
    let xs = domain.store, ev = domain.eventChannels
    let busyName = arg("busy")
    let deafSeconds = arg("deaf").flatMap { Double($0) }
    let options = BlkfrontOptions(queues: arg("queues").flatMap { Int($0) } ?? 1,
                                  ringPageOrder: arg("ring_order").flatMap { Int($0) } ?? 0)

    // The watch thread only raises a flag; blkfront is driven from this thread alone.
    let changed = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    changed.initialize(to: 1)
    let deafAsked = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    deafAsked.initialize(to: 0)
    do {
        try xs.watch("device/vbd", token: "hotplug") { _ in SharedAtomic.store(changed, 1) }
        if deafSeconds != nil { try xs.watch("data/deaf", token: "hotplug-deaf") { _ in SharedAtomic.store(deafAsked, 1) } }
    } catch {
        say("cannot watch device/vbd: \(error)")
        domain.shutdown(.crash)
    }

    final class Busy {
        var ok = 0, failed = 0, refused = 0, mismatches = 0
        var firstError: String?
        var nextTag: UInt64 = 1
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        var stopped = false
        var inflightAtDetach: Int?
    }
    final class Device {
        let front: Blkfront
        var reportedClosed = false
        var busy: Busy?
        init(_ f: Blkfront) { front = f }
    }
    var devices: [UInt32: Device] = [:]
    var failedToConnect = Set<UInt32>()

    func sectorPattern(_ first: UInt64, _ count: Int) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: count * 512)
        for s in 0..<count {
            for i in 0..<512 { data[s * 512 + i] = hotplugPattern(sector: first + UInt64(s), byte: i) }
        }
        return data
    }
    /// Sectors in `data` (read from `first`) that are neither zero nor the pattern.
    func badSectors(_ first: UInt64, _ data: [UInt8]) -> Int {
        var bad = 0
        for s in 0..<(data.count / 512) {
            let chunk = data[(s * 512)..<(s * 512 + 512)]
            if chunk.allSatisfy({ $0 == 0 }) { continue }
            if !chunk.indices.allSatisfy({ chunk[$0] == hotplugPattern(sector: first + UInt64(s), byte: $0 - s * 512) }) { bad += 1 }
        }
        return bad
    }
    func verify(_ f: Blkfront) -> String {
        do {
            var marker = Array("HOTPLUG \(f.name) dom\(domain.domid)".utf8)
            marker += [UInt8](repeating: 0, count: 512 - marker.count)
            try f.write(sector: 0, data: marker)
            let pattern = sectorPattern(8, 16)
            try f.write(sector: 8, data: pattern)
            let back = try f.read(sector: 0, count: 1), back2 = try f.read(sector: 8, count: 16)
            return back == marker && back2 == pattern ? "verified" : "MISMATCH"
        } catch {
            return "failed: \(error)"
        }
    }

    func rescan() {
        let present = Set((try? Blkfront.devices(domain: domain)) ?? [])
        for devid in present.sorted() where devices[devid] == nil && !failedToConnect.contains(devid) {
            let name = Blkfront.deviceName(devid: devid)
            say("found \(name) (vbd \(devid))")
            do {
                let f = try Blkfront.connect(domain: domain, devid: devid, timeout: 20, options: options)
                say("\(name) connected sectors=\(f.sectors) queues=\(f.queueCount)")
                let d = Device(f)
                devices[devid] = d
                say("\(name) \(verify(f))")
                if busyName == name {
                    d.busy = Busy()
                    say("\(name) busy")
                }
            } catch {
                failedToConnect.insert(devid)
                say("\(name) connect failed: \(error)")
            }
        }
        for (devid, d) in devices where !present.contains(devid) && !d.reportedClosed {
            say("\(d.front.name) gone from device/vbd (closed=\(d.front.isClosed))")
        }
        failedToConnect.formIntersection(present)
    }

    /// Keeps the busy device's queue full; collects its completions.
    func pumpBusy(_ d: Device) {
        guard let b = d.busy, !b.stopped else { return }
        let f = d.front
        for c in (try? f.completions()) ?? [] {
            switch c.result {
            case let .success(data):
                b.ok += 1
                if let data, c.operation == .read { b.mismatches += badSectors(c.sector, data) }
            case let .failure(e):
                b.failed += 1
                if b.firstError == nil { b.firstError = "\(e)" }
            }
        }
        while !f.isClosed && !f.isDetaching && f.outstanding < 16 {
            b.rng = b.rng &* 6364136223846793005 &+ 1442695040888963407
            let sector = 64 + ((b.rng >> 33) % ((f.sectors - 128) / 8)) * 8
            let tag = b.nextTag
            b.nextTag += 1
            do {
                if tag % 2 == 0 {
                    try f.submitRead(sector: sector, count: 64, tag: tag)
                } else {
                    try f.submitWrite(sector: sector, data: sectorPattern(sector, 64), tag: tag)
                }
            } catch {
                b.refused += 1
                if b.refused == 1 { say("\(f.name) submit refused: \(error)") }
                break
            }
        }
        if f.isClosed && f.outstanding == 0 {
            b.stopped = true
            say("\(f.name) io stopped: ok=\(b.ok) failed=\(b.failed) refused=\(b.refused) inflight-at-detach=\(b.inflightAtDetach ?? -1) mismatches=\(b.mismatches) first-error=\(b.firstError ?? "none")")
        }
    }

    say("ready dom\(domain.domid)")
    var lastAlive = SystemTime.nanoseconds()
    var alive = 0
    while true {
        if SharedAtomic.load(changed) != 0 {
            SharedAtomic.store(changed, 0)
            rescan()
        }
        // Any event (or 20 ms) ends the nap; every device is processed below.
        _ = ev.waitAny(timeoutNs: 20_000_000)
        if let deafSeconds, SharedAtomic.load(deafAsked) != 0 {
            SharedAtomic.store(deafAsked, 0)
            if (try? xs.read("data/deaf")) != nil {
                let inFlight = devices.values.map { "\($0.front.name)=\($0.front.outstanding)" }.sorted().joined(separator: " ")
                say("deaf for \(deafSeconds) s; outstanding \(inFlight)")
                usleep(UInt32(deafSeconds * 1e6))
                let states = devices.values.map { "\($0.front.name)=\((try? xs.read($0.front.device.backendPath + "/state")) ?? "gone")" }
                say("deaf over; backend states \(states.sorted().joined(separator: " "))")
            }
        }
        var left: [String] = []
        for (devid, d) in devices.sorted(by: { $0.key < $1.key }) {
            let f = d.front
            let before = f.outstanding
            if !f.isClosed { f.process() }
            if let b = d.busy, b.inflightAtDetach == nil, f.isDetaching || f.isClosed { b.inflightAtDetach = before }
            pumpBusy(d)
            if f.isClosed && !d.reportedClosed && (d.busy == nil || d.busy!.stopped) {
                d.reportedClosed = true
                // What a late caller gets from a closed device.
                let late: String
                do { _ = try f.read(sector: 0, count: 1); late = "read succeeded" } catch { late = "\(error)" }
                say("\(f.name) closed; late read: \(late)")
                devices[devid] = nil
                left.append(f.name)
            }
        }
        for name in left {
            for d in devices.values.sorted(by: { $0.front.name < $1.front.name }) where !d.front.isClosed && !d.front.isDetaching {
                say("\(d.front.name) \(verify(d.front) == "verified" ? "ok" : "NOT ok") after \(name) left")
            }
        }
        if SystemTime.nanoseconds() - lastAlive > 1_000_000_000 {
            lastAlive = SystemTime.nanoseconds()
            alive += 1
            say("alive \(alive)")
        }
    }
}

import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

/// Modes for the network toolstack tests (`xl network-*`, `deviceFD(.uplink)`), printing
/// `nettool: ...` lines on the console.
///
/// - `be-uplink`: a driver domain standing in for netback without its data path: it serves
///   nothing (its vifs stay at Initialising, so a detach times out as with an unserved device)
///   but, for every vif that appears under `backend/vif`, asks the supervisor for the uplink of
///   its bridge once per bridge and keeps the tap open: `nettool: uplink F/D bridge=B: ok` or
///   `...: ERROR`. A second request for a bridge it holds prints `nettool: again F/D bridge=B:
///   ...` (the supervisor hands the same tap again). With `release=BRIDGE`, writing
///   `data/release` (from dom0) closes this domain's descriptor of that bridge's tap:
///   `nettool: released B`.
/// - `net-snoop frontend=F devid=D`: a domain that serves no vif asks for vif F/D's uplink,
///   for an unknown vif's, and with kind `vif`: `nettool: snoop uplink: ...`, `nettool: snoop
///   unknown: ...`, `nettool: snoop vif: ...`; then powers off.
func runNetToolMode(_ mode: String, _ domain: Domain) -> Bool {
    func say(_ s: String) { print("nettool: " + s); fflush(stdout) }
    func result(_ body: () throws -> FileDescriptor) -> (String, FileDescriptor?) {
        do {
            let fd = try body()
            return ("ok", fd)
        } catch {
            return ("\(error)", nil)
        }
    }
    switch mode {
    case "be-uplink":
        let xs = domain.store
        var held: [String: FileDescriptor] = [:]
        var seen = Set<String>()
        let release = arg("release")
        let releaseAsked = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        releaseAsked.initialize(to: 0)
        if release != nil { try? xs.watch("data/release", token: "nettool-release") { _ in SharedAtomic.store(releaseAsked, 1) } }
        say("ready dom\(domain.domid)")
        while true {
            for fe in (try? xs.directory("backend/vif")) ?? [] {
                for dev in (try? xs.directory("backend/vif/\(fe)")) ?? [] where !seen.contains("\(fe)/\(dev)") {
                    guard let bridge = try? xs.read("backend/vif/\(fe)/\(dev)/bridge"),
                          let f = UInt16(fe), let d = UInt32(dev) else { continue }
                    seen.insert("\(fe)/\(dev)")
                    if held[bridge] != nil {
                        let (text, fd) = result { try domain.deviceFD(.uplink, frontend: f, devid: d) }
                        fd?.close()
                        say("again \(fe)/\(dev) bridge=\(bridge): \(text)")
                        continue
                    }
                    let (text, fd) = result { try domain.deviceFD(.uplink, frontend: f, devid: d) }
                    if let fd { held[bridge] = fd }
                    say("uplink \(fe)/\(dev) bridge=\(bridge): \(text)")
                }
            }
            // The watch also fires once when set: only a written data/release counts.
            if let release, SharedAtomic.load(releaseAsked) == 1, (try? xs.read("data/release")) != nil, let fd = held[release] {
                fd.close()
                held[release] = nil
                say("released \(release)")
            }
            usleep(20_000)
        }
    case "net-snoop":
        let fe = UInt16(arg("frontend") ?? "0") ?? 0, dev = UInt32(arg("devid") ?? "0") ?? 0
        let (a, fa) = result { try domain.deviceFD(.uplink, frontend: fe, devid: dev) }
        fa?.close()
        say("snoop uplink: \(a)")
        let (b, fb) = result { try domain.deviceFD(.uplink, frontend: fe, devid: 4242) }
        fb?.close()
        say("snoop unknown: \(b)")
        let (c, fc) = result { try domain.deviceFD(.vif, frontend: fe, devid: dev) }
        fc?.close()
        say("snoop vif: \(c)")
        domain.shutdown(.poweroff)
    default:
        return false
    }
}

// my-guest: a guest of your own. It says who it is, writes a note into the first sector of its
// disk and reads it back, then answers ping on its first vif until `xl shutdown`.
import DomainRuntime
import NetStack
import SplitDrivers

// Nothing of the guest runs before this: it bootstraps and confines the domain.
let domain = Domain.start()
func say(_ line: String) { domain.console.write("my-guest: \(line)\n") }
say("dom\(domain.domid) (\(domain.name)), \(domain.memoryKB / 1024) MiB, command line '\(domain.cmdline)'")

// The disk: the first `disk=` entry of the config, through blkfront.
if let devid = (try? Blkfront.devices(domain: domain))?.first {
    let name = Blkfront.deviceName(devid: devid)
    do {
        let disk = try Blkfront.connect(domain: domain, devid: devid)
        var note = Array("written by dom\(domain.domid)".utf8)
        note += [UInt8](repeating: 0, count: 512 - note.count)
        try disk.write(sector: 0, data: note)
        try disk.flush()
        let back = try disk.read(sector: 0, count: 1)
        say("\(name): sector 0 reads back \(back == note ? "as written" : "WRONG")")
    } catch {
        say("\(name): \(error)")
    }
}

// `xl shutdown` (and `xl reboot`): power off with the reason asked for.
domain.onShutdownRequest { reason in
    say("shutting down")
    domain.shutdown(reason)
}

// The network: the first `vif=` entry, its address from `ip=`, through netfront and NetStack.
do {
    let (_, stack) = try Netfront.connectWithStack(domain: domain, devid: 0, timeout: 30)
    say("eth0 \(stack.config.address) answers ping")
    while true { _ = stack.poll(timeoutNs: 100_000_000) }
} catch {
    say("no network: \(error)")
    while true { domain.block(timeoutNs: 1_000_000_000) }
}

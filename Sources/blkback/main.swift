// blkback: the block backend driver domain. Start it with examples/blkback/blkback.cfg
// (driver_domain = 1); guests name it with `backend=blkback` in their disk= lines.
import DomainRuntime
import LinuxHost
import SplitDrivers

let domain = Domain.start()
let log: (String) -> Void = { line in
    print(line)
    Process.flushStandardOutput()
}
// KEY=VALUE words of the command line (extra=) are settings, e.g. PROCVISOR_FORCE_NO_IOURING=1.
let settings = DriverSettings.blkback(CommandLine.arguments.dropFirst()) { log("blkback: setting \($0)") }
Blkback(domain: domain, settings: settings, log: log).run()

// blkback: the block backend driver domain. Start it with examples/blkback/blkback.cfg
// (driver_domain = 1); guests name it with `backend=blkback` in their disk= lines.
import DomainRuntime
import LinuxHost
import SplitDrivers

let domain = Domain.start()
// KEY=VALUE words of the command line (extra=) are settings, e.g. PROCVISOR_FORCE_NO_IOURING=1.
Blkback(domain: domain, environment: DriverSettings.parse(CommandLine.arguments.dropFirst())) { line in
    print(line)
    Process.flushStandardOutput()
}.run()

// blkback: the block backend driver domain. Start it with examples/blkback/blkback.cfg
// (driver_domain = 1); guests name it with `backend=blkback` in their disk= lines.
import DomainRuntime
import Glibc
import SplitDrivers

let domain = Domain.start(role: .driverDomain)
Blkback(domain: domain) { line in
    print(line)
    fflush(stdout)
}.run()

// bench-guest: the guest the lifecycle benchmark creates. Started bare (no supervisor), it
// reports "R" on stdout as soon as main runs: the peer's measurement point. Started as a domain,
// main runs right after the supervisor verified the sandbox (where `xl create` returns).
import DomainRuntime
import Glibc

var type: Int32 = 0
var len = socklen_t(MemoryLayout<Int32>.size)
if getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len) != 0 {
    _ = write(1, "R", 1)
    exit(0)
}
let domain = Domain.start()
_ = write(1, "R", 1)
while true { domain.block() }

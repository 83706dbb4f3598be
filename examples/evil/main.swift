// evil: shows the sandbox. After booting it tries to open /etc/passwd, which the guest
// seccomp allow-list forbids: the domain is crashed and `xl dmesg` names the call.
import DomainRuntime
import Glibc

let domain = Domain.start()
print("evil: dom\(domain.domid) trying to open /etc/passwd ...")
fflush(stdout)
let fd = open("/etc/passwd", O_RDONLY)
print("evil: open returned \(fd): the sandbox failed!")
domain.shutdown(.poweroff)

// hello: the smallest Procvisor guest. Boots, says who it is, powers off.
import DomainRuntime

let domain = Domain.start()
let version = domain.xenVersion()
print("Hello from dom\(domain.domid) (\(domain.name)): \(domain.memoryKB / 1024) MiB, \(domain.vcpuCount()) vCPU(s), Xen \(version.major).\(version.minor)\(domain.xenExtraVersion()) interface")
if !domain.cmdline.isEmpty { print("command line: \(domain.cmdline)") }
domain.console.write("hello: powering off\n")
domain.shutdown(.poweroff)

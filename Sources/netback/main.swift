// netback: the network backend driver domain. The supervisor starts one named `netback` on
// demand for vifs without backend=; examples/netback/netback.cfg starts one by hand.
import DomainRuntime
import LinuxHost
import SplitDrivers

let domain = Domain.start()
let log: (String) -> Void = { line in
    print(line)
    Process.flushStandardOutput()
}
// KEY=VALUE words of the command line (extra=) are settings, e.g. PROCVISOR_FORCE_NO_IOURING=1.
let settings = DriverSettings.netback(CommandLine.arguments.dropFirst()) { log("netback: setting \($0)") }
Netback(domain: domain, settings: settings, log: log).run()

// spinner: a guest that runs until the toolstack tells it to stop (`xl shutdown` / `xl reboot`),
// ticking on its console every second and echoing what is typed into `xl console`.
import DomainRuntime
import Glibc

let domain = Domain.start()
domain.onShutdownRequest { reason in
    if reason == .suspend {
        // xl save / xl migrate: suspend; when the save was a checkpoint (xl save -c) the domain
        // carries on here, else a restored spinner starts again from main.
        domain.console.write("spinner: suspending after \(ticks) ticks\n")
        if domain.suspend() { domain.console.write("spinner: resumed in place\n") }
        return
    }
    domain.console.write("spinner: \(reason.name) requested, stopping after \(ticks) ticks\n")
    domain.shutdown(reason)
}
nonisolated(unsafe) var ticks = 0
domain.startVCPU(1) { _ in
    while let line = domain.console.readLine() {
        domain.console.write("spinner: you said \"\(line)\"\n")
    }
}
print("spinner: dom\(domain.domid) running; `xl shutdown \(domain.name)` stops me")
while true {
    ticks += 1
    print("spinner: tick \(ticks)")
    fflush(stdout)
    domain.block(timeoutNs: 1_000_000_000)
}

// procvisord: the Procvisor supervisor daemon (hypervisor + dom0 toolstack).
//   procvisord [--daemonize] [--rundir DIR]
// Configuration comes from the environment: PROCVISOR_RUNDIR, PROCVISOR_ENGAGE_TIMEOUT_MS,
// PROCVISOR_SHUTDOWN_TIMEOUT_MS, PROCVISOR_MEMORY_MB, PROCVISOR_LOG_LEVEL, PROCVISOR_INSECURE,
// PROCVISOR_JAIL_UID_BASE, PROCVISOR_MALFORMED_HYPERCALL_LIMIT, PROCVISOR_CONSOLE_LOG_MAX_MB,
// PROCVISOR_DRIVER_RESTARTS. The --insecure-no-… options run domains without a jail layer the
// kernel refuses; xl info and xl dmesg report it. --live-update-state FD and
// --check-live-update-state FD are how a running supervisor hands itself over to a new binary
// (`xl live-update`, `xenstore-control live-update`); see docs/supervisor-live-update.md.
import LinuxHost
import Supervisor

var env = Process.environment()
var daemonize = false
var liveUpdateState: Int32?
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--daemonize": daemonize = true
    case "--rundir":
        guard let dir = args.popFirst() else { FileDescriptor.standardError.writeUnchecked("procvisord: --rundir needs a directory\n"); Process.exit(2) }
        env["PROCVISOR_RUNDIR"] = dir
    case "--insecure-no-cgroups", "--insecure-no-namespaces":
        let word = String(a.dropFirst("--insecure-".count))
        env["PROCVISOR_INSECURE"] = (env["PROCVISOR_INSECURE"].map { $0 + "," } ?? "") + word
    case "--live-update-state", "--check-live-update-state":
        guard let n = args.popFirst().flatMap(Int32.init), n >= 0 else {
            FileDescriptor.standardError.writeUnchecked("procvisord: \(a) needs a descriptor number\n")
            Process.exit(2)
        }
        if a == "--check-live-update-state" { Process.exit(SupervisorMain.checkLiveUpdateState(fd: n)) }
        liveUpdateState = n
    case "-h", "--help":
        print("usage: procvisord [--daemonize] [--rundir DIR] [--insecure-no-cgroups] [--insecure-no-namespaces]")
        Process.exit(0)
    default:
        FileDescriptor.standardError.writeUnchecked("procvisord: unknown argument \(a)\n")
        Process.exit(2)
    }
}
Process.exit(SupervisorMain.run(environment: env, daemonize: daemonize, liveUpdateState: liveUpdateState))

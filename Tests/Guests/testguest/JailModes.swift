import DomainRuntime
import Glibc
import LinuxHost

/// Attacks on the jail from a DomainRuntime program, for Tests/IntegrationTests/JailTests.swift.
/// Each prints what it tried and what it got on its console, so a test reads the outcome.

private func say(_ s: String) {
    print(s)
    fflush(stdout)
}

private func errnoText(_ rc: Int) -> String { rc >= 0 ? "ok" : "errno \(-rc)" }

/// Modes that run before `Domain.start()`: the code a guest kernel runs before (or instead of)
/// confining itself. True when handled (the mode then ends the process or is crashed).
func runPreStartJailMode(_ mode: String) -> Bool {
    switch mode {
    case "pre-start":
        // What the jail shows: no host file, no /proc, a uid of its own.
        for path in ["/etc/shadow", "/etc/passwd", "/proc/self/status", "/tmp", "/usr/bin/env", "/dev/null"] {
            let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
            say("pre-start open \(path): \(fd >= 0 ? "ok" : "errno \(errno)")")
            if fd >= 0 { close(fd) }
        }
        say("pre-start uid=\(getuid()) pid=\(getpid())")
        // Writing anything, here the supervisor's memory or a host file: the bound refuses the open.
        let target = arg("target") ?? "/proc/1/mem"
        say("pre-start opening \(target) read-write")
        let fd = target.withCString { open($0, O_RDWR | O_CLOEXEC) }
        say("pre-start survived: \(fd >= 0 ? "ok" : "errno \(errno)")")
        exit(0)
    case "pre-start-fork":
        // A child forked before engagement would outlive a destroy: the bound refuses the fork.
        say("pre-start forking")
        let pid = fork()
        if pid == 0 { while true { pause() } }
        say("pre-start fork returned \(pid)")
        exit(0)
    case "claim-driver":
        // A guest that engages the driver domain's allow-list on its own and asks for a ring:
        // its bound, the supervisor's, is a guest's whatever it claims.
        do {
            try SeccompPolicies.driverDomain.compile(threadSync: true, ownPid: UInt32(getpid())).load()
            say("claim-driver: engaged the driver allow-list itself")
        } catch {
            say("claim-driver: \(error)")
        }
        var params = [UInt8](repeating: 0, count: IORingPolicy.paramsSize)
        let rc = params.withUnsafeMutableBytes { Syscalls.raw(Syscalls.number("io_uring_setup")!, [8, Int(bitPattern: $0.baseAddress)]) }
        say("claim-driver survived: io_uring_setup \(errnoText(rc))")
        exit(0)
    default:
        return false
    }
}

/// Modes that run after `Domain.start()`.
func runJailMode(_ mode: String, _ domain: Domain) -> Bool {
    switch mode {
    case "be-uring-escape":
        // A compromised backend calls io_uring_setup itself, asking for nothing restricted. The
        // bound hands the call to the supervisor, whose ring comes back disabled and restricted.
        var params = [UInt8](repeating: 0, count: IORingPolicy.paramsSize)
        let rc = params.withUnsafeMutableBytes { Syscalls.raw(Syscalls.number("io_uring_setup")!, [8, Int(bitPattern: $0.baseAddress)]) }
        guard rc >= 0 else {
            say("uring-escape: io_uring_setup \(errnoText(rc))")
            domain.shutdown(.poweroff)
        }
        let ring: IOUring
        do {
            ring = try IOUring(adopting: FileDescriptor(rawValue: Int32(rc)), params: params)
        } catch {
            say("uring-escape: cannot map the ring: \(error)")
            domain.shutdown(.crash)
        }
        // Registering before enabling: the only time a domain may (the supervisor left the ring disabled).
        let registered = Result { try ring.registerFiles([.standardOutput]) }
        let enable: Int32
        switch ring.registerWithoutArgument(12 /* IORING_REGISTER_ENABLE_RINGS */) {
        case .success(let r): enable = r
        case .failure(let e): enable = -e.rawValue
        }
        say("uring-escape: registered=\((try? registered.get()) != nil ? "ok" : "\(registered)") enable=\(enable)")
        func result() -> Int32 {
            do { _ = try ring.submit(waitingFor: 1) } catch { return Int32.min }
            var r = Int32.min
            _ = ring.harvest(max: 1) { _, res in r = res }
            return r
        }
        let path = strdup("/etc/passwd")!
        try? ring.prepareRaw(opcode: 18 /* OPENAT */, fd: -100 /* AT_FDCWD */, address: UInt64(UInt(bitPattern: path)), userData: 1)
        let openat = result()
        try? ring.prepareRaw(opcode: 18, fd: -100, address: UInt64(UInt(bitPattern: path)), sqeFlags: 1 /* FIXED_FILE */, userData: 2)
        let openatFixed = result()
        try? ring.prepareRaw(opcode: 45 /* SOCKET */, fd: AF_INET, offset: UInt64(SOCK_DGRAM.rawValue), sqeFlags: 1, userData: 3)
        let socket = result()
        try? ring.prepareRaw(opcode: 55 /* FTRUNCATE */, fd: 0, offset: 0, sqeFlags: 1, userData: 4)
        let ftruncate = result()
        let line = Array("uring-escape: written through the ring\n".utf8)
        try? line.withUnsafeBytes { try ring.write(.descriptor(.standardOutput), from: $0, offset: UInt64.max, userData: 5) }
        let unregistered = result()
        try? line.withUnsafeBytes { try ring.write(.registered(0), from: $0, offset: UInt64.max, userData: 6) }
        let viaRegistered = result()
        free(path)
        say("uring-escape: openat=\(openat) openat-fixed=\(openatFixed) socket=\(socket) ftruncate=\(ftruncate) unregistered=\(unregistered) registered-write=\(viaRegistered)")
        say("uring-escape done")
        domain.shutdown(.poweroff)
    default:
        return false
    }
}

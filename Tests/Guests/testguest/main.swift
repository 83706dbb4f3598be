// testguest: a guest for the integration tests. Its behaviour is chosen by its command line
// (`extra = "mode=NAME ..."` in xl.cfg, passed as argv), or, for the seccomp policy tests, by
// `--raw CALL` / `--guest-policy CALL` when started outside any supervisor.
import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

let args = Array(CommandLine.arguments.dropFirst())

func arg(_ key: String) -> String? {
    args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
}

/// "key=value key=value" from a console line (the handshake the tests type in).
func settings(_ line: String) -> [String: String] {
    Dictionary(line.split(separator: " ").compactMap { part -> (String, String)? in
        let f = part.split(separator: "=", maxSplits: 1)
        return f.count == 2 ? (String(f[0]), String(f[1])) : nil
    }, uniquingKeysWith: { _, last in last })
}

/// Issues the forbidden (or allowed) system call `name` with harmless arguments. Returns its result.
@discardableResult
func issue(_ name: String) -> Int {
    func nr(_ n: String) -> Int {
        guard let v = Syscalls.number(n) else { fputs("testguest: unknown syscall \(n)\n", stderr); exit(2) }
        return v
    }
    switch name {
    case "openat":
        return "/etc/hostname".withCString { Syscalls.raw(nr("openat"), [-100, Int(bitPattern: $0), Int(O_RDONLY)]) }
    case "socket-unix": return Syscalls.raw(nr("socket"), [Int(AF_UNIX), Int(SOCK_STREAM.rawValue), 0])
    case "socket-inet": return Syscalls.raw(nr("socket"), [Int(AF_INET), Int(SOCK_STREAM.rawValue), 0])
    case "execve":
        return "/bin/true".withCString { p in
            var argv: [UnsafeMutablePointer<CChar>?] = [strdup(p), nil]
            return argv.withUnsafeMutableBufferPointer { Syscalls.raw(nr("execve"), [Int(bitPattern: p), Int(bitPattern: $0.baseAddress), 0]) }
        }
    case "fork":
        let r = Syscalls.raw(nr("fork"))
        if r == 0 { _exit(0) }  // the child, if the filter failed: leave at once
        return r
    case "clone-newns":
        let r = Syscalls.raw(nr("clone"), [0x00020000 /* CLONE_NEWNS */ | Int(SIGCHLD), 0, 0, 0, 0])
        if r == 0 { _exit(0) }
        return r
    case "ptrace": return Syscalls.raw(nr("ptrace"), [0x4206 /* PTRACE_SEIZE */, 1, 0, 0])
    case "process_vm_readv": return Syscalls.raw(nr("process_vm_readv"), [1, 0, 0, 0, 0, 0])
    case "mount": return Syscalls.raw(nr("mount"), [0, 0, 0, 0, 0])
    case "bpf": return Syscalls.raw(nr("bpf"), [0, 0, 0])
    case "kexec_load": return Syscalls.raw(nr("kexec_load"), [0, 0, 0, 0])
    case "init_module": return Syscalls.raw(nr("init_module"), [0, 0, 0])
    case "unshare": return Syscalls.raw(nr("unshare"), [0x04000000 /* CLONE_NEWUTS */])
    case "setns": return Syscalls.raw(nr("setns"), [-1, 0])
    case "perf_event_open": return Syscalls.raw(nr("perf_event_open"), [0, 0, -1, -1, 0])
    case "keyctl": return Syscalls.raw(nr("keyctl"), [0, 0, 0, 0, 0])
    // Signal 0 (harmless if it ran) to a pid that is not its own: in the domain's pid namespace
    // it is pid 1 itself, so "init" would be no other process there.
    case "kill-other": return Syscalls.raw(nr("kill"), [Int(getpid()) + 1, 0])
    case "ftruncate": return Syscalls.raw(nr("ftruncate"), [0, 0])
    case "kill-self": return Syscalls.raw(nr("kill"), [Int(getpid()), 0])
    case "reboot": return Syscalls.raw(nr("reboot"), [0, 0, 0, 0])
    case "open-write":
        return "/dev/null".withCString { Syscalls.raw(nr("openat"), [-100, Int(bitPattern: $0), Int(O_WRONLY)]) }
    case "fcntl-setown": return Syscalls.raw(nr("fcntl"), [0, 8 /* F_SETOWN */, Int(getpid())])
    case "fcntl-setsig": return Syscalls.raw(nr("fcntl"), [0, 10 /* F_SETSIG */, Int(SIGKILL)])
    case "fcntl-async": return Syscalls.raw(nr("fcntl"), [0, 4 /* F_SETFL */, Int(O_ASYNC)])
    case "fcntl-nonblock": return Syscalls.raw(nr("fcntl"), [0, 4 /* F_SETFL */, Int(O_NONBLOCK)])
    case "io_uring_setup":
        var params = [UInt8](repeating: 0, count: 120)
        return params.withUnsafeMutableBytes { Syscalls.raw(nr("io_uring_setup"), [8, Int(bitPattern: $0.baseAddress)]) }
    // Write tracking (WriteTracking.register): the userfaultfd the policies admit, and what they do not.
    case "userfaultfd":
        return Syscalls.raw(nr("userfaultfd"), [Int(WriteTracking.descriptorFlags)])
    case "userfaultfd-kernel-faults":  // O_CLOEXEC | O_NONBLOCK without UFFD_USER_MODE_ONLY
        return Syscalls.raw(nr("userfaultfd"), [Int(O_CLOEXEC | O_NONBLOCK)])
    case "uffdio-writeprotect":  // _IOWR(0xAA, 0x06, struct uffdio_writeprotect): never admitted
        var range = [UInt64](repeating: 0, count: 3)
        return range.withUnsafeMutableBytes { Syscalls.raw(nr("ioctl"), [0, 0xC018_AA06, Int(bitPattern: $0.baseAddress)]) }
    case "pwrite":
        var b: UInt8 = 0
        return withUnsafeMutablePointer(to: &b) { Syscalls.raw(nr("pwrite64"), [1, Int(bitPattern: $0), 1, 0]) }
    default:
        fputs("testguest: no such call \(name)\n", stderr)
        exit(2)
    }
}

/// Publishes `value` at `path` (relative to this domain's tree), readable by `peer` only: how a
/// Xen frontend tells its backend its ring-ref and event channel.
func publish(_ domain: Domain, _ path: String, _ value: String, readableBy peer: UInt16) {
    do {
        try domain.store.write(path, value)
        try domain.store.setPermissions(path, [XenStorePermission(domid: domain.domid, access: .none), XenStorePermission(domid: peer, access: .read)])
    } catch {
        print("publish \(path): \(error)")
    }
}

/// Reads `path` under `peer`'s tree, waiting up to 20 s for it to appear.
func lookup(_ domain: Domain, _ peer: UInt16, _ path: String) -> String? {
    for _ in 0..<2000 {
        if let v = try? domain.store.read("/local/domain/\(peer)/" + path) { return v }
        usleep(10_000)
    }
    print("lookup /local/domain/\(peer)/\(path): not there after 20 s")
    return nil
}

/// Exercises what a guest legitimately needs under the guest allow-list.
func selfTest() -> Int32 {
    guard let p = malloc(1 << 20) else { return 9 }
    memset(p, 1, 1 << 20)
    free(p)
    let m = mmap(nil, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    guard m != MAP_FAILED else { return 10 }
    munmap(m, 1 << 16)
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    var req = timespec(tv_sec: 0, tv_nsec: 1000)
    nanosleep(&req, nil)
    var tid = pthread_t()
    var value: Int32 = 0
    let rc = withUnsafeMutablePointer(to: &value) { ptr in
        pthread_create(&tid, nil, { arg in
            arg!.assumingMemoryBound(to: Int32.self).pointee = 42
            return nil
        }, ptr)
    }
    guard rc == 0 else { return 11 }
    pthread_join(tid, nil)
    guard value == 42 else { return 12 }
    var word: UInt32 = 0
    _ = withUnsafeMutablePointer(to: &word) { Syscalls.raw(Syscalls.number("futex")!, [Int(bitPattern: $0), 1 /* FUTEX_WAKE */, 1]) }
    print("selftest ok")
    fflush(stdout)
    return 0
}

// Modes that run outside a supervisor (seccomp policy tests).
if args.first == "--raw", args.count == 2 {
    let r = issue(args[1])
    print("returned \(r)")
    exit(0)
}
if args.first == "--guest-policy", args.count == 2 {
    do { try SeccompPolicies.guest.compile(threadSync: true).load() } catch { fputs("\(error)\n", stderr); exit(3) }
    if args[1] == "selftest" { exit(selfTest()) }
    let r = issue(args[1])
    print("returned \(r)")
    exit(0)
}
if runDirtyWriterMode(args) { exit(0) }
if args.first == "--bare-ready" {
    // Benchmark peer: the same binary started by a plain fork+exec reports its main is running.
    _ = Glibc.write(1, "R", 1)
    exit(0)
}

let mode = arg("mode") ?? "hello"

// Modes that misbehave during bootstrap, before DomainRuntime would engage the sandbox.
if runAttackBootstrapMode(mode) { exit(0) }
if runPreStartJailMode(mode) { exit(0) }
switch mode {
case "exit-in-bootstrap":
    // Ask for the start-info, then leave without engaging.
    let req = HypercallRequest(.bootstrap, seq: 1).encode()
    _ = try? UnixSocket.send(FileDescriptor(rawValue: BootstrapFD.hypercall), req)
    exit(3)
case "no-engage":
    // A DomainRuntime-looking program that never engages its sandbox.
    while true { sleep(1) }
default:
    break
}

// Modes starting "be-" play a driver domain (its own allow-list: positioned I/O on handed disks).
let domain = Domain.start()

switch mode {
case "hello":
    print("hello from dom\(domain.domid) name=\(domain.name) vcpus=\(domain.vcpuCount()) cmdline=\(domain.cmdline)")
    domain.console.write("console write works\n")
    domain.shutdown(.poweroff)
case "run":
    // Runs until asked to stop; the default handler powers off with the requested reason.
    print("running dom\(domain.domid)")
    fflush(stdout)
    while true { domain.block() }
case "busy":
    print("busy dom\(domain.domid)")
    fflush(stdout)
    var x: UInt64 = 0
    while true { x = x &* 6364136223846793005 &+ 1442695040888963407; if x == 0 { print(x) } }
case "ignore-shutdown":
    domain.onShutdownRequest { reason in print("ignoring \(reason.name) request"); fflush(stdout) }
    print("ignoring shutdown requests")
    fflush(stdout)
    while true { domain.block() }
case "echo":
    print("echo ready")
    fflush(stdout)
    while let line = domain.console.readLine() {
        print("echo: \(line)")
        fflush(stdout)
        if line == "quit" { domain.shutdown(.poweroff) }
    }
    domain.shutdown(.poweroff)
case "be-peek":
    // A backend: finds the vbds the toolstack gave it in XenStore, takes each image from the
    // supervisor, reads its first bytes and writes a marker at sector 1.
    let xs = domain.store
    var seen = Set<String>()
    print("be-peek ready")
    fflush(stdout)
    while true {
        for fe in (try? xs.directory("backend/vbd")) ?? [] {
            for dev in (try? xs.directory("backend/vbd/\(fe)")) ?? [] where !seen.contains("\(fe)/\(dev)") {
                seen.insert("\(fe)/\(dev)")
                let dir = "backend/vbd/\(fe)/\(dev)"
                let params = (try? xs.read(dir + "/params")) ?? "?", mode = (try? xs.read(dir + "/mode")) ?? "?"
                do {
                    let fd = try domain.deviceFD(.vbd, frontend: UInt16(fe) ?? 0, devid: UInt32(dev) ?? 0)
                    var buf = [UInt8](repeating: 0, count: 16)
                    let n = pread(fd.rawValue, &buf, 16, 0)
                    let first = String(decoding: buf.prefix(max(0, n)).filter { $0 >= 32 && $0 < 127 }, as: UTF8.self)
                    var marker = Array("written by dom\(domain.domid)".utf8)
                    let w = pwrite(fd.rawValue, &marker, marker.count, 512)
                    print("disk \(fe)/\(dev) params=\(params) mode=\(mode) first=\(first) write=\(w < 0 ? "errno \(errno)" : "\(w)")")
                    fd.close()
                } catch {
                    print("disk \(fe)/\(dev): \(error)")
                }
                fflush(stdout)
            }
        }
        usleep(20_000)
    }
case "disk-snoop":
    // Not a backend: asks for another domain's disk.
    let fe = UInt16(arg("frontend") ?? "0") ?? 0, dev = UInt32(arg("devid") ?? "0") ?? 0
    do {
        _ = try domain.deviceFD(.vbd, frontend: fe, devid: dev)
        print("snoop: got the disk")
    } catch {
        print("snoop: \(error)")
    }
    do {
        _ = try domain.deviceFD(.vbd, frontend: fe, devid: 12345)
        print("snoop unknown: got it")
    } catch {
        print("snoop unknown: \(error)")
    }
    domain.shutdown(.poweroff)
case "inflight-probe":
    // Asks for in-flight logs of vbd frontend=F devid=D, good and bad, and says what came back
    // (the first one's memory gets 0xA5 in its first byte):
    // `inflight: NAME: ok incarnations=N` or `inflight: NAME: <error>`. A backend that serves the
    // device gets its log (the same memory the second time); anyone else, nothing.
    let fe = UInt16(arg("frontend") ?? "0") ?? 0, dev = UInt32(arg("devid") ?? "0") ?? 0
    // wait-device=1: a backend first waits for the toolstack to give it the device.
    while arg("wait-device") == "1", (try? domain.store.read("backend/vbd/\(fe)/\(dev)/frontend")) == nil { usleep(20_000) }
    func probe(_ name: String, _ kind: DeviceKind = .vbd, devid: UInt32? = nil, queue: Int = 0, bytes: Int = 4096,
               write: UInt8? = nil) {
        do {
            let (memory, n) = try domain.inflightLog(kind, frontend: fe, devid: devid ?? dev, queue: queue, bytes: bytes)
            let first = memory.base.load(as: UInt8.self)
            if let write { memory.base.storeBytes(of: write, as: UInt8.self) }
            print("inflight: \(name): ok incarnations=\(n) first-byte=\(first)")
            memory.unmap()
        } catch {
            print("inflight: \(name): \(error)")
        }
    }
    probe("first", write: 0xA5)
    probe("again")
    probe("other-size", bytes: 8192)
    probe("queue-16", queue: 16)
    probe("no-bytes", bytes: 0)
    probe("odd-bytes", bytes: 3000)
    probe("too-big", bytes: 2 << 20)
    probe("uplink", .uplink)
    probe("unknown", devid: 12345)
    print("inflight: done")
    fflush(stdout)
    while true { domain.block() }
case "timer-slack":
    // set_timer_op: 20 one-shot timers 2 ms ahead (the latest arrival reported), one in the
    // past (at once), one absurdly far away (not within 300 ms, then cancelled).
    let ev = domain.eventChannels
    let timer = try! ev.bindVirq(.timer)
    var worst: UInt64 = 0
    var early = 0
    for _ in 0..<20 {
        let deadline = MonotonicClock.nanoseconds() + 2_000_000
        domain.setTimer(deadline: deadline)
        while ev.waitAny(timeoutNs: 5_000_000_000) != timer {}
        let now = MonotonicClock.nanoseconds()
        if now < deadline { early += 1 } else { worst = max(worst, now - deadline) }
    }
    domain.setTimer(deadline: 1)
    let past = ev.waitAny(timeoutNs: 2_000_000_000) == timer
    domain.setTimer(deadline: UInt64.max)
    let far = ev.waitAny(timeoutNs: 300_000_000) == timer
    domain.setTimer(nanoseconds: nil)
    print("timer slack worst_us=\(worst / 1000) early=\(early) past_fired=\(past) far_fired=\(far)")
    fflush(stdout)
    while true { domain.block() }
case "console-virq":
    // VIRQ_CONSOLE: raised when console input arrives; the guest then reads it.
    let ev = domain.eventChannels
    let port = try! ev.bindVirq(.console)
    print("console virq bound port=\(port)")
    fflush(stdout)
    let got = ev.waitAny(timeoutNs: 20_000_000_000)
    print("console virq delivered: \(got == port)")
    print("console input: \(domain.console.readLine() ?? "-")")
    fflush(stdout)
    domain.shutdown(.poweroff)
case "reboot":
    print("rebooting dom\(domain.domid)")
    domain.shutdown(.reboot)
case "crash":
    domain.shutdown(.crash)
case "exit":
    exit(Int32(arg("code") ?? "0") ?? 0)
case "segv":
    let p = UnsafeMutablePointer<Int>(bitPattern: 8)!
    p.pointee = 1
case "forbidden":
    print("trying \(arg("call") ?? "?")")
    fflush(stdout)
    issue(arg("call") ?? "openat")
    print("forbidden call returned: sandbox failed")
    domain.shutdown(.poweroff)
case "garbage":
    // Malformed hypercalls: each must get an error reply, the domain keeps running.
    let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
    let count = Int(arg("count") ?? "3") ?? 3
    for i in 0..<count {
        _ = try? UnixSocket.send(fd, [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 10 + i))
        if let m = try? UnixSocket.receive(fd, maxSize: 65536), let r = try? HypercallReply.decode(m.bytes) {
            print("garbage \(i): rc=\(r.rc)")
        } else {
            print("garbage \(i): no reply")
        }
        fflush(stdout)
    }
    print("survived garbage")
    domain.shutdown(.poweroff)
case "hc-forms":
    runHypercallForms()
    domain.shutdown(.poweroff)
case "hc-overflow":
    runHypercallOverflow()
    while true { domain.block() }
case "oversized":
    let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
    var big = HypercallRequest(.consoleIO, seq: 99, args: [0, 200_000], payload: [UInt8](repeating: 65, count: 200_000)).encode()
    big[0] = 18
    _ = try? UnixSocket.send(fd, big)
    while true { sleep(1) }
case "console-spew":
    // Writes `kib=` KiB (default 3072) of numbered lines to its console, then says so.
    let kib = Int(arg("kib") ?? "3072") ?? 3072
    var line = 0, written = 0
    while written < kib << 10 {
        let text = "spew line \(line) " + String(repeating: "x", count: 100) + "\n"
        print(text, terminator: "")
        written += text.utf8.count
        line += 1
    }
    print("spew done lines=\(line)")
    fflush(stdout)
    while true { domain.block() }
case "flood":
    // Sends hypercalls without reading replies until the supervisor gives up on it.
    let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
    let req = HypercallRequest(.xenVersion, seq: 7, args: [0]).encode()
    while true { _ = try? UnixSocket.send(fd, req) }
case "evtchn-offer":
    // Offers an unbound port to `peer`, then echoes every event back until the channel closes
    // (with `stay=1`, for ever: a peer may bind it again).
    let ev = domain.eventChannels
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let stay = arg("stay") == "1"
    let port = try! ev.allocUnbound(remote: peer)
    print("offer port=\(port)")
    fflush(stdout)
    var echoed = 0
    while true {
        let ports = ev.wait(timeoutNs: 10_000_000_000)
        if ports.isEmpty { continue }
        if ports.contains(port) {
            if !ev.isConnected(port) && echoed > 0 && !stay { break }
            if ev.isConnected(port) { try? ev.send(port); echoed += 1 }
        }
    }
    print("echoed \(echoed) events; peer closed")
    fflush(stdout)
    domain.shutdown(.poweroff)
case "evtchn-toggle":
    // An attacker of a peer's event socket: reads "peer=D port=P" from the console, binds and
    // closes that port `times` times (each change makes the supervisor tell the peer), then
    // binds once more and bounces one event to see the peer still answers.
    let ev = domain.eventChannels
    guard let line = domain.console.readLine() else { domain.shutdown(.crash) }
    let kv = settings(line)
    let peer = UInt16(kv["peer"] ?? "") ?? 0
    let rport = EvtchnPort(kv["port"] ?? "") ?? 0
    let times = Int(arg("times") ?? "5000") ?? 5000
    var errors = 0
    for _ in 0..<times {
        do {
            let p = try ev.bindInterdomain(remote: peer, remotePort: rport)
            try ev.close(p)
        } catch {
            errors += 1
        }
    }
    print("toggled \(times) times (\(errors) errors)")
    fflush(stdout)
    // The peer reads again only once unpaused: wait for the word.
    _ = domain.console.readLine()
    do {
        let p = try ev.bindInterdomain(remote: peer, remotePort: rport)
        try ev.send(p)
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        var answered = false
        while !answered && MonotonicClock.nanoseconds() < deadline { answered = ev.wait(timeoutNs: 100_000_000).contains(p) }
        print(answered ? "echo ok" : "no echo")
    } catch {
        print("last bind failed: \(error)")
    }
    fflush(stdout)
    while true { domain.block() }
case "evtchn-bind":
    // Reads "peer=D port=P" from the console, binds, bounces `rounds` events, reports the RTT.
    let ev = domain.eventChannels
    guard let line = domain.console.readLine() else { domain.shutdown(.crash) }
    let kv = settings(line)
    let peer = UInt16(kv["peer"] ?? "") ?? 0
    let rport = EvtchnPort(kv["port"] ?? "") ?? 0
    let port: EvtchnPort
    do { port = try ev.bindInterdomain(remote: peer, remotePort: rport) } catch {
        print("bind failed: \(error)"); fflush(stdout); domain.shutdown(.crash)
    }
    let status = try! ev.status(port)
    print("bound port=\(port) status=\(status.status) remote=\(status.remoteDomid):\(status.remotePort)")
    let rounds = Int(arg("rounds") ?? "1000") ?? 1000
    let t0 = MonotonicClock.nanoseconds()
    for _ in 0..<rounds {
        try! ev.send(port)
        while !ev.wait().contains(port) {}
    }
    let t1 = MonotonicClock.nanoseconds()
    print("pingpong rounds=\(rounds) rtt_ns=\((t1 - t0) / UInt64(rounds))")
    try! ev.close(port)
    print("closed")
    fflush(stdout)
    domain.shutdown(.poweroff)
case "grant-offer":
    // Grants a page to `peer` (plus hostile entries), then follows the grant-map script by events.
    let ev = domain.eventChannels, gt = domain.grantTable
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let page = try! gt.allocatePage()
    for i in 0..<4096 { page.base.storeBytes(of: UInt8(i % 251), toByteOffset: i, as: UInt8.self) }
    let g = try! gt.grantAccess(page, to: peer)
    let roPage = try! gt.allocatePage()
    roPage.base.storeBytes(of: UInt8(0x5A), toByteOffset: 0, as: UInt8.self)
    let ro = try! gt.grantAccess(roPage, to: peer, readonly: true)
    let other = try! gt.grantAccess(page, to: peer &+ 7)                  // granted to somebody else
    let forged = try! gt.grantAccess(page, to: peer)
    try! gt.writeRawEntry(forged, flags: GTF.permitAccess, domid: peer, frame: 5)  // not a grantable page
    let port = try! ev.allocUnbound(remote: peer)
    print("offer gref=\(g) ro=\(ro) other=\(other) forged=\(forged) port=\(port)")
    fflush(stdout)
    var step = 0
    while step < 2 {
        guard ev.waitAny(timeoutNs: 20_000_000_000) == port else { continue }
        step += 1
        if step == 1 {
            print("granter saw write: \(page.base.load(fromByteOffset: 100, as: UInt8.self) == 0xAB)")
            do { try gt.endAccess(g); print("end-while-mapped: allowed") } catch { print("end-while-mapped: refused (\(error))") }
        } else {
            do { try gt.endAccess(g); print("ended") } catch { print("end failed: \(error)") }
        }
        fflush(stdout)
        try? ev.send(port)
    }
    while ev.isConnected(port) { _ = ev.waitAny(timeoutNs: 100_000_000) }
    domain.shutdown(.poweroff)
case "grant-map":
    // Reads "peer=D gref=G ro=R other=O forged=F port=P" from the console and checks every path.
    let ev = domain.eventChannels, gt = domain.grantTable
    guard let line = domain.console.readLine() else { domain.shutdown(.crash) }
    let kv = settings(line).mapValues { UInt32($0) ?? 0 }
    let peer = UInt16(kv["peer"] ?? 0), g = GrantRef(kv["gref"] ?? 0), ro = GrantRef(kv["ro"] ?? 0)
    let action = arg("action") ?? "normal"
    func status(_ r: Result<GrantMapping, GrantError>) -> String {
        switch r {
        case .success: return "okay"
        case let .failure(.status(s, _)): return "\(s)"
        case let .failure(e): return "\(e)"
        }
    }
    if action == "write-ro" {
        let m = try! gt.map(domid: peer, ref: ro, readonly: true)
        print("ro byte \(m.base.load(as: UInt8.self)); writing through a read-only grant")
        fflush(stdout)
        m.base.storeBytes(of: UInt8(1), as: UInt8.self)
        print("write through read-only grant succeeded: isolation failed")
        domain.shutdown(.poweroff)
    }
    let m = try! gt.map(domid: peer, ref: g)
    if action == "outlive" {
        // The granter is destroyed while we hold its page: the page must stay readable until we unmap.
        let port = try! ev.bindInterdomain(remote: peer, remotePort: EvtchnPort(kv["port"] ?? 0))
        print("mapped; destroy the granter now")
        fflush(stdout)
        while ev.isConnected(port) { _ = ev.waitAny(timeoutNs: 100_000_000) }
        var intact = true
        for i in 0..<4096 where m.base.load(fromByteOffset: i, as: UInt8.self) != UInt8(i % 251) { intact = false }
        print("granter gone; page still intact: \(intact)")
        print("unmap after the granter died: \(gt.unmap([m]))")
        print("map from the dead granter: \(status(gt.map([(peer, g, false)])[0]))")
        fflush(stdout)
        domain.shutdown(.poweroff)
    }
    var okPattern = true
    for i in 0..<4096 where m.base.load(fromByteOffset: i, as: UInt8.self) != UInt8(i % 251) { okPattern = false }
    print("mapped pattern ok: \(okPattern)")
    m.base.storeBytes(of: UInt8(0xAB), toByteOffset: 100, as: UInt8.self)
    let port = try! ev.bindInterdomain(remote: peer, remotePort: EvtchnPort(kv["port"] ?? 0))
    try! ev.send(port)
    while ev.waitAny() != port {}
    print("bad gref: \(status(gt.map([(peer, 60000, false)])[0]))")
    print("granted to another domain: \(status(gt.map([(peer, GrantRef(kv["other"] ?? 0), false)])[0]))")
    print("write map of read-only grant: \(status(gt.map([(peer, ro, false)])[0]))")
    print("forged frame: \(status(gt.map([(peer, GrantRef(kv["forged"] ?? 0), false)])[0]))")
    print("unknown domain: \(status(gt.map([(999, g, false)])[0]))")
    print("own domain: \(status(gt.map([(domain.domid, g, false)])[0]))")
    let mine = try! gt.allocatePage()
    let copyIn = gt.copy([GrantCopy(source: .init(refOrGFN: UInt64(g.rawValue), domid: DomID(peer), offset: 0), dest: .init(refOrGFN: mine.gfn, domid: DOMID_SELF, offset: 0), length: 4096, flags: GNTCOPY_source_gref)])
    var copied = copyIn == [.okay]
    for i in 0..<4096 where i != 100 && mine.base.load(fromByteOffset: i, as: UInt8.self) != UInt8(i % 251) { copied = false }
    print("copy from grant: \(copyIn) data ok: \(copied)")
    let toRO = gt.copy([GrantCopy(source: .init(refOrGFN: mine.gfn, domid: DOMID_SELF, offset: 0), dest: .init(refOrGFN: UInt64(ro.rawValue), domid: DomID(peer), offset: 0), length: 16, flags: GNTCOPY_dest_gref)])
    print("copy into read-only grant: \(toRO)")
    let crossPage = gt.copy([GrantCopy(source: .init(refOrGFN: mine.gfn, domid: DOMID_SELF, offset: 4000), dest: .init(refOrGFN: UInt64(g.rawValue), domid: DomID(peer), offset: 0), length: 200, flags: GNTCOPY_dest_gref)])
    print("copy across page end: \(crossPage)")
    let foreignFrame = gt.copy([GrantCopy(source: .init(refOrGFN: grantPageGFNBase, domid: DomID(peer), offset: 0), dest: .init(refOrGFN: mine.gfn, domid: DOMID_SELF, offset: 0), length: 16, flags: 0)])
    print("copy from another domain's frame: \(foreignFrame)")
    if action == "lie" {
        // Accepted: unmap is bookkeeping only; the granter's endAccess re-backs the page.
        print("unmap while still mapped: \(gt.unmapHandleOnly(m.handle))")
    } else {
        try! gt.unmap(m)
    }
    print("unmapped")
    fflush(stdout)
    try! ev.send(port)
    while ev.waitAny() != port {}
    print("map after end-access: \(status(gt.map([(peer, g, false)])[0]))")
    try! ev.close(port)
    print("grant-map done")
    fflush(stdout)
    domain.shutdown(.poweroff)
case "evtchn-intrude":
    // Tries to use ports that are not its own; every attempt must fail with a clear error.
    let ev = domain.eventChannels
    let peer = UInt16(arg("peer") ?? "1") ?? 1
    let theirs = EvtchnPort(arg("port") ?? "1") ?? 1
    func outcome(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "succeeded"
        } catch {
            guard let e = error as? HypercallError else { return "\(error)" }
            return XenErrno(rawValue: e.errno).map { "\($0)" } ?? "\(e.errno)"
        }
    }
    print("bind to a port offered to someone else: \(outcome { _ = try ev.bindInterdomain(remote: peer, remotePort: theirs) })")
    print("bind to a domain that does not exist: \(outcome { _ = try ev.bindInterdomain(remote: 4000, remotePort: 1) })")
    print("send on a port never allocated: \(outcome { _ = try ev.send(theirs) })")
    let own = try! ev.allocUnbound(remote: peer)
    print("send on an unbound port: \(outcome { _ = try ev.send(own) })")
    try! ev.close(own)
    print("send on a closed port: \(outcome { _ = try ev.send(own) })")
    print("close a closed port: \(outcome { _ = try ev.close(own) })")
    print("status of a closed port: \(try! ev.status(own).status)")
    let r = domain.multicall([(.eventChannelOp, [EvtchnOp.send.rawValue, UInt64(theirs.rawValue)])])
    print("hypercall send on a foreign port: \(r)")
    print("bind virq twice: \(outcome { _ = try ev.bindVirq(.domExc) }) then \(outcome { _ = try ev.bindVirq(.domExc) })")
    print("bind virq on a vcpu that does not exist: \(outcome { _ = try ev.bindVirq(.timer, vcpu: 64) })")
    let timer = try! ev.bindVirq(.timer)
    domain.setTimer(nanoseconds: 5_000_000)
    print("timer virq delivered: \(ev.waitAny(timeoutNs: 2_000_000_000) == timer)")
    let ipi = try! ev.bindIPI()
    try! ev.send(ipi)
    print("ipi delivered: \(ev.waitAny(timeoutNs: 1_000_000_000) == ipi)")
    ev.mask(ipi)
    try! ev.send(ipi)
    print("masked ipi held back: \(ev.waitAny(timeoutNs: 50_000_000) == nil)")
    ev.unmask(ipi)
    print("unmasked ipi delivered: \(ev.waitAny(timeoutNs: 1_000_000_000) == ipi)")
    let domExc = try! ev.status(1)  // port 1 was the first allocated: the dom_exc virq? find it
    _ = domExc
    print("waiting for dom_exc")
    fflush(stdout)
    var sawDomExc = false
    let deadline = MonotonicClock.nanoseconds() + 20_000_000_000
    while !sawDomExc && MonotonicClock.nanoseconds() < deadline {
        if let p = ev.waitAny(timeoutNs: 1_000_000_000), (try? ev.status(p))?.virq == VIRQ.domExc.rawValue, (try? ev.status(p))?.status == .virq {
            sawDomExc = true
        }
    }
    print("dom_exc delivered: \(sawDomExc)")
    fflush(stdout)
    domain.shutdown(.poweroff)
case "pair-server":
    // Stress pair, server side: grants one page (gref 8) and offers port 1 to `peer`; checks
    // every round the client writes, answers by writing the next value back.
    let ev = domain.eventChannels, gt = domain.grantTable
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let page = try! gt.allocatePage()
    let gref = try! gt.grantAccess(page, to: peer)
    let port = try! ev.allocUnbound(remote: peer)
    publish(domain, "data/pair/port", "\(port)", readableBy: peer)
    var rounds = 0, errors = 0
    let words = page.base.assumingMemoryBound(to: UInt64.self)
    while true {
        guard ev.waitAny(timeoutNs: 30_000_000_000) == port else { print("server: nothing for 30 s after \(rounds) rounds"); errors += 1; break }
        if !ev.isConnected(port) { break }
        let seq = words[0]
        // The client writes even sequence numbers, we answer odd ones: an event that finds our
        // own answer still there is the close notice racing the unbind message.
        if seq & 1 == 1 { continue }
        for i in 1..<512 where words[i] != seq &* UInt64(i) &+ UInt64(domain.domid) { errors += 1; break }
        for i in 1..<512 { words[i] = (seq &+ 1) &* UInt64(i) }
        words[0] = seq &+ 1
        rounds += 1
        try? ev.send(port)
    }
    print("server gref=\(gref) rounds=\(rounds) errors=\(errors)")
    fflush(stdout)
    domain.shutdown(errors == 0 ? .poweroff : .crash)
case "pair-client":
    // Stress pair, client side: per round maps the server's page, writes a pattern, unmaps,
    // signals, waits, maps it read-only and checks the server's answer.
    let ev = domain.eventChannels, gt = domain.grantTable
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let seconds = Double(arg("seconds") ?? "3") ?? 3
    var port: EvtchnPort?
    if let offered = lookup(domain, peer, "data/pair/port").flatMap({ EvtchnPort($0) }) {
        port = try? ev.bindInterdomain(remote: peer, remotePort: offered)
    }
    guard let port else { print("client: bind failed"); domain.shutdown(.crash) }
    var rounds = 0, errors = 0
    let end = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
    var seq: UInt64 = UInt64(domain.domid) << 32
    while MonotonicClock.nanoseconds() < end {
        let m: GrantMapping
        do { m = try gt.map(domid: peer, ref: 8) } catch { print("client: map failed: \(error)"); errors += 1; break }
        let w = m.base.assumingMemoryBound(to: UInt64.self)
        for i in 1..<512 { w[i] = seq &* UInt64(i) &+ UInt64(peer) }
        w[0] = seq
        do { try gt.unmap(m) } catch { print("client: unmap failed: \(error)"); errors += 1; break }
        try! ev.send(port)
        guard ev.waitAny(timeoutNs: 30_000_000_000) == port else { print("client: no answer in round \(rounds)"); errors += 1; break }
        let r: GrantMapping
        do { r = try gt.map(domid: peer, ref: 8, readonly: true) } catch { print("client: ro map failed: \(error)"); errors += 1; break }
        let rw = r.base.assumingMemoryBound(to: UInt64.self)
        if rw[0] != seq &+ 1 { errors += 1 }
        for i in 1..<512 where rw[i] != (seq &+ 1) &* UInt64(i) { errors += 1; break }
        try? gt.unmap(r)
        seq = (seq &+ 1) &+ 1
        rounds += 1
    }
    try? ev.close(port)
    print("client rounds=\(rounds) errors=\(errors)")
    fflush(stdout)
    domain.shutdown(errors == 0 ? .poweroff : .crash)
case "balloon":
    // Gives memory back and takes it again; prints what the host and the supervisor see.
    let mem = domain.memory
    let populated = Int(mem.currentReservation)
    func stats(_ what: String) {
        print("\(what): host=\(mem.hostBytes / 1048576)MiB reservation=\(mem.currentReservation / 256)MiB max=\(mem.maximumReservation / 256)MiB")
        fflush(stdout)
    }
    memset(mem.base, 0x11, populated * 4096)  // touch every populated page
    let first = PFN(0), mfn0 = mem.mfn(of: first)!
    print("translate: pfn 0 -> \(mfn0) -> \(mem.pfn(of: mfn0).map { "\($0)" } ?? "nil")")
    stats("start")
    let n = Int(arg("mb") ?? "16")! * 256
    let top = (populated - n)..<populated
    print("decreased \(mem.decreaseReservation(top.map { PFN(UInt64($0)) })) pages")
    print("ballooned pfn has no mfn: \(mem.mfn(of: PFN(UInt64(populated - 1))) == nil)")
    stats("after decrease")
    print("repopulated \(mem.populate(top.map { PFN(UInt64($0)) })) pages")
    memset(mem.base + top.lowerBound * 4096, 0x22, n * 4096)
    stats("after populate")
    print("grow into the rest of maxmem: \(mem.populate((populated..<Int(mem.spanPages)).map { PFN(UInt64($0)) })) pages")
    print("populate outside the domain: \(mem.populate([PFN(mem.spanPages), PFN(1 << 40)])) pages")
    print("populate an already populated pfn: \(mem.populate([PFN(0)])) pages")
    stats("full")
    print("waiting")
    fflush(stdout)
    _ = domain.console.readLine()
    print("decreased \(mem.decreaseReservation((0..<256).map { PFN(UInt64(Int(mem.spanPages) - 256 + $0)) })) pages")
    if arg("then") != "cheat" {
        print("populate above mem-max: \(mem.populate((0..<256).map { PFN(UInt64(Int(mem.spanPages) - 256 + $0)) })) pages")
    }
    stats("after mem-max")
    if arg("then") == "cheat" {
        // Write a page given back without repopulating it: host memory above the reservation.
        print("writing a ballooned page")
        fflush(stdout)
        memset(mem.base + (Int(mem.spanPages) - 256) * 4096, 0x33, 256 * 4096)
        while true { sleep(1) }
    }
    domain.shutdown(.poweroff)
case "multicall":
    let rcs = domain.multicall([(.xenVersion, [0]), (.vcpuOp, [VCPUOp.isUp.rawValue, 0]), (.schedOp, [SchedOp.yield.rawValue]), (.xenVersion, [99])])
    print("multicall: \(rcs.map(String.init).joined(separator: ","))")
    domain.shutdown(.poweroff)
default:
    if runXenStoreMode(mode, domain) || runBlkMode(mode, domain) || runHotplugMode(mode, domain) || runNetMode(mode, domain) || runNetToolMode(mode, domain) || runAttackGrantMode(mode, domain)
        || runJailMode(mode, domain) || runSaveMode(mode, domain) { break }
    print("testguest: unknown mode \(mode)")
    domain.shutdown(.crash)
}

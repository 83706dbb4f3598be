import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

// Hostile domains for Tests/IntegrationTests/IsolationMemoryTests.swift: each attacks shared
// memory and prints what the kernel and the supervisor answered, `key: value` per line.

private func say(_ s: String) { print(s); fflush(stdout) }

private func errnoName(_ e: Int32) -> String {
    switch e {
    case 0: return "ok"
    case EPERM: return "EPERM"
    case EBADF: return "EBADF"
    case EINVAL: return "EINVAL"
    case EACCES: return "EACCES"
    default: return "errno\(e)"
    }
}

/// Tries every way to change the size of a shared memfd: ftruncate down and up (only where the
/// caller's sandbox allows ftruncate) and fallocate past the end. "ok" anywhere is a failure
/// of the defence.
private func resizeAttempts(_ fd: FileDescriptor, truncate: Bool) -> String {
    var st = stat()
    fstat(fd.rawValue, &st)
    let size = Int64(st.st_size)
    var parts: [String] = []
    let seals = (try? MemFD.seals(fd)).map { "\($0)" } ?? "none"
    parts.append("seals=\(seals)")
    func outcome(_ body: () throws -> Void) -> String {
        do { try body(); return "ok" } catch let e as SystemError { return errnoName(e.errno.rawValue) } catch { return "\(error)" }
    }
    if truncate {
        parts.append("shrink=\(outcome { try MemFD.resize(fd, to: Int(size / 2)) })")
        parts.append("truncate0=\(outcome { try MemFD.resize(fd, to: 0) })")
        parts.append("grow=\(outcome { try MemFD.resize(fd, to: Int(size) + 4096) })")
    }
    parts.append("fallocate=\(outcome { try MemFD.allocate(fd, offset: Int(size), length: 4096) })")
    var after = stat()
    fstat(fd.rawValue, &after)
    parts.append("size=\(after.st_size == st.st_size ? "kept" : "changed")")
    return parts.joined(separator: " ")
}

/// A writable shared mapping of a descriptor that must only ever be readable.
private func writableMapping(_ fd: FileDescriptor, length: Int) -> String {
    guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0), p != MAP_FAILED else {
        return errnoName(errno)
    }
    munmap(p, length)
    return "ok"
}

/// Modes that replace DomainRuntime's bootstrap (run before `Domain.start`): true when handled.
/// `be-attack-resize` bootstraps by hand, keeps every descriptor the supervisor hands out and
/// tries to grow each with fallocate (which a driver domain's bound allows; ftruncate it never
/// does, see SeccompPolicyTests): first under the supervisor's bound alone, then, after engaging
/// the driver-domain allow-list itself, on the grant table frame, grantable pages and the exposure map.
func runAttackBootstrapMode(_ mode: String) -> Bool {
    guard mode == "be-attack-resize" else { return false }
    let hc = FileDescriptor(rawValue: BootstrapFD.hypercall)
    var seq: UInt64 = 0
    func call(_ op: HypercallOp, _ args: [UInt64] = [], payload: [UInt8] = []) -> (HypercallReply, [FileDescriptor]) {
        seq += 1
        guard (try? UnixSocket.send(hc, HypercallRequest(op, seq: seq, args: args, payload: payload).encode())) != nil else {
            say("attack-resize: cannot send \(op)")
            exit(4)
        }
        while true {
            guard let m = try? UnixSocket.receive(hc, maxSize: 1 << 17), let r = try? HypercallReply.decode(m.bytes) else {
                say("attack-resize: no reply to \(op)")
                exit(4)
            }
            if r.seq == seq { return (r, m.fds) }
            m.fds.forEach { $0.close() }
        }
    }
    let (boot, fds) = call(.bootstrap)
    guard boot.rc == 0, fds.count == BootstrapReplyFD.allCases.count else {
        say("attack-resize: bootstrap failed rc=\(boot.rc) fds=\(fds.count)")
        exit(4)
    }
    let names: [(BootstrapReplyFD, String)] = [(.ram, "RAM"), (.p2m, "P2M"), (.m2p, "M2P"), (.doorbell, "doorbell"),
                                               (.selfPairPage, "pair page"), (.storePage, "XenStore page")]
    for (which, name) in names {
        say("resize \(name): \(resizeAttempts(fds[which.rawValue], truncate: false))")
    }
    for (which, name) in [(BootstrapReplyFD.p2m, "P2M"), (.m2p, "M2P")] {
        say("writable map \(name): \(writableMapping(fds[which.rawValue], length: 4096))")
    }
    do {
        try SeccompPolicies.driverDomain.compile(threadSync: true, ownPid: UInt32(getpid())).load()
    } catch {
        say("attack-resize: cannot engage: \(error)")
        exit(4)
    }
    guard call(.engaged).0.rc == 0 else {
        say("attack-resize: engagement refused")
        exit(4)
    }
    let (table, tableFDs) = call(.grantTableOp, [GnttabOp.setupTable.rawValue, 1])
    if table.rc == 0, let t = tableFDs.first { say("resize grant table frame: \(resizeAttempts(t, truncate: false))") }
    let (pages, pageFDs) = call(.allocGrantPages, [4, 1])
    if pages.rc == 4, pageFDs.count == 5 {
        say("resize grantable page: \(resizeAttempts(pageFDs[0], truncate: false))")
        say("resize exposure map: \(resizeAttempts(pageFDs[4], truncate: false))")
        say("writable map exposure map: \(writableMapping(pageFDs[4], length: 4096))")
    } else {
        say("attack-resize: alloc grant pages rc=\(pages.rc) fds=\(pageFDs.count)")
    }
    // Make the supervisor touch what it shares with us (the XenStore ring, on a kick): had any
    // resize above worked, this is where it would fault.
    var one: UInt64 = 1
    _ = Glibc.write(fds[BootstrapReplyFD.dom0Kick.rawValue].rawValue, &one, 8)
    usleep(200_000)
    say("attack-resize done")
    _ = call(.schedOp, [SchedOp.shutdown.rawValue, UInt64(ShutdownReason.poweroff.rawValue)])
    exit(0)
}

/// Attacker modes that run on DomainRuntime; false for a mode that is not one.
func runAttackGrantMode(_ mode: String, _ domain: Domain) -> Bool {
    switch mode {
    case "attack-granter": attackGranter(domain)
    case "attack-keep": attackKeeper(domain)
    case "attack-exhaust": attackExhaust(domain)
    default: return false
    }
    return true
}

private let secret: [UInt8] = Array("procvisor-secret-after-end-access".utf8)

private func contains(_ p: UnsafeMutableRawPointer, _ bytes: [UInt8], at offset: Int) -> Bool {
    memcmp(p + offset, bytes, bytes.count) == 0
}

/// The honest granter: grants a page A and a two-page run B (seen back to back through a
/// `contiguousView`), waits for the grantee to "unmap", ends access (which must succeed), writes
/// the secret into A and, through the view, into B's second page; then checks that the grantee's
/// later writes never reach it.
private func attackGranter(_ domain: Domain) {
    let ev = domain.eventChannels, gt = domain.grantTable
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    let a = try! gt.allocatePage()
    let b = [try! gt.allocatePage(), try! gt.allocatePage()]
    let view = try! gt.contiguousView(b)
    for i in 0..<4096 { a.base.storeBytes(of: UInt8(i % 251), toByteOffset: i, as: UInt8.self) }
    memset(view, 0x42, 8192)
    let ga = try! gt.grantAccess(a, to: peer)
    let gb = try! gt.grantAccess(b[1], to: peer)
    let port = try! ev.allocUnbound(remote: peer)
    say("offer gref=\(ga) run=\(gb) port=\(port)")
    while ev.waitAny(timeoutNs: 20_000_000_000) != port {}
    // The grantee says it unmapped both, though it kept everything.
    var ended = true
    for g in [ga, gb] {
        do { try gt.endAccess(g) } catch { ended = false; say("end access \(g): \(error)") }
    }
    say("end access: \(ended ? "ok" : "failed")")
    // What the grantee wrote while it had access stays (contents up to the end of access).
    var intact = a.base.load(fromByteOffset: 100, as: UInt8.self) == 0xAB
    for i in 0..<4096 where i != 100 && a.base.load(fromByteOffset: i, as: UInt8.self) != UInt8(i % 251) { intact = false }
    say("contents kept across re-backing: \(intact)")
    memcpy(a.base, secret, secret.count)
    memcpy(view + 4096, secret, secret.count)
    say("view and page agree: \(contains(b[1].base, secret, at: 0))")
    try! ev.send(port)
    while ev.waitAny(timeoutNs: 20_000_000_000) != port {}
    let reachedA = a.base.load(fromByteOffset: 200, as: UInt8.self) == 0xCD
    let reachedB = b[1].base.load(fromByteOffset: 200, as: UInt8.self) == 0xCD || view.load(fromByteOffset: 4096 + 200, as: UInt8.self) == 0xCD
    say("grantee writes reached the granter: \(reachedA || reachedB)")
    // The page is the granter's again: it can grant it anew, and a new mapping sees the secret.
    let again = try! gt.grantAccess(a, to: peer)
    say("regrant gref=\(again)")
    try! ev.send(port)
    while ev.waitAny(timeoutNs: 20_000_000_000) != port {}
    try? gt.endAccess(again)
    say("attack-granter done")
    while ev.isConnected(port) { _ = ev.waitAny(timeoutNs: 100_000_000) }
    domain.shutdown(.poweroff)
}

/// The grantee that keeps what it was given: a mapping of A, A's descriptor (and a dup of
/// it), and a mapping of B's page; reports unmaps it never did, then looks for the secret the
/// granter wrote after ending access, and writes back.
private func attackKeeper(_ domain: Domain) {
    let ev = domain.eventChannels, gt = domain.grantTable
    guard let line = domain.console.readLine() else { domain.shutdown(.crash) }
    let kv = settings(line).mapValues { UInt32($0) ?? 0 }
    let peer = UInt16(kv["peer"] ?? 0)
    let ma = try! gt.map(domid: peer, ref: GrantRef(kv["gref"] ?? 0))
    let mb = try! gt.map(domid: peer, ref: GrantRef(kv["run"] ?? 0))
    let (h, fd) = try! gt.mapDescriptor(domid: peer, ref: GrantRef(kv["gref"] ?? 0))
    // fcntl, not dup: the guest allow-list lets a guest duplicate descriptors only this way.
    let dupped = FileDescriptor(rawValue: fcntl(fd.rawValue, F_DUPFD_CLOEXEC, Int32(0)))
    var pattern = true
    for i in 0..<4096 where ma.base.load(fromByteOffset: i, as: UInt8.self) != UInt8(i % 251) { pattern = false }
    say("mapped pattern ok: \(pattern)")
    ma.base.storeBytes(of: UInt8(0xAB), toByteOffset: 100, as: UInt8.self)
    // The lie: the supervisor is told everything is unmapped.
    say("unmap (kept mapping): \(gt.unmapHandleOnly(ma.handle))")
    say("unmap (kept mapping, run): \(gt.unmapHandleOnly(mb.handle))")
    say("unmap (kept descriptor): \(gt.unmapHandleOnly(h))")
    let port = try! ev.bindInterdomain(remote: peer, remotePort: EvtchnPort(kv["port"] ?? 0))
    try! ev.send(port)
    while ev.waitAny() != port {}
    // Everything kept, looked at after the granter ended access and wrote its secret.
    let late = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dupped.rawValue, 0)!
    let lateOriginal = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)!
    let seen = contains(ma.base, secret, at: 0) || contains(mb.base, secret, at: 0) || contains(late, secret, at: 0)
        || contains(lateOriginal, secret, at: 0)
    say("grantee saw the secret: \(seen)")
    say("grantee still sees its own write: \(ma.base.load(fromByteOffset: 100, as: UInt8.self) == 0xAB)")
    for p in [ma.base, mb.base, late, lateOriginal] { p.storeBytes(of: UInt8(0xCD), toByteOffset: 200, as: UInt8.self) }
    try! ev.send(port)
    while ev.waitAny() != port {}
    // A fresh grant of the same page maps the granter's current page (with the secret).
    let fresh = try? gt.map(domid: peer, ref: regrant(domain))
    say("regranted page shows the granter's data: \(fresh.map { contains($0.base, secret, at: 0) } ?? false)")
    if let fresh { try? gt.unmap(fresh) }
    try! ev.send(port)
    fd.close()
    dupped.close()
    try? ev.close(port)
    say("attack-keep done")
    domain.shutdown(.poweroff)
}

/// The regrant's reference, typed in on the console by the test ("regrant=N").
private func regrant(_ domain: Domain) -> GrantRef {
    guard let line = domain.console.readLine() else { return 0 }
    return GrantRef(settings(line)["regrant"].flatMap { UInt32($0) } ?? 0)
}

/// Allocates grantable pages until the supervisor refuses, says how many it got and how it
/// was refused, then keeps them (and stays) until shut down.
private func attackExhaust(_ domain: Domain) {
    let gt = domain.grantTable
    var held: [GrantablePage] = []
    var refusal = "none"
    while held.count < 100_000 {
        do {
            held.append(try gt.allocatePage())
        } catch {
            refusal = "\(error)"
            break
        }
    }
    say("exhausted after \(held.count) pages: \(refusal)")
    while domain.shutdownRequested == nil { _ = domain.block(timeoutNs: 1_000_000_000) }
    domain.shutdown(.poweroff)
}

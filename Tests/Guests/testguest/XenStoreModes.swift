@_spi(Testing) import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

/// Guest-side XenStore behaviours for the integration tests; each prints `key=value` results on
/// the console. Returns false for a mode that is not a XenStore mode.
func runXenStoreMode(_ mode: String, _ domain: Domain) -> Bool {
    let xs = domain.store
    func say(_ s: String) { print(s); fflush(stdout) }
    func errName(_ body: () throws -> Void) -> String {
        do { try body(); return "OK" } catch let e as XenStoreError { return e.name ?? "\(e)" } catch { return "\(error)" }
    }
    let peer = UInt16(arg("peer") ?? "0") ?? 0
    switch mode {
    case "xs-basic":
        // Relative paths are under /local/domain/N, as for a Linux guest.
        say("write=\(errName { try xs.write("data/greeting", "hi there") })")
        say("read=\((try? xs.read("data/greeting")) ?? "-")")
        say("abs=\((try? xs.read("/local/domain/\(domain.domid)/data/greeting")) ?? "-")")
        say("name=\((try? xs.read("name")) ?? "-")")
        say("mkdir=\(errName { try xs.mkdir("data/dir/sub") })")
        say("dir=\(((try? xs.directory("data")) ?? []).joined(separator: ","))")
        say("perms=\(((try? xs.permissions("data/greeting")) ?? []).map(\.description).joined(separator: ","))")
        say("path=\((try? xs.domainPath(domain.domid)) ?? "-")")
        say("rm=\(errName { try xs.rm("data/dir") })")
        say("exists=\((try? xs.exists("data/dir")) ?? true)")
        say("missing=\(errName { _ = try xs.read("data/nope") })")
        say("readonly=\(errName { try xs.write("name", "evil") })")
        say("xs-basic done")
        domain.shutdown(.poweroff)
    case "xs-peek":
        // Another domain's tree: unreadable and unwritable without permission.
        say("peek-read=\(errName { _ = try xs.read("/local/domain/\(peer)/name") })")
        say("peek-write=\(errName { try xs.write("/local/domain/\(peer)/data/x", "1") })")
        say("peek-list=\(errName { _ = try xs.directory("/local/domain/\(peer)") })")
        say("peek-chmod=\(errName { try xs.setPermissions("/local/domain/\(peer)/data", [XenStorePermission(domid: domain.domid, access: .both)]) })")
        say("peek-shared=\((try? xs.read("/local/domain/\(peer)/data/box")) ?? "EACCES")")
        say("xs-peek done")
        while true { domain.block() }
    case "xs-box":
        // A node the peer may write, and a watch on it: events cross domains.
        _ = try? xs.write("data/box", "empty")
        do {
            try xs.setPermissions("data/box", [XenStorePermission(domid: domain.domid, access: .none), XenStorePermission(domid: peer, access: .both)])
        } catch { say("chmod failed: \(error)") }
        var lock = pthread_mutex_t()
        pthread_mutex_init(&lock, nil)
        var seen = 0
        do {
            try xs.watch("data/box", token: "box") { path in
                pthread_mutex_lock(&lock); seen += 1; let n = seen; pthread_mutex_unlock(&lock)
                let v = (try? xs.read("data/box")) ?? "?"
                print("box event \(n) path=\(path) value=\(v)")
                fflush(stdout)
            }
        } catch { say("watch failed: \(error)") }
        say("box ready")
        while true { domain.block() }
    case "xs-poke":
        let path = "/local/domain/\(peer)/data/box"
        var r = "none"
        for _ in 0..<200 {
            r = errName { try xs.write(path, "hello from dom\(domain.domid)") }
            if r == "OK" { break }
            usleep(20_000)
        }
        say("poke=\(r)")
        domain.shutdown(.poweroff)
    case "xs-tx":
        // A transaction whose read is overtaken by another write fails with EAGAIN.
        _ = try? xs.write("data/counter", "0")
        if let t = try? xs.startTransaction() {
            _ = try? xs.read("data/counter", transaction: t)
            _ = try? xs.write("data/counter", "5")
            _ = try? xs.write("data/counter", "1", transaction: t)
            say("conflict=\(errName { try xs.endTransaction(t, commit: true) })")
        }
        say("after-conflict=\((try? xs.read("data/counter")) ?? "-")")
        if let t = try? xs.startTransaction() {
            _ = try? xs.write("data/aborted", "x", transaction: t)
            say("in-tx-read=\((try? xs.read("data/aborted", transaction: t)) ?? "-")")
            say("outside-tx-read=\(errName { _ = try xs.read("data/aborted") })")
            try? xs.endTransaction(t, commit: false)
            say("after-abort=\(errName { _ = try xs.read("data/aborted") })")
        }
        // Concurrent increments with retry on EAGAIN lose nothing.
        _ = try? xs.write("data/counter", "0")
        let threads = 4, each = 25
        var done: UInt32 = 0
        for i in 0..<threads {
            domain.startVCPU(i + 1) { _ in
                for _ in 0..<each {
                    try? xs.transaction { t in
                        let v = Int((try? xs.read("data/counter", transaction: t)) ?? "0") ?? 0
                        try xs.write("data/counter", "\(v + 1)", transaction: t)
                    }
                }
                SharedAtomic.fetchAdd(&done, 1)
            }
        }
        while SharedAtomic.load(&done) < UInt32(threads) { usleep(1000) }
        say("counter=\((try? xs.read("data/counter")) ?? "-") expected=\(threads * each)")
        say("xs-tx done")
        domain.shutdown(.poweroff)
    case "xs-quota":
        var n = 0
        var last = "OK"
        while n < 5000 {
            last = errName { try xs.write("data/q/n\(n)", "v") }
            if last != "OK" { break }
            n += 1
        }
        say("quota after \(n) nodes: \(last)")
        say("big=\(errName { try xs.write("data/big", String(repeating: "x", count: 4000)) })")
        _ = try? xs.rm("data/q")
        say("after-rm=\(errName { try xs.write("data/ok", "1") })")
        say("xs-quota done")
        domain.shutdown(.poweroff)
    case "xs-hostile":
        // Corrupts the request ring's producer index: the server must disconnect this ring only.
        say("before=\((try? xs.read("name")) ?? "-")")
        let page = xs.ringPage
        let cons = page.load(fromByteOffset: 2048, as: UInt32.self)
        page.storeBytes(of: cons &+ 5000, toByteOffset: 2052, as: UInt32.self)
        xs.kickServer()
        var error: UInt32 = 0
        for _ in 0..<500 {
            error = SharedAtomic.load((page + 2072).assumingMemoryBound(to: UInt32.self))
            if error != 0 { break }
            usleep(10_000)
        }
        say("ring error=\(error)")
        say("after=\(errName { _ = try xs.read("name") })")
        say("xs-hostile done")
        while true { domain.block() }
    case "xs-flood":
        // Stops reading replies and fills the request ring: the server holds it at the quota.
        // It writes the ring itself, so the runtime's own store traffic must be over first: the
        // watches it registers at boot (on the watch thread) and the reads their first events
        // make (the balloon reads memory/target). A task queued behind them, a read whose reply
        // comes after those events, and a second task behind the events make sure of it.
        func watchThreadBarrier() {
            let done = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
            done.pointee = 0
            xs.onWatchThread { SharedAtomic.store(done, 1) }
            while SharedAtomic.load(done) == 0 { usleep(1000) }
            done.deallocate()
        }
        watchThreadBarrier()
        say("before=\((try? xs.read("name")) ?? "-")")
        watchThreadBarrier()
        xs.pauseReader(true)
        let page = xs.ringPage
        let req = (page + 0).assumingMemoryBound(to: UInt8.self)
        let consW = (page + 2048).assumingMemoryBound(to: UInt32.self), prodW = (page + 2052).assumingMemoryBound(to: UInt32.self)
        var sent = 0
        let seconds = UInt64(arg("seconds") ?? "3") ?? 3
        let deadline = MonotonicClock.nanoseconds() + seconds * 1_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            let msg = XSMessage(.read, requestID: UInt32(100_000 + sent), strings: ["name"]).encoded()
            let cons = SharedAtomic.load(consW), prod = SharedAtomic.load(prodW)
            if Int(prod &- cons) + msg.count > 1024 { xs.kickServer(); usleep(5_000); continue }
            for (i, b) in msg.enumerated() { req[Int((prod &+ UInt32(i)) & 1023)] = b }
            SharedAtomic.store(prodW, prod &+ UInt32(msg.count))
            sent += 1
            xs.kickServer()
        }
        say("flood sent=\(sent)")
        xs.pauseReader(false)
        // Once it reads again, everything it asked for is answered and new requests work.
        var after = "-"
        for _ in 0..<500 {
            do {
                after = try xs.read("name")
                break
            } catch let e as XenStoreError {
                after = "\(e)"
                if case .disconnected = e { break }
            } catch {}
            usleep(10_000)
        }
        say("after=\(after)")
        say("xs-flood done")
        while true { domain.block() }
    case "xs-hog":
        // Three threads read a node as fast as the ring turns their requests around, for
        // `seconds=` (3): the server must go back to everyone else between batches.
        let seconds = UInt64(arg("seconds") ?? "3") ?? 3
        let deadline = MonotonicClock.nanoseconds() + seconds * 1_000_000_000
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 3)
        counts.initialize(repeating: 0, count: 3)
        for i in 0..<3 {
            domain.startVCPU(i + 1) { _ in
                while MonotonicClock.nanoseconds() < deadline {
                    if (try? xs.read("name")) != nil { counts[i] += 1 }
                }
            }
        }
        say("xs-hog started")
        while MonotonicClock.nanoseconds() < deadline + 200_000_000 { usleep(50_000) }
        say("xs-hog reads=\(counts[0] + counts[1] + counts[2])")
        say("xs-hog done")
        while true { domain.block() }
    case "xs-ack":
        // Acknowledges control/shutdown (the runtime does) but records what it saw first.
        domain.onShutdownRequest { reason in
            let v = (try? xs.read("control/shutdown")) ?? "?"
            print("shutdown request \(reason.name), node now '\(v)'")
            fflush(stdout)
            domain.shutdown(reason)
        }
        say("xs-ack ready")
        while true { domain.block() }
    case "xs-balloon":
        say("balloon start pages=\(domain.memory.currentReservation)")
        var last: UInt64 = 0
        while true {
            let now = domain.memory.currentReservation
            if now != last {
                print("reservation pages=\(now) host_kb=\(domain.memory.hostBytes / 1024)")
                fflush(stdout)
                last = now
            }
            usleep(20_000)
        }
    default:
        return false
    }
    return true
}

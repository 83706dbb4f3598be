import DomainRuntime
import Glibc
import NetStack
import LinuxHost
import ProcvisorABI
import SplitDrivers

// Network modes of the test guest (extra = "mode=... key=value ..."):
//   net-hostile   a raw netif frontend on vif 0 that puts malformed tx requests on its ring,
//                 checks each is answered NETIF_RSP_ERROR, floods broadcasts and never gives
//                 its rx ring a page
//   net-send      sends count= UDP datagrams (or for seconds=, at most pps= a second) to
//                 dst=IP dport=P, size= bytes, with optional forged srcmac= / srcip=
//   net-sink      counts UDP datagrams arriving on port=, per source, printing totals each 250 ms
//   net-hotplug   connects every vif that appears under device/vif and pings target= through it
// queues=N and split=1 are what netfront asks for (net-send, net-sink, net-hotplug).
func runNetMode(_ mode: String, _ domain: Domain) -> Bool {
    func say(_ s: String) { print(s); fflush(stdout) }
    let args = CommandLine.arguments.dropFirst()
    func arg(_ key: String) -> String? { args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) } }
    func connect(_ devid: UInt32 = 0) -> (Netfront, NetStack)? {
        do {
            let options = NetfrontOptions(queues: Int(arg("queues") ?? "1") ?? 1, splitEventChannels: arg("split") == "1")
            let (front, stack) = try Netfront.connectWithStack(domain: domain, devid: devid, timeout: 30, options: options)
            say("\(mode): vif \(devid) connected: \(front.queueCount) queue(s)\(front.eventChannelsSplit ? ", split event channels" : "")")
            return (front, stack)
        } catch {
            say("\(mode): connect vif \(devid) failed: \(error)")
            return nil
        }
    }

    switch mode {
    case "net-send":
        guard let (front, stack) = connect() else { domain.shutdown(.crash) }
        guard let dst = arg("dst").flatMap(IPv4Address.init) else { say("net-send: give dst="); domain.shutdown(.crash) }
        let dport = UInt16(arg("dport") ?? "9") ?? 9
        let size = max(1, min(Int(arg("size") ?? "64") ?? 64, 1472))
        let count = Int(arg("count") ?? "10") ?? 10
        let seconds = Double(arg("seconds") ?? "0") ?? 0
        let srcMAC = arg("srcmac").flatMap(MACAddress.init) ?? front.mac
        let srcIP = arg("srcip").flatMap(IPv4Address.init) ?? stack.config.address
        let dstMAC: MACAddress
        do { dstMAC = try stack.resolve(dst, timeout: 20) } catch {
            say("net-send: resolve \(dst): \(error)")
            domain.shutdown(.crash)
        }
        var frame = [UInt8](repeating: 0, count: max(60, 42 + size))
        frame.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            dstMAC.store(to: p)
            srcMAC.store(to: p + 6)
            p.storeBytes(of: UInt16(0x0800).bigEndian, toByteOffset: 12, as: UInt16.self)
            let ip = p + 14
            ip.storeBytes(of: UInt8(0x45), as: UInt8.self)
            ip.storeBytes(of: UInt16(28 + size).bigEndian, toByteOffset: 2, as: UInt16.self)
            ip.storeBytes(of: UInt8(64), toByteOffset: 8, as: UInt8.self)
            ip.storeBytes(of: UInt8(17), toByteOffset: 9, as: UInt8.self)
            srcIP.store(to: ip + 12)
            dst.store(to: ip + 16)
            var sum: UInt32 = 0
            for i in stride(from: 0, to: 20, by: 2) { sum += UInt32(ip.load(fromByteOffset: i, as: UInt8.self)) << 8 | UInt32(ip.load(fromByteOffset: i + 1, as: UInt8.self)) }
            while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
            ip.storeBytes(of: (~UInt16(sum)).bigEndian, toByteOffset: 10, as: UInt16.self)
            let udp = p + 34
            udp.storeBytes(of: UInt16(40001).bigEndian, as: UInt16.self)
            udp.storeBytes(of: dport.bigEndian, toByteOffset: 2, as: UInt16.self)
            udp.storeBytes(of: UInt16(8 + size).bigEndian, toByteOffset: 4, as: UInt16.self)
        }
        // pps=N paces the sender (N datagrams per second); without it, as fast as the ring takes them.
        let pps = Double(arg("pps") ?? "0") ?? 0
        var sent = 0
        let start = MonotonicClock.nanoseconds()
        let end = start + UInt64(seconds * 1e9)
        frame.withUnsafeBytes { f in
            while seconds > 0 ? MonotonicClock.nanoseconds() < end : sent < count {
                while !front.transmit(f) {
                    front.flush()
                    _ = front.poll(timeoutNs: 1_000_000) { _ in }
                }
                sent += 1
                if sent % 32 == 0 || seconds == 0 { front.flush() }
                if pps > 0, sent % 32 == 0 {
                    let due = start + UInt64(Double(sent) / pps * 1e9), now = MonotonicClock.nanoseconds()
                    if due > now { usleep(UInt32((due - now) / 1000)) }
                }
            }
            front.flush()
        }
        // Let the ring drain before saying so.
        _ = front.poll(timeoutNs: 200_000_000) { _ in }
        say("net-send: sent \(sent) from \(srcMAC) \(srcIP) to \(dst):\(dport)")
        while arg("stay") == "1" { _ = stack.poll(timeoutNs: 1_000_000_000) }
        front.close(timeout: 5)
        domain.shutdown(.poweroff)

    case "net-sink":
        guard let (front, stack) = connect() else { domain.shutdown(.crash) }
        let port = UInt16(arg("port") ?? "9") ?? 9
        let socket: UDPSocket
        do { socket = try stack.udpSocket(port: port) } catch { say("net-sink: \(error)"); domain.shutdown(.crash) }
        say("net-sink: listening on \(stack.config.address):\(port)")
        var counts: [IPv4Address: (n: Int, bytes: Int, first: UInt64, last: UInt64)] = [:]
        var lastReport: UInt64 = 0
        while !front.isClosed {
            if let (data, from, _) = try? socket.receive(timeout: 0.05) {
                let now = MonotonicClock.nanoseconds()
                var c = counts[from] ?? (0, 0, now, now)
                c.n += 1
                c.bytes += data.count
                c.last = now
                counts[from] = c
            }
            let now = MonotonicClock.nanoseconds()
            if now - lastReport > 250_000_000 {
                lastReport = now
                for (ip, c) in counts.sorted(by: { $0.key < $1.key }) {
                    say("net-sink: from \(ip) datagrams=\(c.n) bytes=\(c.bytes) span_ms=\((c.last - c.first) / 1_000_000)")
                }
            }
        }
        domain.shutdown(.poweroff)

    case "net-hotplug":
        guard let target = arg("target").flatMap(IPv4Address.init) else { say("net-hotplug: give target="); domain.shutdown(.crash) }
        var connected: [UInt32: (Netfront, NetStack)] = [:]
        say("net-hotplug: waiting for vifs")
        while true {
            for devid in (try? Netfront.devices(domain: domain)) ?? [] where connected[devid] == nil {
                guard let c = connect(devid) else { continue }
                connected[devid] = c
                say("net-hotplug: vif \(devid) connected as \(c.1.config.address) mac \(c.0.mac)")
                // The target may be busy with other traffic (a frame can be dropped on the way):
                // up to five echo requests.
                var result = "failed"
                for seq in 1...5 {
                    do {
                        let rtt = try c.1.ping(target, sequence: UInt16(seq), timeout: 3)
                        result = "ok rtt_us=\(Int(rtt * 1e6))"
                        break
                    } catch {
                        result = "failed: \(error)"
                    }
                }
                say("net-hotplug: vif \(devid) ping \(target) \(result)")
            }
            for (devid, c) in connected {
                _ = c.1.poll(timeoutNs: 0)
                if c.0.isClosed {
                    say("net-hotplug: vif \(devid) closed by the backend")
                    connected[devid] = nil
                }
            }
            usleep(50_000)
        }

    case "net-hostile":
        hostile(domain, say: say, arg: arg)

    default:
        return false
    }
    return true
}

/// A frontend that talks netif by hand: every malformed request must come back
/// NETIF_RSP_ERROR (and netback must keep serving everyone else).
private func hostile(_ domain: Domain, say: (String) -> Void, arg: (String) -> String?) -> Never {
    let xs = domain.store, gt = domain.grantTable, ev = domain.eventChannels
    let fdir = "device/vif/0"
    do {
        guard let bdir = try? xs.read(fdir + "/backend"), let beText = try? xs.read(fdir + "/backend-id"), let be = UInt16(beText),
              let macText = try? xs.read(fdir + "/mac"), let mac = MACAddress(macText) else {
            say("net-hostile: no vif 0")
            domain.shutdown(.crash)
        }
        try xs.write(fdir + "/state", XenbusState.initialising.storeValue)
        var waited = 0
        while (try? xs.read(bdir + "/state")) != XenbusState.initWait.storeValue && waited < 400 { usleep(50_000); waited += 1 }
        let txPage = try gt.allocatePage(), rxPage = try gt.allocatePage(), data = try gt.allocatePage()
        let tx = FrontRing(page: txPage.base, layout: RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize))
        _ = FrontRing(page: rxPage.base, layout: RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize))
        let txRef = try gt.grantAccess(txPage, to: be), rxRef = try gt.grantAccess(rxPage, to: be)
        let dataRef = try gt.grantAccess(data, to: be, readonly: true)
        let port = try ev.allocUnbound(remote: be)
        for (k, v) in [("tx-ring-ref", "\(txRef)"), ("rx-ring-ref", "\(rxRef)"), ("event-channel", "\(port)"), ("request-rx-copy", "1"),
                       ("feature-rx-notify", "1"), ("feature-sg", "1")] {
            try xs.write(fdir + "/" + k, v)
        }
        try xs.write(fdir + "/state", XenbusState.initialised.storeValue)
        waited = 0
        while (try? xs.read(bdir + "/state")) != XenbusState.connected.storeValue && waited < 400 { usleep(50_000); waited += 1 }
        while !ev.isConnected(port) { usleep(1000) }
        try xs.write(fdir + "/state", XenbusState.connected.storeValue)
        say("net-hostile: connected to \(bdir)")
        // A broadcast ARP-sized frame from our own MAC in the data page.
        MACAddress.broadcast.store(to: data.base)
        mac.store(to: data.base + 6)
        data.base.storeBytes(of: UInt16(0x88B5).bigEndian, toByteOffset: 12, as: UInt16.self)  // local experimental ethertype

        var nextID: UInt16 = 0
        /// Puts a chain on the ring and returns the statuses of its responses.
        func send(_ reqs: [NetifTxRequest], extras: [Int: NetifExtraInfo] = [:]) -> [Int16] {
            var slots = 0
            for (i, r) in reqs.enumerated() {
                guard let s = tx.nextRequest() else { break }
                var r = r
                r.id = nextID
                nextID &+= 1
                r.store(to: s)
                slots += 1
                if let e = extras[i], let s2 = tx.nextRequest() {
                    e.store(to: s2)
                    slots += 1
                }
            }
            if tx.pushRequests() { try? ev.send(port) }
            var out: [Int16] = []
            let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
            while out.count < slots && MonotonicClock.nanoseconds() < deadline {
                if let p = try? tx.takeResponse() {
                    out.append(NetifTxResponse(loading: p).status)
                } else {
                    try? ev.send(port)
                    usleep(1000)
                }
            }
            return out
        }
        func report(_ name: String, _ statuses: [Int16]) {
            let text = statuses.map { $0 == Netif.rspOkay ? "OKAY" : $0 == Netif.rspError ? "ERROR" : $0 == Netif.rspNull ? "NULL" : "\($0)" }
            say("net-hostile: \(name) -> \(text.joined(separator: ","))")
        }
        let ok = NetifTxRequest(gref: dataRef, offset: 0, flags: 0, id: 0, size: 60)
        report("good", send([ok]))
        report("size-0", send([NetifTxRequest(gref: dataRef, offset: 0, flags: 0, id: 0, size: 0)]))
        report("size-past-64k", send([NetifTxRequest(gref: dataRef, offset: 0, flags: Netif.txMoreData, id: 0, size: 65535),
                                      NetifTxRequest(gref: dataRef, offset: 0, flags: 0, id: 0, size: 4096)]))
        report("past-page", send([NetifTxRequest(gref: dataRef, offset: 4000, flags: 0, id: 0, size: 200)]))
        let long = (0..<19).map { i in NetifTxRequest(gref: dataRef, offset: 0, flags: i < 18 ? Netif.txMoreData : 0, id: 0, size: i == 0 ? 1900 : 100) }
        report("19-slots", send(long))
        report("bad-extra", send([NetifTxRequest(gref: dataRef, offset: 0, flags: Netif.txExtraInfo, id: 0, size: 60)],
                                 extras: [0: NetifExtraInfo(type: 9, flags: 0)]))
        report("ungranted-gref", send([NetifTxRequest(gref: 7777, offset: 0, flags: 0, id: 0, size: 60)]))
        report("good-again", send([ok]))
        if arg("corrupt-after-restart") == "1" {
            // The backend dies (the test kills it); while a new incarnation takes over, the tx
            // producer index becomes impossible: the new one must refuse this vif alone.
            say("net-hostile: waiting for the backend to go")
            while ev.isConnected(port) { usleep(1000) }
            txPage.base.storeBytes(of: UInt32(5000), as: UInt32.self)
            waited = 0
            while (try? xs.read(bdir + "/state")) != XenbusState.closed.storeValue && waited < 400 { usleep(50_000); waited += 1 }
            say("net-hostile: after corruption during the restart: backend state \((try? xs.read(bdir + "/state")) ?? "gone")")
            while true { sleep(1) }
        }
        // Flood: broadcasts as fast as the ring takes them; our rx ring never gets a page.
        let flood = Int(arg("flood") ?? "20000") ?? 20000
        var sent = 0, errors = 0
        while sent < flood {
            while !tx.isFull && sent < flood {
                var r = ok
                r.id = nextID
                nextID &+= 1
                r.store(to: tx.nextRequest()!)
                sent += 1
            }
            if tx.pushRequests() { try? ev.send(port) }
            while let p = try? tx.takeResponse() { if NetifTxResponse(loading: p).status != Netif.rspOkay { errors += 1 } }
            if tx.isFull { usleep(100) }
        }
        say("net-hostile: flooded \(sent) broadcasts (\(errors) errors)")
        while true { sleep(1) }
    } catch {
        say("net-hostile: \(error)")
        domain.shutdown(.crash)
    }
}

// Hypercall protocol modes: a guest writing raw requests on its hypercall socket.
//   hc-forms   sends every malformed or invalid form of every operation, each with a sequence
//              number of its own, then counts the replies that come back for each: the
//              supervisor must answer each request exactly once (a multicall's inner calls never
//              on their own). Prints `hc NAME replies=N rc=R` per form, then `hc done forms=N`.
import DomainRuntime
import Glibc
import LinuxHost
import ProcvisorABI

/// One request as a domain may send it, with the sequence numbers of the calls it nests
/// (which must never get a reply of their own).
struct HypercallForm {
    var name: String
    var bytes: [UInt8]
    var seq: UInt64
    var nested: [UInt64] = []
}

func hypercallForms(base: UInt64) -> [HypercallForm] {
    var forms: [HypercallForm] = []
    var next = base
    func seq() -> UInt64 { next += 1; return next }
    func add(_ name: String, _ op: UInt32, _ args: [UInt64] = [], payload: [UInt8] = []) {
        let s = seq()
        forms.append(HypercallForm(name: name, bytes: HypercallRequest(op: op, seq: s, args: args, payload: payload).encode(), seq: s))
    }
    func add(_ name: String, _ op: HypercallOp, _ args: [UInt64] = [], payload: [UInt8] = []) {
        add(name, op.rawValue, args, payload: payload)
    }
    func multicall(_ name: String, _ inner: [(UInt32, [UInt64], [UInt8])]) {
        let s = seq()
        let calls = inner.map { HypercallRequest(op: $0.0, seq: seq(), args: $0.1, payload: $0.2) }
        let bytes = HypercallRequest(.multicall, seq: s, payload: Multicall.encode(calls)).encode()
        forms.append(HypercallForm(name: name, bytes: bytes, seq: s, nested: calls.map(\.seq)))
    }

    // Requests that cannot be read at all (the sequence number still can).
    var short = HypercallRequest(.xenVersion, seq: 0).encode()
    let shortSeq = seq()
    withUnsafeBytes(of: shortSeq.littleEndian) { short.replaceSubrange(8..<16, with: $0) }
    forms.append(HypercallForm(name: "short-header", bytes: Array(short.prefix(20)), seq: shortSeq))
    var lying = HypercallRequest(.consoleIO, seq: 0, args: [0, 10], payload: [UInt8](repeating: 65, count: 10)).encode()
    let lyingSeq = seq()
    withUnsafeBytes(of: lyingSeq.littleEndian) { lying.replaceSubrange(8..<16, with: $0) }
    withUnsafeBytes(of: UInt32(100).littleEndian) { lying.replaceSubrange(4..<8, with: $0) }
    forms.append(HypercallForm(name: "payload-length-lies", bytes: lying, seq: lyingSeq))
    add("unknown-op", 0x7777)

    // Each operation with arguments it refuses or a payload it cannot read.
    add("bootstrap-again", .bootstrap)
    add("engaged-again", .engaged)
    add("xen-version-unknown-cmd", .xenVersion, [99])
    add("console-io-unknown-cmd", .consoleIO, [7])
    add("console-io-length-mismatch", .consoleIO, [ConsoleIOCmd.write.rawValue, 50], payload: [UInt8](repeating: 65, count: 10))
    add("vcpu-op-unknown-cmd", .vcpuOp, [99])
    add("vcpu-op-no-such-vcpu", .vcpuOp, [VCPUOp.isUp.rawValue, 9999])
    add("sched-op-unknown-cmd", .schedOp, [99])
    add("sched-op-bad-shutdown-reason", .schedOp, [SchedOp.shutdown.rawValue, 77])
    add("evtchn-op-unknown-cmd", .eventChannelOp, [99])
    add("evtchn-op-close-bad-port", .eventChannelOp, [EvtchnOp.close.rawValue, 0])
    add("evtchn-op-bind-unknown-domain", .eventChannelOp, [EvtchnOp.bindInterdomain.rawValue, 0x7000, 1])
    add("memory-op-unknown-cmd", .memoryOp, [99])
    add("memory-op-foreign-domain", .memoryOp, [XenMemOp.currentReservation.rawValue, 0x7000])
    add("memory-op-ragged-extents", .memoryOp, [XenMemOp.populatePhysmap.rawValue], payload: [UInt8](repeating: 0, count: 7))
    add("memory-op-too-many-extents", .memoryOp, [XenMemOp.decreaseReservation.rawValue],
        payload: [UInt8](repeating: 0, count: 8 * (XenMemOp.maxExtents + 1)))
    add("gnttab-op-unknown-cmd", .grantTableOp, [99])
    add("gnttab-op-setup-zero-frames", .grantTableOp, [GnttabOp.setupTable.rawValue, 0])
    add("gnttab-op-map-empty", .grantTableOp, [GnttabOp.mapGrantRef.rawValue])
    add("gnttab-op-map-garbage", .grantTableOp, [GnttabOp.mapGrantRef.rawValue], payload: [1, 2, 3, 4, 5])
    add("gnttab-op-unmap-ragged", .grantTableOp, [GnttabOp.unmapGrantRef.rawValue], payload: [1, 2, 3])
    add("gnttab-op-unmap-too-many", .grantTableOp, [GnttabOp.unmapGrantRef.rawValue], payload: [UInt8](repeating: 0, count: 4 * 65))
    add("gnttab-op-copy-empty", .grantTableOp, [GnttabOp.copy.rawValue])
    add("gnttab-op-copy-garbage", .grantTableOp, [GnttabOp.copy.rawValue], payload: [1, 2, 3, 4, 5])
    add("alloc-grant-pages-zero", .allocGrantPages, [0])
    add("alloc-grant-pages-too-many", .allocGrantPages, [1000, 1])
    add("free-grant-page-unknown", .freeGrantPage, [12345])
    add("reback-grant-pages-empty", .rebackGrantPages)
    add("reback-grant-pages-ragged", .rebackGrantPages, payload: [UInt8](repeating: 0, count: 7))
    add("reback-grant-pages-too-many", .rebackGrantPages, payload: [UInt8](repeating: 0, count: 8 * 17))
    add("device-fd-unknown-kind", .deviceFD, [99, 1, 0])
    add("device-fd-vif", .deviceFD, [DeviceKind.vif.rawValue, 1, 0])
    add("device-fd-vbd-not-served", .deviceFD, [DeviceKind.vbd.rawValue, 1, 51712])
    add("multicall-garbage", .multicall, payload: [1, 2, 3])
    add("multicall-too-many-entries", .multicall, payload: [0xff, 0xff, 0, 0])
    multicall("multicall-nested-malformed", [
        (HypercallOp.grantTableOp.rawValue, [GnttabOp.unmapGrantRef.rawValue], [1, 2, 3]),
        (HypercallOp.memoryOp.rawValue, [XenMemOp.populatePhysmap.rawValue], [1]),
        (HypercallOp.xenVersion.rawValue, [XenVersionCmd.version.rawValue], []),
    ])
    multicall("multicall-nested-refused", [
        (HypercallOp.multicall.rawValue, [], []),
        (HypercallOp.schedOp.rawValue, [SchedOp.block.rawValue, 0], []),
        (HypercallOp.grantTableOp.rawValue, [GnttabOp.mapGrantRef.rawValue], []),
        (HypercallOp.eventChannelOp.rawValue, [EvtchnOp.bindInterdomain.rawValue, 0, 1], []),
        (HypercallOp.allocGrantPages.rawValue, [1], []),
        (HypercallOp.bootstrap.rawValue, [], []),
        (0x7777, [], []),
    ])
    return forms
}

/// Sends each form and counts the replies for it; the last request of all is a plain
/// `xen_version`, whose reply marks the end (the supervisor answers in order).
func runHypercallForms() {
    let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
    let forms = hypercallForms(base: 1 << 40)
    let endSeq: UInt64 = (1 << 40) - 1
    for form in forms {
        do {
            _ = try UnixSocket.send(fd, form.bytes)
        } catch {
            print("hc \(form.name): send failed: \(error)")
        }
    }
    _ = try? UnixSocket.send(fd, HypercallRequest(.xenVersion, seq: endSeq, args: [XenVersionCmd.version.rawValue]).encode())
    var replies: [UInt64: [Int64]] = [:]
    var stray = 0
    while true {
        guard let m = try? UnixSocket.receive(fd, maxSize: HypercallRequest.maxMessageSize), let reply = try? HypercallReply.decode(m.bytes) else {
            print("hc channel closed")
            break
        }
        m.fds.forEach { $0.close() }
        if reply.seq == endSeq { break }
        if reply.seq < 1 << 40 { stray += 1 }
        replies[reply.seq, default: []].append(reply.rc)
    }
    // Whatever a buggy supervisor might still send after the end marker.
    usleep(200_000)
    while let m = try? UnixSocket.receive(fd, maxSize: HypercallRequest.maxMessageSize, nonBlocking: true),
          let reply = try? HypercallReply.decode(m.bytes) {
        m.fds.forEach { $0.close() }
        replies[reply.seq, default: []].append(reply.rc)
    }
    for form in forms {
        let got = replies[form.seq] ?? []
        let nested = form.nested.reduce(0) { $0 + (replies[$1]?.count ?? 0) }
        print("hc \(form.name): replies=\(got.count) nested=\(nested) rc=\(got.first.map(String.init) ?? "none")")
    }
    print("hc done forms=\(forms.count) stray=\(stray)")
    fflush(stdout)
}

/// `hc-overflow`: numbers at the ends of their ranges, and more of a waiting call than a domain
/// can use, none of which may crash or wedge the supervisor: `set_timer_op` at the last
/// nanosecond there is, a hundred `SCHEDOP_block` calls that would wait centuries, twenty reports
/// of a forbidden system call numbered past 32 bits. Prints `hc-overflow timer rc=R
/// blocks-refused=N blocks-waiting=W reports-answered=A reports-rc=R2`, then `hc-overflow done`.
func runHypercallOverflow() {
    let fd = FileDescriptor(rawValue: BootstrapFD.hypercall)
    var next: UInt64 = 2 << 40
    func send(_ op: HypercallOp, _ args: [UInt64]) -> UInt64 {
        next += 1
        _ = try? UnixSocket.send(fd, HypercallRequest(op, seq: next, args: args).encode())
        return next
    }
    let timer = send(.setTimerOp, [UInt64.max])
    let blocks = Set((0..<100).map { _ in send(.schedOp, [SchedOp.block.rawValue, UInt64.max - 1]) })
    let reports = Set((0..<20).map { _ in send(.seccompViolation, [1 << 32]) })
    let end = send(.xenVersion, [XenVersionCmd.version.rawValue])
    var replies: [UInt64: Int64] = [:]
    while true {
        guard let m = try? UnixSocket.receive(fd, maxSize: HypercallRequest.maxMessageSize), let reply = try? HypercallReply.decode(m.bytes) else {
            print("hc-overflow: channel closed")
            break
        }
        m.fds.forEach { $0.close() }
        if reply.seq == end { break }
        replies[reply.seq] = reply.rc
    }
    let refused = blocks.filter { replies[$0] == -Int64(XenErrno.EBUSY.rawValue) }.count
    let waiting = blocks.filter { replies[$0] == nil }.count
    let answered = reports.filter { replies[$0] != nil }
    let reportRCs = Set(answered.compactMap { replies[$0] }).sorted()
    print("hc-overflow timer rc=\(replies[timer].map(String.init) ?? "none") blocks-refused=\(refused) blocks-waiting=\(waiting) "
          + "reports-answered=\(answered.count) reports-rc=\(reportRCs.map(String.init).joined(separator: ","))")
    print("hc-overflow done")
    fflush(stdout)
}

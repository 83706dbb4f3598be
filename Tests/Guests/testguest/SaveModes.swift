import DomainRuntime
import Glibc
import LinuxHost

/// Guests for Tests/IntegrationTests/SaveRestoreTests.swift. Each says on its console what it
/// found, so a test reads the outcome.

private func say(_ s: String) {
    print(s)
    fflush(stdout)
}

/// A state block kept in pseudo-physical page 3, and pages 16..<16+checkedPages filled with a
/// pattern of their pfn: what a restore must bring back exactly.
private let statePFN = 3
private let magic: UInt64 = 0x5052_4f43_5649_5352  // "PROCVISR"
private let firstChecked = 16
private let checkedPages = 512

private func pattern(_ pfn: Int, _ word: Int) -> UInt64 { UInt64(pfn) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(word) }

func runSaveMode(_ mode: String, _ domain: Domain) -> Bool {
    switch mode {
    case "ram-counter":
        let mem = domain.memory
        let state = mem.base + statePFN * 4096
        if state.load(as: UInt64.self) != magic {
            // A fresh boot: the RAM is zero. Fill the checked pages and the state block.
            for pfn in firstChecked..<(firstChecked + checkedPages) {
                let page = mem.base + pfn * 4096
                for w in 0..<512 { page.storeBytes(of: pattern(pfn, w), toByteOffset: w * 8, as: UInt64.self) }
            }
            state.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
            state.storeBytes(of: magic, as: UInt64.self)
            try? domain.store.write("data/boot-marker", "booted-as-dom\(domain.domid)")
        }
        let counter = (state + 8).assumingMemoryBound(to: UInt64.self)
        let record = domain.resumeRecord.map { String(decoding: $0, as: UTF8.self) } ?? "none"
        if domain.isResumed {
            var bad: Int?
            for pfn in firstChecked..<(firstChecked + checkedPages) where bad == nil {
                let page = mem.base + pfn * 4096
                for w in 0..<512 where page.load(fromByteOffset: w * 8, as: UInt64.self) != pattern(pfn, w) { bad = pfn; break }
            }
            say(bad.map { "ram-check FAILED at pfn \($0)" } ?? "ram-check ok (\(checkedPages) pages)")
            say("data/boot-marker=\((try? domain.store.read("data/boot-marker")) ?? "missing")")
        }
        say("ram-counter: \(domain.isResumed ? "resumed" : "booted") counter=\(counter.pointee) record=\(record)")
        // The suspend hook quiesces the counting vCPU (as a guest quiesces its work before a
        // save), so the counter the record names is the one the RAM holds.
        let hold = UnsafeMutablePointer<UInt32>.allocate(capacity: 2)
        hold.initialize(repeating: 0, count: 2)  // [0]: asked to hold, [1]: holding
        domain.setResumeRecord { Array("counter=\(counter.pointee)".utf8) }
        domain.addSuspendHook {
            SharedAtomic.store(hold, 1)
            while SharedAtomic.load(hold + 1) == 0 { usleep(100) }
            say("ram-counter: suspend hook at counter=\(counter.pointee)")
        }
        domain.addResumeHook {
            say("ram-counter: resumed in place at counter=\(counter.pointee)")
            SharedAtomic.store(hold + 1, 0)
            SharedAtomic.store(hold, 0)
        }
        domain.startVCPU(1) { _ in
            while true {
                if SharedAtomic.load(hold) != 0 {
                    SharedAtomic.store(hold + 1, 1)
                    while SharedAtomic.load(hold) != 0 { usleep(100) }
                }
                counter.pointee += 1
                if counter.pointee % 50 == 0 { say("ram-counter: counter=\(counter.pointee)") }
                usleep(2000)
            }
        }
        while true { domain.block() }
    case "suspend-ignore":
        domain.onShutdownRequest { reason in say("ignoring \(reason.name) request") }
        say("ignoring every request")
        while true { domain.block() }
    case "suspend-deaf":
        // Its watch thread never comes back from a callback: control/shutdown is never read, so
        // the suspend request is never acknowledged (a guest without PV control, for libxl). It
        // takes its suspend event channel back first (from the watch thread, after the runtime
        // published it there), so the request goes through control/shutdown.
        try? domain.store.write("data/deaf", "1")
        try? domain.store.watch("data/deaf", token: "deaf") { _ in
            try? domain.store.write("device/suspend/event-channel", "")
            say("suspend event channel withdrawn")
            while true { sleep(1) }
        }
        say("deaf to the toolstack")
        while true { domain.block() }
    case "suspend-deaf-evtchn":
        // Deaf the same way, but it keeps its suspend event channel: the signal arrives and is
        // never taken (taking it is done on the watch thread), so it is never acknowledged.
        try? domain.store.write("data/deaf", "1")
        try? domain.store.watch("data/deaf", token: "deaf") { _ in
            say("deaf, with its suspend event channel")
            while true { sleep(1) }
        }
        while true { domain.block() }
    case "suspend-crash":
        domain.onShutdownRequest { reason in
            say("crashing on \(reason.name)")
            domain.shutdown(.crash)
        }
        say("will crash when asked to suspend")
        while true { domain.block() }
    default:
        return false
    }
}

import Glibc
import LinuxHost

/// `--dirty-writer [--guest-policy]`: the domain's half of live migration's write tracking, for
/// Tests/LinuxHostTests/WriteTrackingTests.swift, started outside any supervisor (by
/// `Spawner.spawn`, under the guest bound, as another uid without capabilities). With
/// `--guest-policy` it first engages the guest allow-list, as `Domain.start()` does, so the
/// registration runs under both filters a domain has.
///
/// fd 3 is the RAM memfd: mapped shared read-write whole and registered with
/// `WriteTracking.register`. Then one line per command on fd 0, one reply line on fd 1:
/// - start-up: `ready BASE` (hex address of the mapping) or `error TEXT`;
/// - `w P1 P2 …`: adds 1 to the first byte of each page Pn (decimal page numbers) → `ok`;
/// - `r P1 P2 …`: reads the first byte of each page → `ok SUM`;
/// - `stop`: `WriteTracking.stop()` (closes the userfaultfd) → `ok`;
/// - end of input: exits 0.
func runDirtyWriterMode(_ args: [String]) -> Bool {
    guard args.first == "--dirty-writer" else { return false }
    func reply(_ s: String) {
        try? FileDescriptor.standardOutput.writeAll(s + "\n")
    }
    if args.contains("--guest-policy") {
        do { try SeccompPolicies.guest.compile(threadSync: true).load() } catch {
            reply("error engaging the guest allow-list: \(error)")
            exit(3)
        }
    }
    let ram = FileDescriptor(rawValue: 3)
    let base: UnsafeMutableRawPointer
    let length: Int
    do {
        length = Int(try FileStatus(ram).size)
        base = try SharedMapping.map(ram, length: length).get()
        try WriteTracking.register(base: base, length: length)
    } catch {
        reply("error \(error)")
        exit(4)
    }
    reply("ready \(String(UInt(bitPattern: base), radix: 16))")
    var pending: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    let pages = length / 4096
    while true {
        guard let newline = pending.firstIndex(of: 0x0A) else {
            let n = chunk.withUnsafeMutableBytes { (try? FileDescriptor.standardInput.read(into: $0)) ?? 0 }
            if n == 0 { exit(0) }
            pending += chunk[0..<n]
            continue
        }
        let line = String(decoding: pending[..<newline], as: UTF8.self)
        pending.removeSubrange(...newline)
        let words = line.split(separator: " ")
        let numbers = words.dropFirst().compactMap { Int($0) }.filter { $0 >= 0 && $0 < pages }
        switch words.first {
        case "w":
            for p in numbers { base.storeBytes(of: base.load(fromByteOffset: p * 4096, as: UInt8.self) &+ 1, toByteOffset: p * 4096, as: UInt8.self) }
            reply("ok")
        case "r":
            var sum = 0
            for p in numbers { sum += Int(base.load(fromByteOffset: p * 4096, as: UInt8.self)) }
            reply("ok \(sum)")
        case "stop":
            WriteTracking.stop()
            reply("ok")
        default:
            reply("error unknown command \(line)")
        }
    }
}

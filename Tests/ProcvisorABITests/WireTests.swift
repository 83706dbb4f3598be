import ProcvisorABI
import Testing

/// Hypercall and start-info encodings, and their rejection of hostile bytes.
@Suite struct WireTests {
    @Test func hypercallRoundTrip() throws {
        let r = HypercallRequest(.consoleIO, seq: 9, args: [0, 3], payload: [65, 66, 67])
        let bytes = r.encode()
        #expect(bytes.count == HypercallRequest.headerSize + 3)
        #expect(Array(bytes[0..<4]) == [18, 0, 0, 0])  // __HYPERVISOR_console_io, little endian
        #expect(try HypercallRequest.decode(bytes) == r)
        let reply = HypercallReply(seq: 9, rc: -22, payload: [1])
        #expect(try HypercallReply.decode(reply.encode()) == reply)
    }

    @Test func hypercallRejectsLiesAndShortMessages() {
        var bytes = HypercallRequest(.xenVersion, seq: 1).encode()
        bytes[4] = 200  // claims a 200-byte payload that is not there
        #expect(throws: WireError.self) { try HypercallRequest.decode(bytes) }
        #expect(throws: WireError.self) { try HypercallRequest.decode([1, 2, 3]) }
        #expect(throws: WireError.self) { try HypercallRequest.decode([UInt8](repeating: 0, count: HypercallRequest.maxMessageSize + 1)) }
    }

    @Test func multicallLimitsItsEntries() throws {
        let calls = (0..<3).map { HypercallRequest(.schedOp, seq: UInt64($0), args: [0]) }
        #expect(try Multicall.decode(Multicall.encode(calls)) == calls)
        var w = WireWriter()
        w.u32(UInt32(Multicall.maxEntries + 1))
        #expect(throws: WireError.self) { try Multicall.decode(w.bytes) }
    }

    @Test func startInfoRoundTripAndMagic() throws {
        let s = StartInfo(domid: 7, name: "web", uuid: "u", memoryKB: 65536, maxMemoryKB: 131072, vcpus: 2, maxVCPUs: 4,
                          cmdline: "root=/dev/xvda1 quiet")
        #expect(try StartInfo.decode(s.encode()) == s)
        var bad = s.encode()
        bad[4] = UInt8(ascii: "X")
        #expect(throws: WireError.self) { try StartInfo.decode(bad) }
    }

    @Test func shutdownReasonLettersMatchXl() {
        #expect(ShutdownReason.allCases.map(\.letter) == ["-", "r", "s", "c", "w", "S"])
        #expect(ShutdownReason.crash.rawValue == 3)
    }
}

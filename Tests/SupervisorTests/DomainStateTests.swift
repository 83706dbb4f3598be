import Foundation
import ProcvisorABI
import Testing
import Toolstack
@testable import Supervisor

/// A domain's state is plain values: what a save file will carry. It survives an encoding
/// round trip whole, console history and config included.
@Suite struct DomainStateTests {
    @Test func theStateRoundTripsThroughItsEncoding() throws {
        var config = DomainConfig(name: "web", kernel: "/usr/lib/procvisor/web")
        config.memory = 48
        config.maxmem = 64
        config.vcpus = 2
        config.maxvcpus = 4
        var state = DomainState(domid: 7, name: "web", uuid: "6b1c1f52-0d6a-4a8e-9a57-3c1d2e4f5a6b", config: config,
                                startPaused: true, startTime: 1_765_000_000, quickRestarts: 1)
        state.phase = .shutdown
        state.paused = true
        state.shutdownReason = .crash
        state.crashReason = "forbidden system call ptrace"
        state.malformedHypercalls = 3
        state.finalCPUTimeNs = 123_456_789
        state.console.append(Array("booting\nready\n".utf8)[...])
        let bytes = try JSONEncoder().encode(state)
        let back = try JSONDecoder().decode(DomainState.self, from: bytes)
        #expect(back == state)
        #expect(back.console.contents == Array("booting\nready\n".utf8))
        #expect(back.config.maxvcpus == 4 && back.phase == .shutdown && back.shutdownReason == .crash)
    }

    @Test func aFullConsoleKeepsItsNewestBytesAcrossTheRoundTrip() throws {
        var ring = ConsoleRing(capacity: 8)
        ring.append(Array("0123456789abc".utf8)[...])
        ring.append(Array("XY".utf8)[...])
        let back = try JSONDecoder().decode(ConsoleRing.self, from: try JSONEncoder().encode(ring))
        #expect(back.contents == Array("6789abcXY".utf8.suffix(8)))
        var grown = back
        grown.append(Array("Z".utf8)[...])
        #expect(grown.contents == Array("789abcXYZ".utf8.suffix(8)))
    }
}

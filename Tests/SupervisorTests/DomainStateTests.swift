import Foundation
import Glibc
import LinuxHost
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

/// The domain table on its own: Xen's domid rover, lookups as xl resolves a DOMAIN argument,
/// and the process index a reaped child is found by.
@Suite struct DomainTableTests {
    static func record(_ domid: DomID, _ name: String, pid: pid_t) throws -> DomainRecord {
        let state = DomainState(domid: domid, name: name, uuid: "u\(domid)", config: DomainConfig(name: name, kernel: "/bin/true"),
                                startPaused: false, startTime: 0, quickRestarts: 0)
        // The table never touches a domain's descriptors: none are opened (nothing to leak).
        let none = FileDescriptor(rawValue: -1)
        return DomainRecord(state: state, process: DomainProcess(pid: pid, hypercallFD: none, eventFD: none, consoleOutFD: none, consoleInFD: none))
    }

    @Test func theRoverSkipsTakenDomidsAndWrapsBelowTheReservedRange() throws {
        let t = DomainTable()
        #expect(t.allocateDomid() == 1)
        t.insert(try Self.record(2, "two", pid: 0))
        #expect(t.allocateDomid() == 3, "a taken domid is skipped")
        for _ in 4..<Int(DomainTable.domidFirstReserved.rawValue) { _ = t.allocateDomid() }
        #expect(t.allocateDomid() == 1, "the rover wraps to 1, never 0 or a reserved domid")
        #expect(t.allocateDomid() == 3)
    }

    @Test func aDomainArgumentIsADomidWhenAllDigitsElseAName() throws {
        let t = DomainTable()
        let a = try Self.record(5, "12", pid: 0), b = try Self.record(12, "web", pid: 0)
        t.insert(a)
        t.insert(b)
        #expect(t.find("12") === b, "all digits: a domid, even where a domain is named so")
        #expect(t.find("web") === b && t.named("12") === a)
        #expect(t.find("") == nil && t.find("+5") == nil && t.find("99") == nil)
        #expect(t.domids == [5, 12])
    }

    @Test func aReapedPidFindsItsDomainOnce() throws {
        let t = DomainTable()
        let d = try Self.record(3, "g", pid: 4242)
        t.insert(d)
        #expect(t.reaped(4242) === d)
        #expect(t.reaped(4242) == nil)
        t.remove(d)
        #expect(t[3] == nil && t.count == 0)
    }
}

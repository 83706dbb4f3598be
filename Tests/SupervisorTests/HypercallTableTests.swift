import Foundation
import LinuxHost
import Logging
import ProcvisorABI
import Testing
import Toolstack
@testable import Supervisor

/// The hypercall table and its dispatcher on their own: a supervisor that is built but never
/// started (no socket, no event loop running, no domain process), one domain record whose "process"
/// is a pid no process can have (above the kernel's PID_MAX_LIMIT), with RAM and channels from the
/// real services. What the table allows in which phase, what a multicall may carry, and how
/// malformed entries count toward the limit.
@Suite(.serialized) struct HypercallTableTests {
    static let impossiblePid: Int32 = 0x7FFF_FFF0

    final class Fixture {
        let supervisor: Supervisor
        let dom: DomainRecord
        let runDir: String
        private let ends: [FileDescriptor]

        init(malformedLimit: Int = 16) throws {
            runDir = NSTemporaryDirectory() + "pv-table-\(UInt32.random(in: 0...UInt32.max))"
            let options = SupervisorOptions(environment: ["PROCVISOR_RUNDIR": runDir, "PROCVISOR_MEMORY_MB": "64",
                                                          "PROCVISOR_MALFORMED_HYPERCALL_LIMIT": "\(malformedLimit)"], uid: 0)
            supervisor = try Supervisor(options: options, logger: Logger(label: "test"))
            let (a, b) = try UnixSocket.pair()
            let (c, d) = try UnixSocket.pair()
            ends = [a, b, c, d]
            var config = DomainConfig(name: "g", kernel: "/bin/true")
            config.memory = 4
            config.maxmem = 8
            let state = DomainState(domid: 1, name: "g", uuid: "u1", config: config, startPaused: false, startTime: 0, quickRestarts: 0)
            dom = DomainRecord(state: state, process: DomainProcess(pid: HypercallTableTests.impossiblePid, hypercallFD: a,
                                                                     eventFD: c, consoleOutFD: b, consoleInFD: d))
            _ = try supervisor.machine.createDomain(1, spanPages: 8 * 256, populatedPages: 4 * 256)
            try supervisor.eventChannels.open(1, maxVCPUs: 1)
            supervisor.domains.insert(dom)
            dom.phase = .running
        }

        deinit {
            ends.forEach { $0.close() }
            try? FileManager.default.removeItem(atPath: runDir)
        }

        func call(_ op: HypercallOp, _ args: [UInt64], payload: [UInt8] = [], seq: UInt64 = 1) -> HypercallRequest {
            HypercallRequest(op: op.rawValue, seq: seq, args: args, payload: payload)
        }

        func rc(_ r: HypercallRequest) -> Int64? {
            if case let .reply(rc, _, _, _) = supervisor.dispatch(dom, r) { return rc }
            return nil
        }
    }

    @Test func everyOperationHasARow() {
        for op in HypercallOp.allCases { #expect(Supervisor.hypercallTable[op] != nil, "\(op) has no row") }
    }

    @Test func unknownOperationsAreENOSYSAndWrongPhasesEPERM() throws {
        let f = try Fixture()
        #expect(f.rc(HypercallRequest(op: 0x7777, seq: 1)) == -XenErrno.ENOSYS.rawValue)
        #expect(f.rc(f.call(.xenVersion, [XenVersionCmd.version.rawValue])) == Int64(ProcvisorVersion.major << 16 | ProcvisorVersion.minor))
        // Boot-time operations are refused to a running domain, run-time ones to a booting one.
        #expect(f.rc(f.call(.bootstrap, [])) == -XenErrno.EPERM.rawValue)
        f.dom.phase = .booting
        #expect(f.rc(f.call(.xenVersion, [XenVersionCmd.version.rawValue])) == -XenErrno.EPERM.rawValue)
        #expect(f.rc(f.call(.memoryOp, [XenMemOp.currentReservation.rawValue, UInt64(DOMID_SELF.rawValue)])) == -XenErrno.EPERM.rawValue)
        f.dom.phase = .shutdown
        #expect(f.rc(f.call(.eventChannelOp, [EvtchnOp.bindIPI.rawValue, 0])) == -XenErrno.EPERM.rawValue)
    }

    @Test func aMulticallCarriesWhatItMayAndRefusesTheRest() throws {
        let f = try Fixture()
        let calls = [
            f.call(.xenVersion, [XenVersionCmd.version.rawValue], seq: 10),
            f.call(.eventChannelOp, [EvtchnOp.bindInterdomain.rawValue, 0, 1], seq: 11),  // hands back descriptors: refused
            f.call(.memoryOp, [XenMemOp.currentReservation.rawValue, UInt64(DOMID_SELF.rawValue)], seq: 12),
            f.call(.multicall, [], seq: 13),                                                // no multicall inside one
            f.call(.eventChannelOp, [EvtchnOp.bindIPI.rawValue, 0], seq: 14),              // allowed sub-operation
            f.call(.grantTableOp, [GnttabOp.setupTable.rawValue, 1], seq: 15),             // hands back the table: refused
        ]
        guard case let .reply(rc, payload, fds, _) = f.supervisor.dispatch(f.dom, f.call(.multicall, [], payload: Multicall.encode(calls))) else {
            Issue.record("the multicall did not reply")
            return
        }
        #expect(rc == 0 && fds.isEmpty)
        let results = try Multicall.decodeResults(payload)
        #expect(results.map(\.rc) == [Int64(ProcvisorVersion.major << 16 | ProcvisorVersion.minor), -XenErrno.EINVAL.rawValue,
                                      1024, -XenErrno.EINVAL.rawValue, 1, -XenErrno.EINVAL.rawValue])
    }

    @Test func malformedEntriesCountTowardTheLimitAndTheLastCrashes() throws {
        let f = try Fixture(malformedLimit: 3)
        let ragged = f.call(.memoryOp, [XenMemOp.populatePhysmap.rawValue], payload: [1, 2, 3])
        let two = Multicall.encode([ragged, f.call(.xenVersion, [XenVersionCmd.pagesize.rawValue]), ragged])
        guard case let .reply(_, payload, _, _) = f.supervisor.dispatch(f.dom, f.call(.multicall, [], payload: two)) else {
            Issue.record("the multicall did not reply")
            return
        }
        #expect(try Multicall.decodeResults(payload).map(\.rc) == [-XenErrno.EINVAL.rawValue, 4096, -XenErrno.EINVAL.rawValue])
        #expect(f.dom.malformedHypercalls == 2 && f.dom.phase == .running)
        // The third reaches the limit: the domain is crashed and the multicall gets no reply.
        guard case .deferred = f.supervisor.dispatch(f.dom, f.call(.multicall, [], payload: Multicall.encode([ragged]))) else {
            Issue.record("a multicall whose entry crashed the domain was answered")
            return
        }
        #expect(f.dom.phase == .shutdown && f.dom.shutdownReason == .crash)
        #expect(f.dom.crashReason?.contains("sent 3 malformed hypercalls") == true, "\(f.dom.crashReason ?? "")")
        // A crashed domain's further calls are refused by phase.
        #expect(f.rc(f.call(.xenVersion, [XenVersionCmd.version.rawValue])) == -XenErrno.EPERM.rawValue)
    }
}

import LinuxHost
import ProcvisorABI

/// What a hypercall handler decided. Handlers never send anything themselves: the dispatcher
/// turns the outcome into exactly one reply to the request, or none for `deferred` and `crash`.
enum HypercallOutcome {
    /// Answer with `rc` and `payload`; `fds` travel with the reply (SCM_RIGHTS). `owned` lists
    /// those among them made for this reply alone, closed once it is sent.
    case reply(rc: Int64, payload: [UInt8], fds: [FileDescriptor], owned: [FileDescriptor])
    /// No reply now. The handler kept the sequence number and answers later through
    /// `Supervisor.reply_` (SCHEDOP_block), or the operation has none by definition (the SIGSYS
    /// reporter's `seccompViolation`: its sender is on its way out).
    case deferred
    /// The request cannot be read as its operation: the domain gets EINVAL, and it counts toward
    /// the domain's malformed-hypercall limit (reaching it crashes the domain, with no reply).
    case malformed(String)
    /// The domain is crashed for this request, with this reason; no reply.
    case crash(String)

    static func ok(_ rc: Int64 = 0, _ payload: [UInt8] = [], fds: [FileDescriptor] = [], owned: [FileDescriptor] = []) -> Self {
        .reply(rc: rc, payload: payload, fds: fds, owned: owned)
    }

    static func error(_ e: XenErrno) -> Self { .reply(rc: -e.rawValue, payload: [], fds: [], owned: []) }
}

/// One row of the hypercall table: who may make the call, when, and who handles it.
struct HypercallRow {
    /// Whether a multicall may carry the operation: some sub-operations hand back descriptors
    /// or block, and a multicall's results carry neither.
    enum Multicall {
        case allowed
        case refused
        /// Allowed except for these sub-operations (`args[0]`).
        case refusedFor(Set<UInt64>)

        func allows(_ r: HypercallRequest) -> Bool {
            switch self {
            case .allowed: return true
            case .refused: return false
            case let .refusedFor(subops): return !subops.contains(r.args[0])
            }
        }
    }

    /// The domain phases in which the operation is allowed (EPERM otherwise).
    let phases: Set<DomainRecord.Phase>
    let multicall: Multicall
    let handle: (Supervisor, DomainRecord, HypercallRequest) -> HypercallOutcome
}

extension Supervisor {
    static let bootPhase: Set<DomainRecord.Phase> = [.booting]
    static let runPhase: Set<DomainRecord.Phase> = [.running]

    /// Every operation a domain may call, by `HypercallOp`. An operation not in the table is ENOSYS.
    static let hypercallTable: [HypercallOp: HypercallRow] = [
        .bootstrap: HypercallRow(phases: bootPhase, multicall: .refused) { $0.bootstrap($1, $2) },
        .engaged: HypercallRow(phases: bootPhase, multicall: .refused) { $0.engage($1, $2) },
        .seccompViolation: HypercallRow(phases: [.booting, .running], multicall: .refused) { $0.seccompViolation($1, $2) },
        .xenVersion: HypercallRow(phases: runPhase, multicall: .allowed) { _, _, r in xenVersion(r) },
        .consoleIO: HypercallRow(phases: runPhase, multicall: .allowed) { $0.consoleIO($1, $2) },
        .vcpuOp: HypercallRow(phases: runPhase, multicall: .allowed) { _, dom, r in vcpuOp(dom, r) },
        .schedOp: HypercallRow(phases: runPhase, multicall: .refusedFor([SchedOp.block.rawValue])) { $0.schedOp($1, $2) },
        .eventChannelOp: HypercallRow(phases: runPhase, multicall: .refusedFor([EvtchnOp.bindInterdomain.rawValue])) {
            $0.eventChannels.op($1.domid, $2)
        },
        .memoryOp: HypercallRow(phases: runPhase, multicall: .allowed) { $0.machine.op($1.domid, $2) },
        .grantTableOp: HypercallRow(phases: runPhase,
                                    multicall: .refusedFor([GnttabOp.setupTable.rawValue, GnttabOp.mapGrantRef.rawValue])) {
            $0.grantService.tableOp($1.domid, $2)
        },
        .allocGrantPages: HypercallRow(phases: runPhase, multicall: .refused) { $0.grantService.allocPages($1.domid, $2) },
        .freeGrantPage: HypercallRow(phases: runPhase, multicall: .allowed) { $0.grantService.freePage($1.domid, $2) },
        .rebackGrantPages: HypercallRow(phases: runPhase, multicall: .refused) { $0.grantService.reback($1.domid, $2) },
        .deviceFD: HypercallRow(phases: runPhase, multicall: .refused) { $0.deviceFD($1, $2) },
        .inflightLog: HypercallRow(phases: runPhase, multicall: .refused) { $0.inflightLog($1, $2) },
        .setTimerOp: HypercallRow(phases: runPhase, multicall: .allowed) { $0.setTimerOp($1, $2) },
        .multicall: HypercallRow(phases: runPhase, multicall: .refused) { $0.multicall($1, $2) },
    ]
}

import ProcvisorABI

/// Identifies one XenStore connection (a dom0 socket client or a domain's ring) to the engine.
public typealias XSConnectionID = Int

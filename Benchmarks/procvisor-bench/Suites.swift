enum Suites {
    static let all: [String: (Int) throws -> [Result]] = [
        "lifecycle": LifecycleSuite.run,
        "evtchn": EvtchnSuite.run,
        "grant": GrantSuite.run,
        "xenstore": XenStoreSuite.run,
        "blk": BlkSuite.run,
        "net": NetSuite.run,
        "migrate": MigrateSuite.run,
        "recovery": RecoverySuite.run,
        "sched": SchedSuite.run,
        "density": DensitySuite.run,
    ]
}

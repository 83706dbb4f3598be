// swift-tools-version:6.0
import PackageDescription

// Swift 5 language mode: the domain/supervisor code is built around one event loop per
// process and explicit threads for vCPUs; strict Sendable checking would force
// @unchecked annotations everywhere without adding safety.
let v5: [SwiftSetting] = [.swiftLanguageMode(.v5)]

let package = Package(
    name: "procvisor",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "xl", targets: ["xl"]),
        .executable(name: "procvisord", targets: ["procvisord"]),
        .library(name: "DomainRuntime", targets: ["DomainRuntime"]),
        .library(name: "SplitDrivers", targets: ["SplitDrivers"]),
        // The guest IP stack on its own: a guest (or a test) can run it over any `NetworkLink`.
        .library(name: "NetStack", targets: ["NetStack"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),  // LogHandler.log(event:)
    ],
    targets: [
        // The only target that includes C headers: libseccomp, liburing, memfd, futex, SCM_RIGHTS, prctl,
        // userfaultfd and PAGEMAP_SCAN.
        .target(
            name: "CProcvisor",
            linkerSettings: [.linkedLibrary("seccomp"), .linkedLibrary("uring")]
        ),
        .target(name: "LinuxHost", dependencies: ["CProcvisor"], swiftSettings: v5),
        .target(name: "ProcvisorABI", swiftSettings: v5),
        .target(name: "Toolstack", dependencies: ["ProcvisorABI", "LinuxHost"], swiftSettings: v5),
        // The XenStore database and its semantics (permissions, watches, transactions, quotas):
        // no I/O, so it is tested on its own; the supervisor serves it on the socket and the rings.
        .target(name: "XenStore", dependencies: ["ProcvisorABI"], swiftSettings: v5),
        // A dom0 XenStore client on the Unix socket (xl, benchmarks, tests).
        .target(name: "XenStoreSocket", dependencies: ["ProcvisorABI", "LinuxHost"], swiftSettings: v5),
        // The libraries guests link carry no unsafe flags, so a package outside this repository can
        // depend on them. Where a per-packet path would pay for a dynamic exclusivity check, the
        // class says so itself (`@exclusivity(unchecked)` on its stored properties, with the reason).
        .target(name: "DomainRuntime", dependencies: ["ProcvisorABI", "LinuxHost"], swiftSettings: v5),
        .target(name: "SplitDrivers", dependencies: ["DomainRuntime", "NetStack", "LinuxHost"], swiftSettings: v5),
        // The guest IP stack, over the `NetworkLink` it defines (netfront is one).
        .target(name: "NetStack", dependencies: ["DomainRuntime", "ProcvisorABI", "LinuxHost"], swiftSettings: v5),
        .target(
            name: "Supervisor",
            dependencies: [
                "ProcvisorABI", "LinuxHost", "Toolstack", "XenStore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: v5
        ),
        .executableTarget(name: "procvisord", dependencies: ["Supervisor"], swiftSettings: v5),
        .executableTarget(
            name: "xl",
            dependencies: [
                "Toolstack", "LinuxHost", "ProcvisorABI", "XenStoreSocket",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: v5
        ),

        // Example guests (examples/*/ hold the program and its xl.cfg).
        .executableTarget(name: "hello", dependencies: ["DomainRuntime"], path: "examples/hello", exclude: ["hello.cfg"], swiftSettings: v5),
        .executableTarget(name: "spinner", dependencies: ["DomainRuntime"], path: "examples/spinner", exclude: ["spinner.cfg"], swiftSettings: v5),
        .executableTarget(name: "evil", dependencies: ["DomainRuntime"], path: "examples/evil", exclude: ["evil.cfg"], swiftSettings: v5),
        .executableTarget(name: "pingpong", dependencies: ["DomainRuntime"], path: "examples/pingpong",
                          exclude: ["ping.cfg", "pong.cfg", "run.sh"], swiftSettings: v5),
        .executableTarget(name: "balloon-demo", dependencies: ["DomainRuntime"], path: "examples/balloon-demo",
                          exclude: ["balloon-demo.cfg"], swiftSettings: v5),
        .executableTarget(name: "blkcheck", dependencies: ["SplitDrivers"], path: "examples/blkcheck", exclude: ["blkcheck.cfg"], swiftSettings: v5),
        .executableTarget(name: "blkbench", dependencies: ["SplitDrivers"], path: "examples/blkbench", exclude: ["blkbench.cfg"], swiftSettings: v5),
        .executableTarget(name: "ping", dependencies: ["SplitDrivers", "NetStack"], path: "examples/ping", exclude: ["ping.cfg"], swiftSettings: v5),
        .executableTarget(name: "udp-echo", dependencies: ["SplitDrivers", "NetStack"], path: "examples/udp-echo",
                          exclude: ["udp-echo.cfg", "udp-echo-client.cfg"], swiftSettings: v5),
        .executableTarget(name: "kvstore", dependencies: ["SplitDrivers", "NetStack"], path: "examples/kvstore",
                          exclude: ["kvstore.cfg", "kvclient.cfg"], swiftSettings: v5),
        .executableTarget(name: "kvclient", dependencies: ["SplitDrivers", "NetStack"], path: "examples/kvclient", swiftSettings: v5),
        .executableTarget(name: "netbench", dependencies: ["SplitDrivers", "NetStack"], path: "examples/netbench",
                          exclude: ["netbench.cfg", "netbench-send.cfg"], swiftSettings: v5),

        // Driver domains.
        .executableTarget(name: "blkback", dependencies: ["SplitDrivers"], path: "Sources/blkback", swiftSettings: v5),
        .executableTarget(name: "netback", dependencies: ["SplitDrivers"], path: "Sources/netback", swiftSettings: v5),

        // Benchmarks run their peer in the same run and print ratios.
        .executableTarget(
            name: "procvisor-bench",
            dependencies: ["Toolstack", "LinuxHost", "ProcvisorABI", "XenStoreSocket"],
            path: "Benchmarks/procvisor-bench",
            swiftSettings: v5
        ),
        .executableTarget(name: "bench-guest", dependencies: ["DomainRuntime"], path: "Benchmarks/bench-guest", swiftSettings: v5),

        // A guest used only by the integration tests: its behaviour is chosen by its cmdline.
        .executableTarget(name: "testguest", dependencies: ["DomainRuntime", "SplitDrivers", "NetStack"], path: "Tests/Guests/testguest", swiftSettings: v5),
        // A domain kernel in plain C with no DomainRuntime: the isolation tests' hostile guest.
        .executableTarget(name: "cattack", path: "Tests/Guests/cattack"),

        // What several test targets share (a seeded generator).
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: v5),
        .testTarget(name: "DomainRuntimeTests", dependencies: ["DomainRuntime", "ProcvisorABI", "TestSupport"], swiftSettings: v5),
        .testTarget(name: "SplitDriversTests", dependencies: ["SplitDrivers", "DomainRuntime", "LinuxHost", "ProcvisorABI", "TestSupport"],
                    swiftSettings: v5),
        // The examples' logic that needs no domain (kvstore's table and protocol), through @testable import.
        .testTarget(name: "ExamplesTests", dependencies: ["kvstore", "DomainRuntime"], swiftSettings: v5),
        .testTarget(name: "NetStackTests", dependencies: ["NetStack", "DomainRuntime", "ProcvisorABI", "TestSupport"], swiftSettings: v5),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "ProcvisorABI", "TestSupport"], swiftSettings: v5),
        .testTarget(name: "ToolstackTests", dependencies: ["Toolstack", "LinuxHost", "ProcvisorABI"], exclude: ["Fixtures"], swiftSettings: v5),
        .testTarget(name: "LinuxHostTests", dependencies: ["LinuxHost", "TestSupport"], swiftSettings: v5),
        // The wire formats and ABI tables on their own (rings, blkif, netif, filters, vbd numbers).
        .testTarget(name: "ProcvisorABITests", dependencies: ["ProcvisorABI", "TestSupport"], swiftSettings: v5),
        // The supervisor's services on their own, with no domain process.
        .testTarget(name: "SupervisorTests", dependencies: ["Supervisor", "LinuxHost", "ProcvisorABI", "Toolstack", "XenStore",
                                                            .product(name: "Logging", package: "swift-log")], swiftSettings: v5),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["Toolstack", "LinuxHost", "ProcvisorABI", "XenStoreSocket"],
            swiftSettings: v5
        ),
    ]
)

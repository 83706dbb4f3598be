// swift-tools-version:6.0
// A guest of your own, built outside Procvisor's tree: copy this directory anywhere, point the
// path below at your Procvisor checkout, `swift build -c release`, and give xl my-guest.cfg.
import PackageDescription

let package = Package(
    name: "my-guest",
    dependencies: [
        // Procvisor's source tree: DomainRuntime is what every guest links; SplitDrivers has the
        // disk (blkfront) and network (netfront) frontends, NetStack the IPv4 stack.
        .package(name: "procvisor", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "my-guest",
            dependencies: [
                .product(name: "DomainRuntime", package: "procvisor"),
                .product(name: "SplitDrivers", package: "procvisor"),
                .product(name: "NetStack", package: "procvisor"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)

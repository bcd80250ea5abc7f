// swift-tools-version:6.1
// SocketIPC: fast, safe messaging between processes on one machine over Unix domain sockets.
import PackageDescription

let package = Package(
    name: "SocketIPC",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SocketIPC", targets: ["SocketIPC"]),
        .library(name: "SocketIPCTesting", targets: ["SocketIPCTesting"]),
        .executable(name: "socket-ipc", targets: ["socket-ipc"]),
        .executable(name: "socketipc-bench", targets: ["socketipc-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
    ],
    targets: [
        .target(name: "CSocketIPCLinux"),
        // The I/O-free core: the wire codec, the state machines, errors, credentials and policies as values.
        .target(
            name: "SocketIPCCore",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The runtime: servers, clients and connections on SwiftNIO's POSIX transport, with the Unix specifics in
        // Sources/SocketIPCRuntime/Unix.
        .target(
            name: "SocketIPCRuntime",
            dependencies: [
                "SocketIPCCore",
                "CSocketIPCLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // The services layer: typed methods, a router, streams with flow control, cancellation and deadlines on the
        // wire, and a client that survives restarts; over the runtime's connections and the core's call state machines.
        .target(
            name: "SocketIPCServices",
            dependencies: [
                "SocketIPCRuntime",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // What users import: the runtime and the services layer, re-exported.
        .target(name: "SocketIPC", dependencies: ["SocketIPCRuntime", "SocketIPCServices"]),
        // For tests of code that uses SocketIPC (this package's and its users'): a server in a temporary directory for
        // the length of a test.
        .target(name: "SocketIPCTesting", dependencies: ["SocketIPC"]),
        .target(
            name: "SocketIPCBenchmarkWorkloads",
            dependencies: [
                "SocketIPC",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/Sources/SocketIPCBenchmarkWorkloads"
        ),
        .executableTarget(
            name: "socketipc-bench",
            dependencies: [
                "SocketIPC",
                "SocketIPCBenchmarkWorkloads",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Benchmarks/Sources/socketipc-bench"
        ),
        .executableTarget(
            name: "socket-ipc",
            dependencies: [
                "SocketIPC",
                "CSocketIPCLinux",
                "SocketIPCBenchmarkWorkloads",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // The example under Examples/KeyValue (a package of its own for users), compiled here too so that the tests
        // build and run it; not products, so users of the library do not get them.
        .target(
            name: "KeyValueService",
            dependencies: ["SocketIPC"],
            path: "Examples/KeyValue/Sources/KeyValueService"
        ),
        .executableTarget(
            name: "kv-daemon",
            dependencies: [
                "KeyValueService",
                "SocketIPC",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Examples/KeyValue/Sources/kv-daemon"
        ),
        .executableTarget(
            name: "kv",
            dependencies: [
                "KeyValueService",
                "SocketIPC",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/KeyValue/Sources/kv"
        ),
        .target(name: "SocketIPCTestSupport", path: "Tests/SocketIPCTestSupport"),
        // What only C can do for the tests: a connect with one thread's credentials changed.
        .target(name: "CSocketIPCTestSupport", path: "Tests/CSocketIPCTestSupport"),
        .testTarget(
            name: "SocketIPCTests",
            dependencies: [
                "SocketIPC",
                "SocketIPCRuntime",
                "CSocketIPCLinux",
                "SocketIPCTesting",
                "SocketIPCTestSupport",
                "CSocketIPCTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "SocketIPCCoreTests",
            dependencies: [
                "SocketIPCCore",
                "SocketIPCTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        // Depends on the SocketIPC product alone: what the README shows must compile with `import SocketIPC`.
        .testTarget(
            name: "SocketIPCImportTests",
            dependencies: ["SocketIPC"]
        ),
        .testTarget(
            name: "SocketIPCCLITests",
            dependencies: ["socket-ipc", "SocketIPCTesting", "SocketIPCTestSupport"]
        ),
        // Runs the example's built kv-daemon and kv as processes.
        .testTarget(
            name: "KeyValueExampleTests",
            dependencies: ["kv-daemon", "kv", "KeyValueService", "SocketIPCTesting", "SocketIPCTestSupport"]
        ),
        // SocketIPCTesting used as a user would: nothing but that product.
        .testTarget(name: "SocketIPCTestingTests", dependencies: ["SocketIPCTesting"]),
    ]
)

for target in package.targets where target.name != "CSocketIPCLinux" {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    target.swiftSettings = settings
}

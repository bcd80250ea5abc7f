// swift-tools-version:6.1
// A key-value daemon and its command-line client over SocketIPC: typed calls, a watch that survives the daemon's
// restarts, and a daemon that refuses other users. See README.md.
import PackageDescription

let package = Package(
    name: "KeyValue",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "SocketIPC", path: "../.."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // The methods, declared once for both sides, and the daemon's store and router.
        .target(
            name: "KeyValueService",
            dependencies: [.product(name: "SocketIPC", package: "SocketIPC")]
        ),
        .executableTarget(
            name: "kv-daemon",
            dependencies: [
                "KeyValueService",
                .product(name: "SocketIPC", package: "SocketIPC"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "kv",
            dependencies: [
                "KeyValueService",
                .product(name: "SocketIPC", package: "SocketIPC"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

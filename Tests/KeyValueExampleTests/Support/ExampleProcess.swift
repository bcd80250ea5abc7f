import Foundation
import SocketIPCTestSupport

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The directory that holds the built products: `kv-daemon` and `kv` sit next to the test bundle, as in
/// swift-argument-parser's `ArgumentParserTestHelpers` (`debugURL`) and the CLI tests' `TestProcess.swift`.
let productsDirectory: URL = {
    let bundleURL = Bundle(for: BundleMarker.self).bundleURL
    return bundleURL.lastPathComponent.hasSuffix("xctest") ? bundleURL.deletingLastPathComponent() : bundleURL
}()

private final class BundleMarker {}

/// A process of the example started by a test: a ``SpawnedProcess`` (SocketIPCTestSupport, shared with the CLI
/// tests' `TestProcess`), started with `posix_spawn`; its standard output and standard error are read line by line as
/// they come, and it is killed if it is still running after `timeLimit` (a safety net against hanging the test run,
/// never a way to wait for something).
typealias ExampleProcess = SpawnedProcess

extension SpawnedProcess {
    /// Starts the built product `name` (`kv-daemon` or `kv`) with `arguments`; standard input is `/dev/null`.
    convenience init(_ name: String, _ arguments: [String], timeLimit: Duration = .seconds(60)) throws {
        try self.init(
            executable: productsDirectory.appendingPathComponent(name).path,
            arguments: arguments,
            timeLimit: timeLimit
        )
    }
}

/// Runs `kv arguments...` to completion.
/// - Returns: The exit status, standard output and standard error.
func runKV(_ arguments: [String]) async throws -> (status: Int32, output: String, error: String) {
    let process = try ExampleProcess("kv", arguments)
    let status = await process.waitForExit()
    return (status, await process.standardOutput.text(), await process.standardError.text())
}

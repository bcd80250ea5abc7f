#if os(Linux)
import Foundation
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `EACCES` at `connect(2)` says which refused: a directory on the path this process may not search (another user's
/// private directory; no server's start changes it, so a `ServiceClient` gives up), or the socket file's mode (which
/// a server that starts again may change, so a `ServiceClient` retries). Root passes every such check, so the test
/// runs this test binary again as another user, which makes the connects (found by a review: both were retried
/// without end, and both blamed the socket file's mode).
@Suite(
    "Connect refused by the file system",
    .enabled(if: OtherUser.canRunProcesses || RefusedPaths.fromEnvironment != nil),
    .timeLimit(.minutes(5))
)
struct ConnectRefusalTests {
    @Test("a private directory on the path and a socket file's mode are told apart, and only the mode is retried")
    func refusals() async throws {
        if let paths = RefusedPaths.fromEnvironment {
            try await Self.connectAsOtherUser(paths)
            return
        }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("refused-\(UUID().uuidString)").path
        let privateDirectory = base + "/private"
        let openDirectory = base + "/open"
        try FileManager.default.createDirectory(atPath: privateDirectory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: openDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        #expect(chmod(base, 0o755) == 0)
        #expect(chmod(privateDirectory, 0o700) == 0)
        #expect(chmod(openDirectory, 0o755) == 0)
        let listeners = try [privateDirectory + "/s.sock", openDirectory + "/s.sock"].map { path in
            let listener = makeUnixStreamSocket()
            let bound = withSocketAddress(path) { bind(listener, $0, $1) }
            guard bound == 0, listen(listener, 4) == 0, chmod(path, 0o600) == 0 else { throw POSIXError(.EIO) }
            return listener
        }
        defer { for listener in listeners { _ = closeDescriptor(listener) } }
        var environment = ProcessInfo.processInfo.environment
        environment["SOCKETIPC_TEST_REFUSED_PATHS"] = "\(privateDirectory)/s.sock:\(openDirectory)/s.sock"
        let testBinary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let child = try SpawnedProcess(
            executable: try #require(OtherUser.setpriv),
            arguments: OtherUser.command([
                testBinary, "--testing-library", "swift-testing", "--filter", "ConnectRefusalTests",
            ]),
            errorOutput: .mergedWithOutput,
            environment: environment
        )
        let status = await child.waitForExit()
        let output = await child.standardOutput.text()
        #expect(status == 0, "\(output)")
        // The run as another user ran this test (a filter that matched nothing would exit 0 too).
        #expect(output.contains("Test run with 1 test"), "\(output)")
    }

    /// As another user: each connect fails with the cause that says why.
    static func connectAsOtherUser(_ paths: (inPrivateDirectory: String, ofMode0600: String)) async throws {
        #expect(geteuid() != 0, "runs as another user")
        let inPrivate = await #expect(throws: SocketIPCError.self) {
            _ = try await SocketConnector.connect(to: try SocketPath(paths.inPrivateDirectory), timeout: .seconds(5))
        }
        #expect((inPrivate?.cause as? ConnectionNotMade) == .directoryNotSearchable, "\(String(describing: inPrivate))")
        #expect(inPrivate?.code == .unauthorized)
        #expect(inPrivate?.isSocketFilePermissionDenied == false)
        #expect(inPrivate?.message.contains("a directory on its path cannot be searched") == true)

        let byMode = await #expect(throws: SocketIPCError.self) {
            _ = try await SocketConnector.connect(to: try SocketPath(paths.ofMode0600), timeout: .seconds(5))
        }
        #expect((byMode?.cause as? ConnectionNotMade) == .permissionDenied, "\(String(describing: byMode))")
        #expect(byMode?.isSocketFilePermissionDenied == true)
        #expect(byMode?.message.contains("the socket file's mode") == true)
    }
}
/// Set in the run as another user: the socket in a private directory, and the socket of mode 0600.
enum RefusedPaths {
    static var fromEnvironment: (inPrivateDirectory: String, ofMode0600: String)? {
        guard let value = ProcessInfo.processInfo.environment["SOCKETIPC_TEST_REFUSED_PATHS"] else { return nil }
        let parts = value.split(separator: ":").map(String.init)
        guard parts.count == 2 else { return nil }
        return (parts[0], parts[1])
    }
}
#endif

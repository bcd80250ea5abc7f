import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 9, section 2: `socket-ipc probe` exits 0 only for a live SocketIPC server that accepts the caller; issue 12:
/// with the exit statuses of ``ExitStatus`` (3 not a usable server, 4 refused) and the verdict on standard output.
@Suite("socket-ipc probe exits 0 only for a server that serves you", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ProbeCommandHonestyTests {
    @Test(
        "probe of socat answering every connection with an HTTP response exits 3",
        .enabled(if: toolExists("socat"), "needs socat")
    )
    func socatHTTPResponder() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/http.sock"
            let responder = try TestProcess(
                executable: "/usr/bin/env",
                ["socat", "-d", "-d", "UNIX-LISTEN:\(path),fork", "SYSTEM:printf 'HTTP/1.0 200 OK\\r\\n\\r\\n'"]
            )
            try await withProcess(responder) { responder in
                #expect(await responder.standardError.waitForLine(containing: "listening on") != nil)
                for _ in 0..<5 {
                    let result = try await runCLI(["probe", "--socket", path, "--timeout", "10"])
                    #expect(result.status == 3, "stdout: \(result.output) stderr: \(result.error)")
                    #expect(!result.output.contains("EOF-style server"))
                    #expect(!result.output.contains("serves you"))
                    // Usually its bytes come before the probe half-closes ("does not speak SocketIPC"); when socat is
                    // slow to start its child, it may close without them ("closed the connection at once").
                    #expect(
                        result.output.hasPrefix("something listens on \(path) but does not speak SocketIPC")
                            || result.output.hasPrefix("something listens on \(path) but closed the connection"),
                        "stdout: \(result.output)"
                    )
                }
            }
        }
    }

    @Test("probe of a listener that writes on accept and closes, or closes at once, exits 3")
    func closingListeners() async throws {
        try await withTemporarySocketDirectory { directory in
            for (name, greeting) in [("greets", "HTTP/1.0 200 OK\r\n\r\n"), ("closes", nil)] {
                let path = directory + "/\(name).sock"
                let listener = try ClosingListener(path: path, greeting: greeting)
                defer { listener.stop() }
                for _ in 0..<10 {
                    let result = try await runCLI(["probe", "--socket", path, "--timeout", "10"])
                    #expect(result.status == 3, "\(name): stdout: \(result.output) stderr: \(result.error)")
                    #expect(result.output.hasPrefix("something listens on \(path) but "), "\(name): \(result.output)")
                    #expect(!result.output.contains("serves you"), "\(name): stdout: \(result.output)")
                }
            }
        }
    }

    @Test("probe of a framed server whose hello names protocol version 2 does not say it serves you (its clients would be refused with unsupportedVersion): exit 3, verdict otherVersion")
    func otherProtocolVersion() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/v2.sock"
            let listener = try ClosingListener(path: path, greeting: "SIPC\u{2}\u{0}\u{0}\u{0}")
            defer { listener.stop() }
            let result = try await runCLI(["probe", "--socket", path, "--json"])
            // Before, exit 0: "framed SocketIPC server (protocol version 2) serves you".
            #expect(result.status == 3, "stdout: \(result.output) stderr: \(result.error)")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any])
            #expect(object["verdict"] as? String == "otherVersion")
            #expect(object["protocolVersion"] as? Int == 2)
            #expect(object["servesYou"] as? Bool == false)
            let text = try await runCLI(["probe", "--socket", path])
            #expect(text.output.contains("speaks version 1 only"), "\(text.output)")
        }
    }

    @Test(
        "probe, run as another user, of a framed server that refuses it exits 4 and says so",
        .enabled(if: getuid() == 0 && toolExists("setpriv"), "needs root and setpriv")
    )
    func refusedByFramedServer() async throws {
        // The other user must reach the socket: the file mode is not what refuses it here, the policy is.
        try await withServeCommand(["--permissions", "0666"], directoryMode: 0o755) { path, _ in
            let probe = try TestProcess(
                executable: "/usr/bin/env",
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", socketIPCBinary, "probe", "--socket", path]
            )
            let status = await probe.waitForExit()
            let output = await probe.standardOutput.text()
            #expect(status == 4, "stdout: \(output)")
            #expect(output.contains("does not serve you"), "stdout: \(output)")
            // The server's own user is served.
            let own = try await runCLI(["probe", "--socket", path])
            #expect(own.status == 0, "stderr: \(own.error)")
        }
    }
}

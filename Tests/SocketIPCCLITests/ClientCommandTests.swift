import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

@Suite("socket-ipc send, request and probe", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ClientCommandTests {
    @Test("a socket path too long for sun_path is a usage error (64) for clients and servers alike, not 'no connection' (3) or 'cannot serve' (73)")
    func pathTooLongIsUsage() async throws {
        let path = "/tmp/" + String(repeating: "d", count: 200) + "/s.sock"
        for arguments in [["request", path, "hi"], ["call", path, "demo.echo", "1"], ["serve", path], ["listen", path]] {
            let result = try await runCLI(arguments)
            #expect(result.status == 64, "\(arguments[0]): \(result)")
            #expect(result.error.contains("sun_path"), "\(arguments[0]): \(result.error)")
        }
    }

    @Test("send --eof sends its argument and prints the 4-byte acknowledgement as a count")
    func sendEOFArgument() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            let result = try await runCLI(["send", "--socket", path, "--eof", "hello"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "ack: 5\n")
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 5 bytes")
        }
    }

    @Test("send --eof streams standard input as one message")
    func sendEOFStandardInput() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            let text = String(repeating: "0123456789", count: 100_000)
            let result = try await runCLI(["send", "--socket", path, "--eof"], input: text)
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "ack: 1000000\n")
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 1000000 bytes")
        }
    }

    @Test("request --count --concurrency gets every reply on one connection and prints a latency summary")
    func concurrentRequests() async throws {
        try await withServeCommand { path, server in
            let result = try await runCLI(
                ["request", path, "--count", "20", "--concurrency", "10", "--timeout", "10", "--verbose", "ping"]
            )
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output.hasPrefix("20 requests (10 at once) in "), "\(result.output)")
            #expect(result.output.contains("requests/s; latency µs min "), "\(result.output)")
            // --verbose: each reply on standard error.
            let replies = Set(result.error.split(separator: "\n").map(String.init))
            #expect(replies == Set((1...20).map { "reply: \"ping #\($0)\"" }))
        }
    }

    @Test("a client of a path where nothing listens fails with the library's message, not a stack trace")
    func nothingListening() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/nobody.sock"
            for command in [
                ["request", "--socket", path, "hi"], ["send", "--socket", path, "hi"],
                ["send", "--socket", path, "--eof", "hi"],
            ] {
                let result = try await runCLI(command)
                #expect(result.status == 3, "\(command)")
                #expect(result.error.hasPrefix("error: "), "\(command): \(result.error)")
                #expect(result.error.contains(path), "\(command): \(result.error)")
                #expect(result.error.split(separator: "\n").count == 1, "\(command): \(result.error)")
            }
        }
    }

    @Test("probe recognises a framed server and names its peer")
    func probeFramedServer() async throws {
        try await withServeCommand { path, server in
            let result = try await runCLI(["probe", "--socket", path])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(
                result.output.hasPrefix(
                    "framed SocketIPC server (protocol version 1) serves you, peer pid=\(server.processID)"))
        }
    }

    @Test("probe tells an EOF-style server apart at once, and sends it only an empty message")
    func probeEOFServer() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            // A long timeout: the answer must come from the server, not from the clock.
            let result = try await runCLI(["probe", "--socket", path, "--timeout", "30"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(
                result.output.hasPrefix(
                    "EOF-style server serves you: it read an empty message and closed with a 4-byte acknowledgement"),
                "stdout: \(result.output)"
            )
            #expect(await server.standardOutput.waitForLine(containing: "received 0 bytes") != nil)
        }
    }

    @Test("the help lists the subcommands and hides the demo's helper")
    func help() async throws {
        let result = try await runCLI(["--help"])
        #expect(result.status == 0)
        for subcommand in ["serve", "send", "request", "probe", "demo"] {
            #expect(result.output.contains("\n  \(subcommand) "), "\(subcommand) missing from the help")
        }
        #expect(!result.output.contains("listen-for-push"))
    }

    @Test("timeouts too large for a duration (inf, 1e300) are taken as very long, never a crash")
    func hugeTimeouts() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/none.sock"
            for arguments in [
                ["request", "--socket", path, "--timeout", "1e300", "hi"],
            ] {
                let result = try await runCLI(arguments)
                #expect(result.status == 3, "\(arguments): \(result.error)")
                #expect(result.error.hasPrefix("error: no server at \(path)"), "\(arguments): \(result.error)")
            }
        }
    }
}

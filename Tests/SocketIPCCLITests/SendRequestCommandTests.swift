import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 12: `send` and `request` as scripts use them: `@FILE`, standard input, `--timeout`, `--json`, `--raw`, a
/// latency summary, and the hint when a framed client meets an EOF-style server.
@Suite("socket-ipc send and request: input, timeouts, JSON", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SendRequestCommandTests {
    @Test("send --eof @FILE streams the file and --json reports what was sent and the acknowledged count")
    func sendFile() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            let file = (path as NSString).deletingLastPathComponent + "/payload.bin"
            // Made without a per-byte loop: seconds of CPU in a debug build would hold up other tests' tasks.
            try Data(repeating: 0x5A, count: 3_000_000).write(to: URL(fileURLWithPath: file))
            let result = try await runCLI(["send", "--eof", "--json", path, "@" + file])
            #expect(result.status == 0, "stderr: \(result.error)")
            let object = try #require(try parseJSON(result.output))
            #expect(object["style"] as? String == "eof")
            #expect(object["sent"] as? Int == 3_000_000)
            #expect((object["acknowledgement"] as? [String: Any])?["count"] as? Int == 3_000_000)
            // Piped standard error: no progress bar, nothing at all.
            #expect(result.error.isEmpty, "stderr: \(result.error)")
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 3000000 bytes")
        }
    }

    @Test("send of a file that cannot be read is a usage error naming the file, and connects to nothing")
    func sendMissingFile() async throws {
        try await withTemporarySocketDirectory { directory in
            let result = try await runCLI(["send", "--eof", directory + "/none.sock", "@" + directory + "/missing"])
            #expect(result.status == 64)
            #expect(result.error == "error: cannot read \(directory)/missing: No such file or directory\n")
        }
    }

    @Test("send framed with --json; standard input is the message when it is omitted")
    func sendFramedJSON() async throws {
        try await withServeCommand { path, server in
            let result = try await runCLI(["send", "--json", path], input: "from stdin")
            #expect(result.status == 0, "stderr: \(result.error)")
            let object = try #require(try parseJSON(result.output))
            #expect(object["style"] as? String == "framed")
            #expect(object["sent"] as? Int == 10)
            #expect(await server.standardOutput.waitForLine(containing: "message") == "message 10 bytes: \"from stdin\"")
        }
    }

    @Test("send framed of a message over the server's maximum exits 1 and says so; the server delivers nothing (before: `sent`, exit 0)")
    func sendFramedTooLarge() async throws {
        try await withServeCommand(["--max-message-size", "1000"]) { path, server in
            let refused = try await runCLI(["send", path, String(repeating: "x", count: 2000)])
            #expect(refused.status == 1, "stderr: \(refused.error)")
            #expect(refused.output.isEmpty, "stdout: \(refused.output)")
            #expect(refused.error.contains("a frame was larger than it accepts"), "stderr: \(refused.error)")
            // One that fits is sent, and said so once the server has read it.
            let sent = try await runCLI(["send", path, "fits"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(sent.output == "sent 4 bytes\n")
            #expect(await server.standardOutput.waitForLine(containing: "message") == "message 4 bytes: \"fits\"")
        }
    }

    @Test("send --timeout ends a send that a server never acknowledges with exit 5, naming the limit")
    func sendTimeout() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try SilentListener(path: path)
            defer { listener.close() }
            let result = try await runCLI(["send", "--eof", "--timeout", "0.5", path, "hello"])
            #expect(result.status == 5, "stderr: \(result.error)")
            #expect(result.error.hasPrefix("error: the message to \(path) was not acknowledged within 500 ms (--timeout) "))
            // Connected (the listener's backlog took it) and written: it may still be read as a whole message.
            #expect(result.error.contains("may reach the server as a whole, shorter message"), "\(result.error)")
        }
    }

    @Test("request: --json gives the reply and its encoding, --raw its bytes, @FILE reads the request")
    func requestFormats() async throws {
        try await withServeCommand { path, _ in
            let json = try await runCLI(["request", "--json", path, "hello"])
            #expect(json.status == 0, "stderr: \(json.error)")
            let object = try #require(try parseJSON(json.output))
            #expect(object["reply"] as? String == "hello")
            #expect(object["encoding"] as? String == "utf8")
            #expect(object["size"] as? Int == 5)

            let file = (path as NSString).deletingLastPathComponent + "/request.bin"
            try Data([0x00, 0xFF, 0x1B, 0x41]).write(to: URL(fileURLWithPath: file))
            let binary = try await runCLI(["request", "--json", path, "@" + file])
            let binaryObject = try #require(try parseJSON(binary.output))
            #expect(binaryObject["encoding"] as? String == "base64")
            #expect(binaryObject["reply"] as? String == Data([0x00, 0xFF, 0x1B, 0x41]).base64EncodedString())

            let plain = try await runCLI(["request", path, "@" + file])
            #expect(plain.output == "reply: 0x00ff1b41\n", "never a raw escape byte on a terminal")

            let raw = try await runCLI(["request", "--raw", path, "line"])
            #expect(raw.output == "line\n")
        }
    }

    @Test("request --count --json prints one JSON summary with the latency percentiles in order")
    func requestSummaryJSON() async throws {
        try await withServeCommand { path, _ in
            let result = try await runCLI(["request", "--json", "--count", "50", "--concurrency", "5", path, "ping"])
            #expect(result.status == 0, "stderr: \(result.error)")
            let object = try #require(try parseJSON(result.output))
            #expect(object["count"] as? Int == 50)
            #expect(object["concurrency"] as? Int == 5)
            #expect((object["requestsPerSecond"] as? Double ?? 0) > 0)
            let latency = try #require(object["latencyMicroseconds"] as? [String: Double])
            let ordered = ["min", "p50", "p90", "p99", "max"].compactMap { latency[$0] }
            #expect(ordered.count == 5)
            #expect(ordered == ordered.sorted(), "percentiles: \(latency)")
            #expect(ordered[0] > 0)
        }
    }

    @Test(
        "request to an EOF-style server says to use --eof and exits 3, whether the server closes first or the wait for its hello runs out first",
        arguments: [
            // The EOF-style server closes a connection whose message has not ended after 3 s, before the client's 10.
            (["--handshake-timeout", "3"], [String]()),
            // The client's wait for the hello (--timeout 1) runs out before the server's 30 s: before, exit 5, and
            // with equal times (the defaults) either status, as the race went.
            (["--handshake-timeout", "30"], ["--timeout", "1"]),
        ]
    )
    func requestToEOFServer(serverOptions: [String], requestOptions: [String]) async throws {
        try await withServeCommand(["--mode", "eof"] + serverOptions) { path, _ in
            let result = try await runCLI(["request"] + requestOptions + [path, "hello"])
            #expect(result.status == 3, "stderr: \(result.error)")
            // Piped, so no note while waiting (that is for a terminal): the error itself says what to do.
            #expect(!result.error.contains("note:"), "\(result.error)")
            #expect(result.error.hasPrefix("error: "))
            #expect(result.error.contains("EOF-style server"), "\(result.error)")
            #expect(result.error.contains("--eof"), "\(result.error)")
        }
    }

    @Test("request --timeout against a listener that never answers: exit 3 (no connection: no hello came), and the hint to send with --eof")
    func requestTimeout() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try SilentListener(path: path)
            defer { listener.close() }
            let result = try await runCLI(["request", "--quiet", "--timeout", "0.5", path, "hello"])
            #expect(result.status == 3, "stderr: \(result.error)")
            #expect(!result.error.contains("note:"), "--quiet drops notes: \(result.error)")
            #expect(result.error.hasPrefix("error: the server at \(path) sent no hello within "))
            #expect(result.error.hasSuffix("if this is an EOF-style server, send to it with `socket-ipc send --eof` (`socket-ipc probe \(path)` tells)\n"))
        }
    }

    @Test("send --timeout that passes while its input is still coming: exit 5, and nothing reaches the server (before, what had been read went out as a whole message, or exit 3 said the server did not accept)")
    func timeoutWhileReadingInput() async throws {
        try await withServeCommand { path, server in
            let directory = String(path.dropLast("/s.sock".count))
            // Standard input: a FIFO that the command itself holds open for writing, so "part1" comes and then no end.
            let script = #"mkfifo "$2/in" && exec 3<>"$2/in" && printf part1 >&3 && exec "$0" send --timeout 0.5 "$1" <"$2/in""#
            let process = try TestProcess.shell(script, [path, directory])
            let status = await process.waitForExit()
            let error = await process.standardError.text()
            #expect(status == 5, "\(error)")
            #expect(error.contains("was not sent within 500 ms"), "\(error)")
            let after = try await runCLI(["send", path, "after"])
            #expect(after.status == 0, "\(after.error)")
            // The first message the server printed is the one sent after: part1 never reached it.
            let first = await server.standardOutput.waitForLine(containing: "message ")
            #expect(first?.contains("after") == true, "\(first ?? "none")")
        }
    }

    @Test("a path that holds the words of a no-connection error does not make a timeout once connected exit 3: the status comes from the error's cause, not its text")
    func exitStatusNotFromPathText() async throws {
        try await withTemporarySocketDirectory { directory in
            let folder = directory + "/sent no hello, did not accept within"
            #expect(mkdir(folder, 0o700) == 0)
            let path = folder + "/q.sock"
            let listener = try SilentListener(path: path)
            defer { listener.close() }
            let result = try await runCLI(["send", "--eof", "--timeout", "0.3", path, "hi"])
            // Before, 3, with the hint to use --eof.
            #expect(result.status == 5, "\(result.error)")
            #expect(!result.error.contains("send it with `socket-ipc send --eof`"), "\(result.error)")
        }
    }

    #if os(Linux)
        @Test("a server whose backlog stays full (stopped, swamped) makes no connection: request and send exit 3 within --timeout, as probe (queueFull) does")
        func fullBacklog() async throws {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/full.sock"
                let listener = try SilentListener(path: path, backlog: 0)
                defer { listener.close() }
                // Queued connections that are never accepted, until a non-blocking connect would block.
                var queued: [Int32] = []
                defer { for descriptor in queued { closeDescriptor(descriptor) } }
                while queued.count < 64 {
                    let descriptor = makeUnixStreamSocket()
                    _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
                    let connected = withSocketAddress(path) { connect(descriptor, $0, $1) }
                    queued.append(descriptor)
                    if connected != 0 { break }
                }
                try #require(queued.count < 64, "the backlog never filled")
                for command in [
                    ["request", "--timeout", "0.3", path, "hi"], ["send", "--timeout", "0.3", path, "hi"],
                    ["send", "--eof", "--timeout", "0.3", path, "hi"],
                ] {
                    let result = try await runCLI(command)
                    // Before, 5, while probe said 3 for the same listener.
                    #expect(result.status == 3, "\(command[0]): \(result.error)")
                    #expect(result.error.contains("did not accept within"), "\(result.error)")
                }
                let probe = try await runCLI(["probe", "--timeout", "0.3", path])
                #expect(probe.status == 3, "\(probe)")
            }
        }
    #endif
}

/// `text` as one JSON object, or `nil` if it is not one.
func parseJSON(_ text: String) throws -> [String: Any]? {
    try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
}

/// A listening socket that never accepts: connections wait in its backlog, and nothing is ever read or written.
final class SilentListener: Sendable {
    private let descriptor: Int32

    /// Binds `path` and listens, with a backlog of `backlog` (8 by default; with 0, Linux queues one connection).
    init(path: String, backlog: Int32 = 8) throws {
        self.descriptor = makeUnixStreamSocket()
        guard withSocketAddress(path, { bind(self.descriptor, $0, $1) }) == 0, listen(self.descriptor, backlog) == 0 else {
            let code = errno
            closeDescriptor(self.descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
    }

    /// Closes the listening socket (the socket file stays, stale, in the test's temporary directory).
    func close() {
        closeDescriptor(self.descriptor)
    }
}

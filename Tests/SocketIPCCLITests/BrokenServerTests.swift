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

/// The CLI's clients against servers that break the protocol or stop reading (found by a review of hostile servers):
/// each ends, with the exit status of a lost connection.
@Suite("socket-ipc clients against broken servers", .timeLimit(.minutes(3)), .limitedConcurrency)
struct BrokenServerTests {
    /// `hex` (spaces ignored) as bytes.
    static func bytes(_ hex: String) -> [UInt8] { ProtocolDocument.bytes(hex: hex) }

    @Test("send --eof to a framed server that sends a message frame before its going-away: wrongStyle, exit 3, and probe calls it a framed server")
    func framesBeforeGoAway() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/greeter.sock"
            // Hello (calls, strict credit), a message "ok", a going-away 0x01: PROTOCOL.md lets a side send frames
            // right after its hello. Before, `send --eof` printed these bytes as the acknowledgement and exited 0.
            let greeting = Self.bytes("5349504301090000 00000003016f6b 000000020501")
            let listener = try GreetingListener(path: path, greeting: greeting)
            defer { listener.stop() }
            let sent = try await runCLI(["send", "--eof", "--timeout", "30", path, "hello"])
            #expect(sent.status == 3, "stdout: \(sent.output) stderr: \(sent.error)")
            #expect(sent.error.contains("this is a framed server"), "stderr: \(sent.error)")
            let probed = try await runCLI(["probe", path, "--timeout", "30"])
            #expect(probed.output.contains("framed SocketIPC server (protocol version 1)"), "stdout: \(probed.output)")
        }
    }

    @Test("a frame over the client's maximum from the server is a lost connection (exit 3), not the server's answer (1)")
    func frameTooLarge() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/huge.sock"
            let listener = try GreetingListener(path: path, greeting: Self.bytes("5349504301090000 ffffffff01"))
            defer { listener.stop() }
            let result = try await runCLI(["request", "--timeout", "30", path, "hi"])
            #expect(result.status == 3, "stderr: \(result.error)")
            #expect(result.error.contains("received a frame of length 4294967295"), "stderr: \(result.error)")
        }
    }

    @Test("send --eof without --timeout to a server that accepts and reads nothing ends with timedOut (exit 5)")
    func sendEOFToServerThatReadsNothing() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/deaf-eof.sock"
            let listener = try GreetingListener(path: path, greeting: [], reads: false)
            defer { listener.stop() }
            let file = directory + "/large.bin"
            try Data(count: 8 * 1024 * 1024).write(to: URL(fileURLWithPath: file))
            // Before, it waited for good; now the server's taking none of the message for a close timeout (10 s)
            // ends it.
            let result = try await runCLI(["send", "--eof", path, "@" + file])
            #expect(result.status == 5, "stderr: \(result.error)")
            #expect(result.error.contains("took nothing more of the message"), "stderr: \(result.error)")
        }
    }

    /// The hellos of a server that reads nothing: one that speaks calls and pings (and answers none), one of version
    /// 1 without flags (no pings: only the socket can tell that it reads nothing).
    static let deafHellos = ["5349504301090000", "5349504301000000"]

    @Test(
        "send without --timeout to a server that reads nothing ends with timedOut (exit 5) after a close timeout",
        arguments: deafHellos)
    func sendToServerThatReadsNothing(hello: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/deaf.sock"
            let listener = try GreetingListener(path: path, greeting: Self.bytes(hello), reads: false)
            defer { listener.stop() }
            // More than the socket buffers and the connection's high watermark hold.
            let file = directory + "/large.bin"
            try Data(count: 8 * 1024 * 1024).write(to: URL(fileURLWithPath: file))
            // Before, send waited for room in the write queue: for good (found with flags 0), or until the keepalive
            // gave up (20 s). Now the wait for the socket to take the message gives up after the close timeout
            // (10 s) without progress, whether the server speaks pings or not.
            let result = try await runCLI(["send", path, "@" + file])
            #expect(result.status == 5, "stderr: \(result.error)")
            #expect(result.error.contains("took nothing more of what was sent"), "stderr: \(result.error)")
        }
    }
}

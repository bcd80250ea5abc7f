import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("socket-ipc listen", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ListenCommandTests {
    @Test("text: a metadata line (time, kind, size, uid, gid, pid) then the payload, for a message and a request")
    func framedText() async throws {
        try await withListenCommand(["--count", "2"]) { path, listener in
            let sent = try await runCLI(["send", path, "hello"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            let asked = try await runCLI(["request", path, "a question"])
            #expect(asked.status == 0, "stderr: \(asked.error)")
            #expect(asked.output == "reply: \"\"\n", "listen answers a request with an empty reply")

            #expect(await listener.waitForExit() == 0, "listen --count 2 ends after two messages")
            let lines = await listener.standardOutput.remainingLines()
            try #require(lines.count == 4, "stdout: \(lines)")
            let message = try #require(ListenMetadata(lines[0]), "not a metadata line: \(lines[0])")
            #expect(message.kind == "message" && message.size == 5)
            #expect(message.uid == getuid() && message.gid == getgid() && message.pid > 0)
            #expect(lines[1] == "  hello")
            let request = try #require(ListenMetadata(lines[2]), "not a metadata line: \(lines[2])")
            #expect(request.kind == "request" && request.size == 10)
            #expect(lines[3] == "  a question")
            let notes = await listener.standardError.remainingLines()
            #expect(notes.contains { $0.hasPrefix("connection from uid=\(getuid()) gid=\(getgid()) pid=") }, "\(notes)")
            #expect(notes.contains { $0.hasPrefix("connection closed from uid=\(getuid())") }, "\(notes)")
        }
    }

    @Test("json: one object per line, a string payload when printable UTF-8, base64 otherwise; no metadata line")
    func framedJSON() async throws {
        try await withListenCommand(["--format", "json", "--count", "3"]) { path, listener in
            #expect(try await runCLI(["send", path, "plain text"]).status == 0)
            #expect(try await runCLI(["request", path, "ask"]).status == 0)
            let binary = try TestProcess.socketIPC(["send", path], input: Data([0x1B, 0x5B, 0x32, 0x4A, 0x00, 0xFF]))
            #expect(await binary.waitForExit() == 0)

            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            try #require(lines.count == 3, "stdout: \(lines)")
            let objects = try lines.map { try #require(jsonObject($0)) }
            #expect(objects.map { $0["kind"] as? String } == ["message", "request", "message"])
            #expect(objects.map { $0["size"] as? Int } == [10, 3, 6])
            #expect(objects[0]["payload"] as? String == "plain text" && objects[0]["encoding"] as? String == "utf8")
            #expect(objects[1]["payload"] as? String == "ask")
            #expect(objects[2]["encoding"] as? String == "base64")
            #expect(
                objects[2]["payload"] as? String == Data([0x1B, 0x5B, 0x32, 0x4A, 0x00, 0xFF]).base64EncodedString())
            for object in objects {
                let peer = try #require(object["peer"] as? [String: Any])
                #expect(peer["uid"] as? Int == Int(getuid()) && peer["gid"] as? Int == Int(getgid()))
                #expect((peer["pid"] as? Int ?? 0) > 0)
                let time = try #require(object["time"] as? String)
                #expect(time.wholeMatch(of: #/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/#) != nil, "time: \(time)")
            }
        }
    }

    @Test(
        "eof: each format prints the message, and the sender gets the 4-byte count acknowledgement",
        arguments: ["text", "hex", "json"]
    )
    func eofFormats(format: String) async throws {
        try await withListenCommand(["--mode", "eof", "--format", format, "--count", "1"]) { path, listener in
            let sent = try await runCLI(["send", "--eof", path, "over EOF"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(sent.output == "ack: 8\n")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            switch format {
            case "text":
                #expect(
                    lines.count == 2 && ListenMetadata(lines[0])?.kind == "eof" && lines[1] == "  over EOF", "\(lines)")
            case "hex":
                #expect(lines.count == 2 && ListenMetadata(lines[0])?.kind == "eof", "\(lines)")
                #expect(lines.last == "00000000: 6f76 6572 2045 4f46" + String(repeating: " ", count: 22) + "over EOF")
            default:
                let object = try #require(lines.count == 1 ? jsonObject(lines[0]) : nil, "\(lines)")
                #expect(object["kind"] as? String == "eof" && object["payload"] as? String == "over EOF")
            }
            #expect(fileStatus(path) == nil, "the socket file is removed")
        }
    }

    @Test("text: control characters are escaped and bytes that are not UTF-8 are dumped; no ESC reaches stdout")
    func binarySafety() async throws {
        try await withListenCommand(["--count", "2"]) { path, listener in
            let escape = try TestProcess.socketIPC(
                ["send", path], input: Data("\u{1B}]0;owned\u{7}\u{1B}[31mred\r\\".utf8))
            #expect(await escape.waitForExit() == 0)
            let binary = try TestProcess.socketIPC(["send", path], input: Data([0xFF, 0x1B, 0x00, 0x41]))
            #expect(await binary.waitForExit() == 0)

            #expect(await listener.waitForExit() == 0)
            let output = await listener.standardOutput.data()
            #expect(!output.contains(0x1B), "an ESC byte reached standard output")
            #expect(!output.contains(0x07) && !output.contains(0x0D) && !output.contains(0x00))
            let lines = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
            try #require(lines.count == 4, "\(lines)")
            #expect(lines[1] == #"  \x1b]0;owned\x07\x1b[31mred\x0d\\"#)
            #expect(lines[3] == "  00000000: ff1b 0041" + String(repeating: " ", count: 32) + "...A")
        }
    }

    @Test("send piped into listen: `printf ... | socket-ipc send PATH` prints there as it was sent")
    func sendPipedIntoListen() async throws {
        try await withListenCommand(["--count", "1"]) { path, listener in
            let pipeline = try TestProcess.shell(#"printf 'first line\nsecond line\n' | "$0" send "$1""#, [path])
            #expect(await pipeline.waitForExit() == 0)
            #expect(await pipeline.standardOutput.text() == "sent 23 bytes\n")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            #expect(lines.count == 3 && ListenMetadata(lines[0])?.size == 23, "\(lines)")
            #expect(Array(lines.dropFirst()) == ["  first line", "  second line"])
        }
    }


    @Test("a payload that looks like a metadata line stays indented under the real one: it cannot forge a sender")
    func forgedMetadataLine() async throws {
        try await withListenCommand(["--count", "1"]) { path, listener in
            let forged = "hi\n2026-11-30T16:03:06.123Z message 5 bytes from uid=0 gid=0 pid=1 (connection 99)"
            let sent = try await runCLI(["send", path, forged])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            #expect(lines.count == 3, "\(lines)")
            #expect(lines.filter { ListenMetadata($0) != nil }.count == 1, "one metadata line only: \(lines)")
            #expect(lines.dropFirst().allSatisfy { $0.hasPrefix("  ") })
        }
    }

    @Test(
        "SIGTERM and SIGINT shut listen down gracefully: exit 0 and the socket file removed",
        arguments: [SIGTERM, SIGINT])
    func signals(signal: Int32) async throws {
        try await withListenCommand([]) { path, listener in
            #expect(fileStatus(path)?.isSocket == true)
            listener.signal(signal)
            #expect(await listener.waitForExit() == 0)
            #expect(fileStatus(path) == nil, "the socket file is still there")
        }
    }

    @Test(
        "interop: `printf hi | socat - UNIX-CONNECT:PATH` into listen --mode eof: printed, and acknowledged",
        .enabled(if: toolExists("socat"))
    )
    func socatInterop() async throws {
        try await self.interop(#"printf hi | socat - UNIX-CONNECT:"$1""#)
    }

    @Test(
        "interop: `printf hi | nc -N -U PATH` into listen --mode eof: printed, and acknowledged",
        .enabled(if: netcatIsOpenBSD)
    )
    func netcatInterop() async throws {
        try await self.interop(#"printf hi | nc -N -U "$1""#)
    }

    /// Runs the shell `command`, with the socket path as `$1`, against `listen --mode eof --count 1`.
    private func interop(_ command: String) async throws {
        try await withListenCommand(["--mode", "eof", "--count", "1"]) { path, listener in
            let client = try TestProcess.shell(command, [path])
            #expect(await client.waitForExit() == 0)
            #expect(Array(await client.standardOutput.data()) == [0, 0, 0, 2], "the 4-byte count")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            #expect(lines.count == 2 && ListenMetadata(lines[0])?.kind == "eof" && lines[1] == "  hi", "\(lines)")
        }
    }

    @Test("--connect prints every push; --count ends it with exit 0")
    func connectCount() async throws {
        try await withFramedTestServer(makeHandler: { Pusher(pushes: ["one", "two", "three"]) }) { _, path in
            let result = try await runCLI(["listen", "--connect", "--count", "2", "--format", "json", path])
            #expect(result.status == 0, "stderr: \(result.error)")
            let objects = result.output.split(separator: "\n").compactMap { jsonObject(String($0)) }
            #expect(objects.map { $0["payload"] as? String } == ["one", "two"])
            #expect(objects.allSatisfy { ($0["peer"] as? [String: Any])?["pid"] as? Int == Int(getpid()) })
        }
    }

    @Test("--connect: a server that goes away gracefully ends it with exit 0; a lost connection with exit 3")
    func connectUntilClosed() async throws {
        let held = HeldConnection()
        try await withFramedTestServer(makeHandler: { Pusher(pushes: ["hello"], held: held) }) { server, path in
            let listener = try TestProcess.socketIPC(["listen", "--connect", path])
            try await withProcess(listener) { listener in
                #expect(await listener.standardOutput.waitForLine(containing: "hello") == "  hello")
                let connection = try #require(held.connection.withLock { $0 })
                connection.close()
                #expect(await listener.waitForExit() == 3, "the server closed without going away")
                #expect(await listener.standardError.text().contains("error: "))
            }
            let graceful = try TestProcess.socketIPC(["listen", "--connect", path])
            try await withProcess(graceful) { listener in
                #expect(await listener.standardOutput.waitForLine(containing: "hello") == "  hello")
                server.shutdownGracefully()
                #expect(await listener.waitForExit() == 0)
            }
        }
    }

    @Test("--connect: SIGINT ends it with exit 0")
    func connectSignal() async throws {
        try await withFramedTestServer(makeHandler: { Pusher(pushes: ["hello"]) }) { _, path in
            let listener = try TestProcess.socketIPC(["listen", "--connect", path])
            try await withProcess(listener) { listener in
                #expect(await listener.standardOutput.waitForLine(containing: "hello") == "  hello")
                listener.signal(SIGINT)
                #expect(await listener.waitForExit() == 0)
            }
        }
    }
}

/// Starts `socket-ipc listen PATH options...` on `l.sock` in a new temporary directory, waits until it notes
/// `listening on PATH` on standard error, runs `body`, then stops it (SIGKILL if still running) and waits for it.
func withListenCommand<Result>(
    _ options: [String],
    _ body: (_ path: String, _ listener: TestProcess) async throws -> Result
) async throws -> Result {
    try await withTemporarySocketDirectory { directory in
        let path = directory + "/l.sock"
        return try await withProcess(try TestProcess.socketIPC(["listen", path] + options)) { listener in
            let listening = await listener.standardError.waitForLine(containing: "listening on")
            try #require(listening == "listening on \(path)", "listen did not start listening on \(path)")
            return try await body(path, listener)
        }
    }
}

/// A metadata line of `listen`: `TIME KIND N bytes from uid=U gid=G pid=P (connection C)`.
private struct ListenMetadata {
    var kind: String
    var size: Int
    var uid: UInt32
    var gid: UInt32
    var pid: Int32

    /// Parses `line`; `nil` when it is not a metadata line.
    init?(_ line: String) {
        let pattern =
            #/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+) (\d+) bytes? from uid=(\d+) gid=(\d+) pid=(\d+) \(connection \d+\)/#
        guard let match = line.wholeMatch(of: pattern), let size = Int(match.2), let uid = UInt32(match.3),
            let gid = UInt32(match.4), let pid = Int32(match.5)
        else { return nil }
        (self.kind, self.size, self.uid, self.gid, self.pid) = (String(match.1), size, uid, gid, pid)
    }
}

/// `line` parsed as a JSON object, or `nil`.
private func jsonObject(_ line: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
}

/// A test server's handler that pushes `pushes` to each client as it connects, and keeps the connection in `held`.
private struct Pusher: ConnectionHandler, Sendable {
    let pushes: [String]
    var held: HeldConnection? = nil

    func connectionDidOpen(_ connection: Connection) {
        self.held?.connection.withLock { $0 = connection }
        let pushes = self.pushes
        Task {
            for push in pushes { try? await connection.send(ByteBuffer(string: push)) }
        }
    }
}

/// The last connection a ``Pusher`` saw, for a test to close.
private final class HeldConnection: Sendable {
    let connection = Mutex<Connection?>(nil)
}

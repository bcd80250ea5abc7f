import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

/// A hostile server's text reaches the terminal only escaped: an error reply whose text carries escape sequences and
/// newlines prints as one line without an ESC byte; and input that never ends costs a framed message's maximum, not
/// all memory.
@Suite("socket-ipc against hostile servers and endless input", .timeLimit(.minutes(5)), .limitedConcurrency)
struct HostileServerTextTests {
    /// Fails every request with `text`.
    struct FailingHandler: ConnectionHandler {
        let text: String

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            reply.fail(SocketIPCError(.remoteError, self.text))
        }
    }

    @Test("an error reply's escape sequences and newlines are printed escaped, on one line")
    func escapedErrorReply() async throws {
        let hostile = "\u{1B}]0;PWNED\u{07}\u{1B}[31mRED\r\nerror: forged line\u{9B}2J"
        try await withFramedTestServer(makeHandler: { FailingHandler(text: hostile) }) { _, path in
            // --quiet: no note (a loaded machine may take a second to send the hello), only the error.
            let result = try await runCLI(["request", "--quiet", path, "hi"])
            #expect(result.status == 1, "stderr: \(result.error)")
            let lines = result.error.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.count == 2 && lines[1].isEmpty, "one line: \(result.error)")
            #expect(!result.error.utf8.contains(0x1B), "no ESC: \(result.error)")
            #expect(!result.error.utf8.contains(0x07) && !result.error.utf8.contains(0x0D))
            #expect(!result.error.unicodeScalars.contains("\u{9B}"), "no C1 CSI")
            #expect(result.error.contains("\\x1b]0;PWNED"), "\(result.error)")
            // The library escaped the text already: the CLI does not escape its escapes again.
            #expect(!result.error.contains(#"\\x1b"#), "escaped twice: \(result.error)")
        }
    }

    /// Echoes every request.
    struct EchoingHandler: ConnectionHandler {
        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            reply.succeed(request)
        }
    }

    @Test("a reply, and a message serve prints, with newlines and carriage returns stay on one line, escaped: no peer forges a line; a long one is cut at 1 KiB")
    func repliesAndMessagesOnOneLine() async throws {
        let forging = "hi\nerror: the server says your disk is full\rX\u{2028}Y\u{85}Z\u{0B}\u{0C}"
        let escaped = #""hi\nerror: the server says your disk is full\x0dX\u{2028}Y\u{0085}Z\x0b\x0c""#
        try await withFramedTestServer(makeHandler: { EchoingHandler() }) { _, path in
            // Before, the reply's newline and carriage return reached the terminal as they were.
            let result = try await runCLI(["request", "--quiet", path, forging])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "reply: \(escaped)\n", "\(result.output)")
            let long = try await runCLI(["request", "--quiet", path, String(repeating: "é", count: 600)])
            #expect(long.output == "reply: \"\(String(repeating: "é", count: 512))\"…\n", "\(long.output)")
        }
        try await withServeCommand { path, server in
            let sent = try await runCLI(["send", "--socket", path, forging])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            let printed = await server.standardOutput.waitForLine(containing: "message")
            #expect(printed == "message \(forging.utf8.count) bytes: \(escaped)")
        }
    }

    @Test(
        "probe prints a listener's process name, which the process chose, escaped",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3")
    )
    func probeEscapesProcessName() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/named.sock"
            // A listener that names itself with escape sequences (prctl(PR_SET_NAME)), then holds what it accepts.
            let script = #"""
                import ctypes, socket, sys
                ctypes.CDLL(None).prctl(15, b"\x1b[31mEVIL\x07", 0, 0, 0)
                s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
                print("ready", flush=True)
                held = []
                while True: held.append(s.accept()[0])
                """#
            let all = try await Self.probeOutput(ofListener: script, at: path)
            // Before, the name's ESC and BEL bytes reached the terminal as they were.
            #expect(!all.utf8.contains(0x1B) && !all.utf8.contains(0x07), "\(all)")
            #expect(all.contains(#"\x1b[31mEVIL\x07"#), "\(all)")
            // JSON escapes it its own way: the name as the process set it, not escaped for a terminal first (before,
            // a JSON reader got the text `\x1b[31mEVIL\x07`, another name).
            let json = try await Self.probeOutput(ofListener: script, at: directory + "/named-json.sock", arguments: ["--json"])
            #expect(!json.utf8.contains(0x1B) && !json.utf8.contains(0x07), "\(json)")
            let line = try #require(json.split(separator: "\n").first { $0.hasPrefix("{") })
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let peer = try #require(object["peer"] as? [String: Any], "\(object)")
            #expect(peer["command"] as? String == "\u{1B}[31mEVIL\u{07}", "\(peer)")
        }
    }

    @Test(
        "probe prints a server's going-away text, which the server chose, escaped",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3")
    )
    func probeEscapesGoingAwayText() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/leaving.sock"
            // A framed server's hello, then going-away 0x00 whose text retitles the terminal and forges a line.
            let script = #"""
                import socket, sys
                s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
                print("ready", flush=True)
                text = b"bye\x1b]0;PWNED\x07\x1b[31m\nverdict: ok"
                frame = (2 + len(text)).to_bytes(4, "big") + b"\x05\x00" + text
                while True:
                    c = s.accept()[0]
                    c.sendall(b"SIPC\x01\x00\x00\x00" + frame)
                    c.close()
                """#
            let all = try await Self.probeOutput(ofListener: script, at: path)
            // Before, the text's ESC, BEL and newline reached the terminal as they were.
            #expect(!all.utf8.contains(0x1B) && !all.utf8.contains(0x07), "\(all)")
            #expect(!all.contains("\nverdict: ok"), "a forged line: \(all)")
            #expect(all.contains("PWNED"), "the text is shown: \(all)")
        }
    }

    /// What `socket-ipc probe PATH` prints, on standard output and error, of a listener at `path` that the Python
    /// `script` runs (its `sys.argv[1]` is `path`; it prints `ready` once it listens).
    static func probeOutput(ofListener script: String, at path: String, arguments: [String] = []) async throws -> String {
        let listener = try TestProcess(executable: "/usr/bin/python3", ["-c", script, path], timeLimit: .seconds(60))
        return try await withProcess(listener) { listener in
            #expect(await listener.standardOutput.waitForLine("ready"))
            let probed = try await runCLI(["probe"] + arguments + [path])
            return probed.output + probed.error
        }
    }

    @Test("probe prints a symbolic link's target, which whoever made the link chose, escaped")
    func probeEscapesLinkTarget() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/evil.sock"
            let target = "x\u{1B}]0;PWNED\u{07}\u{1B}[2J\nverdict: ok"
            #expect(symlink(target, path) == 0)
            let probed = try await runCLI(["probe", path])
            let all = probed.output + probed.error
            // Before, the target's ESC, BEL and newline reached the terminal as they were, twice.
            #expect(!all.utf8.contains(0x1B) && !all.utf8.contains(0x07), "\(all)")
            #expect(!all.contains("\nverdict: ok"), "a forged line: \(all)")
            #expect(all.contains(#"x\x1b]0;PWNED"#), "\(all)")
        }
    }

    @Test("call and watch refuse a response that is not JSON (exit 1, the text escaped), and print JSON whose strings hold controls of the terminal with them as JSON escapes", arguments: ["call", "watch"])
    func responsesReachTheTerminalEscaped(command: String) async throws {
        for (response, status, output) in [
            ("\"a\u{1B}]0;PWNED\u{07}\u{1B}[2Jb\"", Int32(1), ""),
            ("not json \u{1B}[31m", 1, ""),
            ("[\"\u{9B}31m\", \"\u{202E}txt.exe\", \"ok\u{7F}\", \"😀\"]", 0, #"["\u009b31m", "\u202etxt.exe", "ok\u007f", "😀"]"# + "\n"),
            // JSON that Foundation's JSONSerialization refuses is JSON all the same (RFC 8259's grammar).
            ("1e400", 0, "1e400\n"),
            (#"["\ud800", -0.5E+2]"#, 0, #"["\ud800", -0.5E+2]"# + "\n"),
            (String(repeating: "[", count: 600) + String(repeating: "]", count: 600), 0,
             String(repeating: "[", count: 600) + String(repeating: "]", count: 600) + "\n"),
            ("[1,]", 1, ""),
            ("\"tab\there\"", 1, ""),
        ] {
            var router = ServiceRouter(codec: RawResponseCodec())
            router.register(HostileEcho.self) { _, _ in response }
            router.registerServerStreaming(HostileWatch.self) { _, writer, _ in try await writer.write(response) }
            try await withServiceTestServer(router: router) { _, path in
                let method = command == "call" ? HostileEcho.name : HostileWatch.name
                let result = try await runCLI([command, "--quiet", path, method, "{}"])
                #expect(result.status == status, "stderr: \(result.error)")
                #expect(result.output == output)
                #expect(!(result.output + result.error).unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\u{9B}" || $0 == "\u{202E}" })
                if status == 1 { #expect(result.error.contains("the response is not JSON"), "\(result.error)") }
            }
        }
    }

    @Test("request --json gives a reply with C1 controls as base64, never raw", arguments: ["\u{9B}31m", "a\u{1B}b"])
    func jsonOfControlCharacters(payload: String) async throws {
        try await withFramedTestServer(makeHandler: { EchoingHandler() }) { _, path in
            let result = try await runCLI(["request", "--json", path, payload])
            #expect(result.status == 0, "stderr: \(result.error)")
            let object = try #require(try parseJSON(result.output))
            #expect(object["encoding"] as? String == "base64")
            #expect(object["reply"] as? String == Data(payload.utf8).base64EncodedString())
        }
    }

    @Test("endless input (@/dev/zero, a pipe that never ends) stops at the maximum with a usage error", arguments: [true, false])
    func endlessInput(fromFile: Bool) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/none.sock"
            let command =
                fromFile
                ? "'\(socketIPCBinary)' request '\(path)' @/dev/zero"
                : "yes | '\(socketIPCBinary)' request '\(path)'"
            let result = try await runShell(command + " 2>&1")
            let text = String(decoding: result.output, as: UTF8.self)
            #expect(result.status == 64, "\(text)")
            #expect(text.contains("is too large: more than 16777216 bytes"), "\(text)")
        }
    }
}

/// Echoes each request.
struct EchoingHandler: ConnectionHandler {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

/// A unary method of `JSON` requests whose response a hostile handler writes byte for byte.
private enum HostileEcho: ServiceMethod {
    static let name = "hostile.echo"
    typealias Request = [String: String]
    typealias Response = String
}

/// ``HostileEcho`` as a stream of one response.
private enum HostileWatch: ServiceMethod {
    static let name = "hostile.watch"
    typealias Request = [String: String]
    typealias Response = String
}

/// JSON, except that a `String` response is written as its bytes, unquoted: what a hostile server sends.
private struct RawResponseCodec: MessageCodec {
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        if let text = value as? String { return ByteBuffer(string: text) }
        return try JSONCodec().encode(value)
    }

    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        try JSONCodec().decode(type, from: buffer)
    }
}

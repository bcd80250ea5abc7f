import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("socket-ipc command line")
struct CLITests {
    @Test("demo: servers and client processes talk, and the socket files are removed")
    func demo() async throws {
        let result = try await runCLI(["demo"])
        #expect(result.status == 0, "stderr: \(result.error)")
        #expect(result.output.contains("[server eof]    received 14 bytes"))
        #expect(result.output.contains("ack: 14"))
        #expect(result.output.contains("[server framed] one-way message: \"a one-way framed message\""))
        #expect(result.output.contains("server pushed: \"welcome"))
        #expect(result.output.components(separatedBy: "reply: \"pong for ping #").count == 21)
        #expect(result.output.contains("demo finished: socket files removed"))
    }

    @Test("a server killed with SIGKILL leaves its socket file; the next server on the path starts and answers")
    func staleSocketAfterKill() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let first = try CLIProcess(["serve", "--socket", path])
            #expect(await first.waitForLine(containing: "listening on") != nil)
            first.signal(SIGKILL)
            _ = await first.waitForExit()
            #expect(fileIdentity(path) != nil, "the killed server left its socket file")

            let second = try CLIProcess(["serve", "--socket", path])
            defer { Task { await second.stop() } }
            #expect(await second.waitForLine(containing: "listening on") != nil)
            let reply = try await runCLI(["request", "--socket", path, "after restart"])
            #expect(reply.status == 0)
            #expect(reply.output.contains("reply: \"after restart\""))
            await second.stop()
        }
    }

    @Test("a second server on a live path fails with a clear error; the first keeps its socket and keeps answering")
    func secondServer() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let first = try CLIProcess(["serve", "--socket", path])
            #expect(await first.waitForLine(containing: "listening on") != nil)
            let before = try #require(fileIdentity(path))
            let second = try await runCLI(["serve", "--socket", path])
            #expect(second.status == 1)
            #expect(second.error.contains("another server is serving on \(path)"))
            #expect(fileIdentity(path)?.inode == before.inode)
            let reply = try await runCLI(["request", "--socket", path, "still me"])
            #expect(reply.output.contains("reply: \"still me\""))
            await first.stop()
        }
    }

    @Test("the socket file gets its permissions whatever the umask",
          arguments: [("000", "0600", UInt32(0o600)), ("077", "0600", 0o600), ("000", "0660", 0o660), ("077", "0660", 0o660)])
    func permissionsUnderUmask(umask: String, permissions: String, expected: UInt32) async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let server = try CLIProcess(
                ["serve", "--socket", path, "--permissions", permissions],
                shell: "umask \(umask); exec \"$0\" \"$@\""
            )
            #expect(await server.waitForLine(containing: "listening on") != nil)
            #expect(fileIdentity(path)?.permissions == expected)
            await server.stop()
        }
    }

    @Test("SIGTERM shuts the server down gracefully: exit 0 and the socket file removed")
    func sigterm() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let server = try CLIProcess(["serve", "--socket", path])
            #expect(await server.waitForLine(containing: "listening on") != nil)
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
            #expect(fileIdentity(path) == nil)
        }
    }

    @Test("a path longer than sun_path allows is refused with its length and the limit")
    func tooLongPath() async throws {
        let path = "/tmp/" + String(repeating: "x", count: 120)
        let result = try await runCLI(["serve", "--socket", path])
        #expect(result.status == 1)
        #expect(result.error.contains("socket path is 125 bytes; the limit is 107"))
    }

    @Test("probe tells a framed server from nothing at all")
    func probe() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let nothing = try await runCLI(["probe", "--socket", path])
            #expect(nothing.status == 1)
            #expect(nothing.error.contains("does not exist"))
            let server = try CLIProcess(["serve", "--socket", path])
            #expect(await server.waitForLine(containing: "listening on") != nil)
            let found = try await runCLI(["probe", "--socket", path])
            #expect(found.status == 0)
            #expect(found.output.contains("framed SocketIPC server (protocol version 1)"))
            await server.stop()
        }
    }

    @Test("send --eof streams standard input as one message")
    func sendStandardInput() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let server = try CLIProcess(["serve", "--socket", path, "--mode", "eof"])
            #expect(await server.waitForLine(containing: "listening on") != nil)
            let text = String(repeating: "0123456789", count: 10_000)
            let result = try await runCLI(["send", "--socket", path, "--eof"], stdin: text)
            #expect(result.status == 0)
            #expect(result.output.contains("ack: 100000"))
            #expect(await server.waitForLine(containing: "received 100000 bytes") != nil)
            await server.stop()
        }
    }
}

@Suite("Interoperability with socat and nc", .enabled(if: toolExists("socat") && toolExists("nc")))
struct InteropTests {
    @Test("socat and nc -U as EOF-style clients get the 4-byte acknowledgement")
    func plainToolsAsClients() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let server = try CLIProcess(["serve", "--socket", path, "--mode", "eof"])
            #expect(await server.waitForLine(containing: "listening on") != nil)

            let socat = await runShell("printf hi | socat -t5 - UNIX-CONNECT:\(path)")
            #expect(socat.status == 0)
            #expect(Array(socat.output) == [0, 0, 0, 2])
            #expect(await server.waitForLine(containing: "received 2 bytes") != nil)

            let netcat = await runShell("printf hello | nc -N -U \(path)")
            #expect(netcat.status == 0)
            #expect(Array(netcat.output) == [0, 0, 0, 5])
            #expect(await server.waitForLine(containing: "received 5 bytes") != nil)
            await server.stop()
        }
    }

    @Test("socat as the server receives socket-ipc send --eof")
    func plainToolAsServer() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let received = directory + "/received"
            let socat = try CLIProcess([], shell: "exec socat -u UNIX-LISTEN:\(path) CREATE:\(received)")
            // socat prints nothing when it listens: wait for the socket file (bounded), then connect.
            var waited = 0
            while fileIdentity(path) == nil && waited < 1000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            let result = try await runCLI(["send", "--socket", path, "--eof", "hello socat"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(await socat.waitForExit() == 0)
            #expect(try String(contentsOfFile: received, encoding: .utf8) == "hello socat")
        }
    }
}

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

@Suite("socket-ipc serve", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServeCommandTests {
    @Test("serve prints exactly `listening on PATH` once it accepts connections, and echoes requests")
    func listeningLine() async throws {
        // withServeCommand requires the line to be exactly `listening on PATH` before it runs this.
        try await withServeCommand { path, _ in
            let reply = try await runCLI(["request", "--socket", path, "echo me"])
            #expect(reply.status == 0, "stderr: \(reply.error)")
            #expect(reply.output == "reply: \"echo me\"\n")
        }
    }

    @Test("echoes of 64 KiB or more that clients leave unread hold at most 64 MiB per user: the next is refused, and once they are gone a large echo goes again (before, 200 connections with a 16 MB echo each, unread, took the server to 3.2 GB)")
    func unreadEchoesPerUser() async throws {
        try await withServeCommand { path, server in
            // 8 connections with a request of 15 MiB each, not one reply read: 120 MiB of echoes, above the 64.
            var hostile: [Int32] = []
            defer { for descriptor in hostile { _ = closeDescriptor(descriptor) } }
            let payload = [UInt8](repeating: 0x61, count: 15 << 20)
            // The hello, then length 5 + payload, kind 0x02 (request), id 1, payload.
            let frames: [UInt8] = Array("SIPC".utf8) + [1, 0, 0, 0]
                + withUnsafeBytes(of: UInt32(5 + payload.count).bigEndian, Array.init) + [0x02, 0, 0, 0, 1] + payload
            for _ in 0..<8 {
                let descriptor = makeUnixStreamSocket()
                hostile.append(descriptor)
                try #require(connectUnixSocket(descriptor, to: path) == 0, "connect: \(errno)")
                // Written on threads of their own: each send blocks until the server has read the request.
                Thread.detachNewThread { [frames] in _ = sendWithoutSignal(descriptor, frames) }
            }
            let note = await server.standardError.waitForLine(containing: "refused a request")
            #expect(note?.contains("echoes not yet read already hold 64 MiB") == true, "\(note ?? "nil")")
            for descriptor in hostile { _ = shutdown(descriptor, Int32(SHUT_RDWR)) }
            // The connections closed, their echoes are given back: a large echo goes again.
            let file = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("large")
            try Data(repeating: 0x62, count: 1 << 20).write(to: file)
            // The server notes each close once its echo's charge is given back (the close fails its writes first).
            for _ in 0..<8 { _ = await server.standardError.waitForLine(containing: "connection closed from") }
            let answered = try await runCLI(["request", path, "@" + file.path])
            #expect(answered.status == 0, "stderr: \(answered.error)")
        }
    }

    @Test("serve prints each one-way message with its size, as text or hex")
    func oneWayMessages() async throws {
        try await withServeCommand { path, server in
            let text = try await runCLI(["send", "--socket", path, "hello"])
            #expect(text.status == 0, "stderr: \(text.error)")
            #expect(await server.standardOutput.waitForLine(containing: "message") == "message 5 bytes: \"hello\"")
            let binary = try await runCLI(["send", "--socket", path], input: "\u{1}\u{2}")
            #expect(binary.status == 0, "stderr: \(binary.error)")
            #expect(await server.standardOutput.waitForLine(containing: "message") == "message 2 bytes: 0x0102")
        }
    }

    @Test("serve notes each connection on stderr with the peer's uid, gid and pid, and its close")
    func connectionLog() async throws {
        try await withServeCommand { path, server in
            let reply = try await runCLI(["request", path, "hi"])
            #expect(reply.status == 0, "stderr: \(reply.error)")
            let opened = try #require(await server.standardError.waitForLine(containing: "connection from"))
            #expect(opened.hasPrefix("connection from uid=\(getuid()) gid=\(getgid()) pid="), "\(opened)")
            let pid = opened.firstMatch(of: #/pid=(\d+)/#).map { String($0.1) }
            #expect(pid != nil && pid != "\(getpid())")
            let closed = try #require(await server.standardError.waitForLine(containing: "connection closed"))
            #expect(closed.contains("uid=\(getuid())") && closed.contains("pid=\(pid ?? "")"), "\(closed)")
        }
    }

    @Test("serve shuts down gracefully on SIGHUP (its terminal closed): exit 0, socket file removed; under nohup (SIGHUP ignored) it goes on serving")
    func hangUp() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try await withServeCommand(at: path) { server in
                server.signal(SIGHUP)
                #expect(await server.waitForExit() == 0)
            }
            #expect(fileStatus(path) == nil, "the socket file was left after SIGHUP")
            // As `nohup` starts it: SIGHUP ignored.
            try await withServeCommand(at: path, shellSetup: "trap '' HUP") { server in
                server.signal(SIGHUP)
                let reply = try await runCLI(["request", "--socket", path, "--timeout", "10", "still here"])
                #expect(reply.status == 0 && reply.output == "reply: \"still here\"\n", "\(reply)")
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
            }
        }
    }

    @Test("a server killed with SIGKILL leaves its socket file; the next server on the path replaces it and answers")
    func staleSocketAfterKill() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try await withServeCommand(at: path) { first in
                first.signal(SIGKILL)
                #expect(await first.waitForExit() == 128 + SIGKILL)
            }
            #expect(fileStatus(path)?.isSocket == true, "the killed server left its socket file behind")

            try await withServeCommand(at: path) { _ in
                let reply = try await runCLI(["request", "--socket", path, "after restart"])
                #expect(reply.status == 0, "stderr: \(reply.error)")
                #expect(reply.output.contains("reply: \"after restart\""))
            }
        }
    }

    @Test("a second server on a live path fails and names it; the first keeps its socket file and keeps answering")
    func secondServerOnLivePath() async throws {
        try await withServeCommand { path, _ in
            let before = try #require(fileStatus(path))

            let second = try await runCLI(["serve", "--socket", path])
            #expect(second.status == 73, "EX_CANTCREAT: the socket cannot be served")
            #expect(
                second.error.hasPrefix("error: another server is serving on \(path)"), "stderr: \(second.error)")
            #expect(!second.output.contains("listening on"))

            #expect(fileStatus(path) == before, "the socket file was replaced")
            let reply = try await runCLI(["request", "--socket", path, "still me"])
            #expect(reply.status == 0, "stderr: \(reply.error)")
            #expect(reply.output.contains("reply: \"still me\""))
        }
    }

    @Test(
        "the socket file gets the permissions asked for, whatever the umask",
        arguments: [
            (umask: "000", permissions: nil, expected: 0o600),
            (umask: "077", permissions: nil, expected: 0o600),
            (umask: "000", permissions: "0660", expected: 0o660),
            (umask: "077", permissions: "0660", expected: 0o660),
        ] as [(umask: String, permissions: String?, expected: UInt32)]
    )
    func permissionsUnderUmask(umask: String, permissions: String?, expected: UInt32) async throws {
        let options = permissions.map { ["--permissions", $0] } ?? []
        try await withServeCommand(options, shellSetup: "umask \(umask)") { path, _ in
            let status = try #require(fileStatus(path))
            #expect(status.isSocket)
            #expect(
                status.permissions == expected,
                "mode \(String(status.permissions, radix: 8)), expected \(String(expected, radix: 8))"
            )
        }
    }

    @Test(
        "SIGTERM and SIGINT shut the server down gracefully: exit 0 and the socket file removed",
        arguments: [SIGTERM, SIGINT])
    func gracefulShutdownOnSignal(signal: Int32) async throws {
        try await withServeCommand { path, server in
            #expect(fileStatus(path) != nil)
            server.signal(signal)
            #expect(await server.waitForExit() == 0)
            #expect(fileStatus(path) == nil, "the socket file is still there")
            #expect(await server.standardError.text() == "")
        }
    }

    @Test("a path longer than sun_path allows is refused with its length and the limit")
    func tooLongPath() async throws {
        let path = "/tmp/" + String(repeating: "x", count: 120)
        #if os(Linux)
            let limit = 107
        #else
            let limit = 103
        #endif
        for command in [["serve", "--socket", path], ["request", "--socket", path, "hi"]] {
            let result = try await runCLI(command)
            // A path that cannot be one is a bad argument for a server and a client alike: 64 (EX_USAGE).
            #expect(result.status == 64, "an invalid path: ExitStatus's table")
            #expect(result.error.hasPrefix("error: socket path is \(path.utf8.count) bytes; the limit is \(limit)"))
            #expect(!result.error.contains("Error:"), "not ArgumentParser's report: \(result.error)")
        }
        #expect(fileStatus(path) == nil)
    }

    @Test("--create-parent makes a missing parent directory; without it the error names the directory")
    func createParent() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/run/s.sock"
            let refused = try await runCLI(["serve", "--socket", path])
            #expect(refused.status == 73, "a missing parent directory: the socket cannot be served, EX_CANTCREAT")
            #expect(refused.error.hasPrefix("error: "))
            #expect(refused.error.contains(directory + "/run"), "stderr: \(refused.error)")

            try await withServeCommand(at: path, ["--create-parent"]) { _ in
                #expect(fileStatus(path)?.isSocket == true)
            }
        }
    }
    #if os(Linux)
        @Test("serve started without standard input and error gets /dev/null there, not SwiftNIO's descriptors, which its lines would go into")
        func closedStandardDescriptors() async throws {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/s.sock"
                let server = try TestProcess.shell(#"exec "$0" serve --socket "$1" <&- 2>&-"#, [path])
                try await withProcess(server) { server in
                    #expect(await server.standardOutput.waitForLine(containing: "listening on") == "listening on \(path)")
                    for descriptor in [0, 2] {
                        let target = readLink("/proc/\(server.processID)/fd/\(descriptor)")
                        // Before, 0 was an epoll descriptor and 2 a timerfd of an event loop.
                        #expect(target == "/dev/null", "descriptor \(descriptor): \(target ?? "none")")
                    }
                    let result = try await runCLI(["request", path, "still served"])
                    #expect(result.status == 0 && result.output == "reply: \"still served\"\n", "\(result)")
                }
            }
        }
    #endif
}

#if os(Linux)
    /// Where the symbolic link at `path` points, or `nil`.
    private func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { return nil }
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
#endif


import Foundation
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Who may connect: the default policy, `--allow-uid`, `--allow-gid` and `--allow-anyone`, tried with client processes
/// of another user (run with `setpriv`) against a socket file that everyone may open, so that the policy is all
/// that stands between them and the server.
@Suite(
    "serve: who may connect",
    .timeLimit(.minutes(5)),
    .enabled(if: canRunAsAnotherUser, "needs root and setpriv to run clients as another user"),
    .limitedConcurrency
)
struct AccessControlTests {
    /// Starts `serve` on a socket that every user can open (mode 0666 in a 0755 directory) and runs `body`.
    private func withOpenServer(
        mode: String = "framed",
        _ options: [String],
        _ body: (_ path: String, _ server: TestProcess) async throws -> Void
    ) async throws {
        try await withServeCommand(["--mode", mode, "--permissions", "0666"] + options, directoryMode: 0o755, body)
    }

    /// Runs `socket-ipc arguments...` as another user to completion.
    private func runAsOtherUser(groups: [UInt32] = [], _ arguments: [String]) async throws -> (status: Int32, output: String, error: String) {
        let process = try TestProcess(executable: "/usr/bin/setpriv", asOtherUser(groups: groups) + [socketIPCBinary] + arguments)
        let status = await process.waitForExit()
        return (status, await process.standardOutput.text(), await process.standardError.text())
    }

    @Test("by default only the server's own user (and root) is served, even when the file mode lets everyone in")
    func defaultPolicyRefusesOtherUsers() async throws {
        try await self.withOpenServer([]) { path, server in
            let refused = try await self.runAsOtherUser(["request", "--socket", path, "hi"])
            #expect(refused.status == 4, "4: refused")
            #expect(refused.error.contains("authorization policy refused"), "stderr: \(refused.error)")
            // The fix, as probe gives it: the refused user's uid in the server's option.
            #expect(refused.error.contains("socket-ipc serve --allow-uid 65534"), "stderr: \(refused.error)")
            #expect(refused.output == "")

            let mine = try await runCLI(["request", "--socket", path, "hi"])
            #expect(mine.status == 0)
            #expect(mine.output == "reply: \"hi\"\n")

            let line = await server.standardError.waitForLine(containing: "refusing connection")
            #expect(line?.contains("authorization policy") == true, "log: \(line ?? "none")")
            #expect(line?.contains("socketipc.peer.uid=\(otherUserID)") == true, "log: \(line ?? "none")")
            #expect(line?.contains("is not same user") == true || line?.contains("is not root") == true, "log: \(line ?? "none")")
            #expect(line?.contains("protocol error") == false)
        }
    }

    @Test("an EOF-style server refuses another user by default, and the refused client fails instead of seeing delivery")
    func defaultPolicyRefusesOtherUsersEOF() async throws {
        try await self.withOpenServer(mode: "eof", []) { path, server in
            let refused = try await self.runAsOtherUser(["send", "--eof", "--socket", path, "hello"])
            #expect(refused.status == 3, "stdout: \(refused.output) stderr: \(refused.error)")
            #expect(refused.error.hasPrefix("error: "), "stderr: \(refused.error)")

            let mine = try await runCLI(["send", "--eof", "--socket", path, "hello"])
            #expect(mine.status == 0)
            #expect(mine.output == "ack: 5\n")

            let line = await server.standardError.waitForLine(containing: "refusing connection")
            #expect(line?.contains("socketipc.peer.uid=\(otherUserID)") == true, "log: \(line ?? "none")")
        }
    }

    @Test("--allow-uid serves that user too")
    func allowUser() async throws {
        try await self.withOpenServer(["--allow-uid", "\(otherUserID)"]) { path, _ in
            let served = try await self.runAsOtherUser(["request", "--socket", path, "hi"])
            #expect(served.status == 0, "stderr: \(served.error)")
            #expect(served.output == "reply: \"hi\"\n")
        }
    }

    @Test(
        "--allow-gid serves members of the group, by a supplementary group too (SO_PEERGROUPS), and no one else",
        .enabled(if: runsOnLinux, "supplementary groups of a peer come from SO_PEERGROUPS, which only Linux has")
    )
    func allowGroup() async throws {
        try await self.withOpenServer(["--allow-gid", "4242"]) { path, _ in
            let member = try await self.runAsOtherUser(groups: [4242], ["request", "--socket", path, "hi"])
            #expect(member.status == 0, "stderr: \(member.error)")
            #expect(member.output == "reply: \"hi\"\n")

            let stranger = try await self.runAsOtherUser(groups: [4243], ["request", "--socket", path, "hi"])
            #expect(stranger.status == 4, "4: refused")
            #expect(stranger.error.contains("authorization policy refused"), "stderr: \(stranger.error)")
        }
    }

    @Test("--allow-anyone serves every user the file mode lets in")
    func allowAnyone() async throws {
        try await self.withOpenServer(["--allow-anyone"]) { path, _ in
            let served = try await self.runAsOtherUser(["request", "--socket", path, "hi"])
            #expect(served.status == 0, "stderr: \(served.error)")
            #expect(served.output == "reply: \"hi\"\n")
        }
    }

    @Test("one user at its connection limit with silent connections: another user is still served, and the same user again once the silent ones time out")
    func perUserLimitDoesNotLockOutOthers() async throws {
        let options = [
            "--allow-uid", "\(otherUserID)", "--max-connections-per-user", "4", "--handshake-timeout", "2",
        ]
        try await self.withOpenServer(options) { path, server in
            // Four connections that never send a hello hold this user's four slots; the server accepts in the
            // order of the connects, so the fifth is closed at once, before any hello.
            let silent = try (0..<4).map { _ in try RawUnixSocket(connectingTo: path) }
            let fifth = try RawUnixSocket(connectingTo: path)
            let refused = await fifth.readUntilClosed()
            #expect(refused.closed)
            #expect(refused.bytes.isEmpty, "the refused connection got \(refused.bytes.count) bytes")

            let other = try await self.runAsOtherUser(["request", "--socket", path, "hi"])
            #expect(other.status == 0, "another user must be served: \(other.error)")
            #expect(other.output == "reply: \"hi\"\n")

            // The silent connections are closed once their handshake time is up; then this user is served again.
            for connection in silent {
                let ended = await connection.readUntilClosed()
                #expect(ended.closed, "a silent connection was not closed by the handshake timeout")
            }
            let again = try await runCLI(["request", "--socket", path, "hi"])
            #expect(again.status == 0, "stderr: \(again.error)")
            #expect(again.output == "reply: \"hi\"\n")
            let line = await server.standardError.waitForLine(containing: "refusing connection")
            #expect(line?.contains("maximumConnectionsPerUser") == true, "log: \(line ?? "none")")
        }
    }

    @Test("connections that have not sent their hello are capped per user: the next waits, unread, and is served once a handshake completes")
    func pendingHandshakesPerUser() async throws {
        try await self.withOpenServer(["--max-pending-handshakes-per-user", "2", "--handshake-timeout", "30"]) { path, server in
            let first = try RawUnixSocket(connectingTo: path)
            let second = try RawUnixSocket(connectingTo: path)
            #expect(await first.read(count: 8) == serverFramedHello)
            #expect(await second.read(count: 8) == serverFramedHello)
            // Two handshakes pending: the third is parked, not refused.
            let third = try RawUnixSocket(connectingTo: path)
            #expect(third.write(framedHello + [0, 0, 0, 7, 0x02, 0, 0, 0, 1, 0x68, 0x69]))

            // The first finishes its handshake, with a request: its slot goes to the third, which is then served.
            #expect(first.write(framedHello + [0, 0, 0, 7, 0x02, 0, 0, 0, 1, 0x68, 0x69]))
            #expect(await first.read(count: 11) == [0, 0, 0, 7, 0x03, 0, 0, 0, 1, 0x68, 0x69])
            #expect(await third.read(count: 8 + 11) == serverFramedHello + [0, 0, 0, 7, 0x03, 0, 0, 0, 1, 0x68, 0x69])
            _ = second
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
            #expect(!(await server.standardError.text()).contains("refusing"))
        }
    }
}

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

@Suite(
    "serve: out of file descriptors",
    .timeLimit(.minutes(5)),
    .enabled(if: toolExists("prlimit"), "needs util-linux's prlimit (Linux only)"),
    .limitedConcurrency
)
struct AcceptBackoffTests {
    @Test("at the descriptor limit the server logs once, backs off, logs once more with a count when it recovers, and serves again")
    func descriptorExhaustionIsLoggedOnce() async throws {
        try await withServeCommand { path, server in
            // Lower the descriptor limit under the running server, below what its connection limits assume (a
            // server started with too low a limit serves fewer connections instead; see `lowLimitAtStart`).
            let lowered = try await runShell("prlimit --pid \(server.processID) --nofile=48:48")
            #expect(lowered.status == 0)
            // More connections than the server has descriptors left: the rest wait in the listen backlog.
            var held: [RawUnixSocket] = []
            for _ in 0..<64 {
                let connection = try RawUnixSocket(connectingTo: path)
                connection.write(framedHello)
                held.append(connection)
            }
            let failed = await server.standardError.waitForLine(containing: "accepting connections")
            #expect(failed?.contains("accepting connections failed") == true, "log: \(failed ?? "none")")
            #expect(failed?.contains("Too many open files") == true, "log: \(failed ?? "none")")
            // Stay out of descriptors for a while (the old accept loop logged about 100 lines a second), then
            // let go.
            try await Task.sleep(for: .milliseconds(500))
            held.removeAll()
            // A loaded machine may keep it out of descriptors long enough for a "still fails" line first.
            let recovered = await server.standardError.waitForLine(containing: "accepting connections again")
            #expect(recovered?.contains("accepting connections again") == true, "log: \(recovered ?? "none")")
            #expect(recovered?.contains("failures=") == true, "log: \(recovered ?? "none")")

            let served = try await runCLI(["request", "--socket", path, "hi"])
            #expect(served.status == 0, "stderr: \(served.error)")
            #expect(served.output == "reply: \"hi\"\n")
        }
    }

    @Test("a server started with fewer descriptors than its limits need serves fewer connections, half per user, so one user's silent connections never exhaust them for another")
    func lowLimitAtStart() async throws {
        let options = ["--permissions", "0666", "--allow-uid", "\(otherUserID)", "--handshake-timeout", "60"]
        try await withServeCommand(options, directoryMode: 0o755, shellSetup: "ulimit -n 256") { path, server in
            let warning = await server.standardError.waitForLine(containing: "RLIMIT_NOFILE")
            #expect(warning?.contains("serving at most 224 connections, 112 per user") == true, "log: \(warning ?? "none")")
            // More silent connections than the server has descriptors: past 112 they are refused, so the
            // server keeps descriptors for everyone else.
            let silent = try (0..<300).map { _ in try RawUnixSocket(connectingTo: path) }
            guard canRunAsAnotherUser else { return }
            let other = try await runCLIAsOtherUser(["request", "--socket", path, "hi"])
            #expect(other.status == 0, "another user must be served: \(other.error)")
            #expect(other.output == "reply: \"hi\"\n")
            _ = silent
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
            #expect(!(await server.standardError.text()).contains("Too many open files"))
        }
    }
}

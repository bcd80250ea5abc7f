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

@Suite(
    "serve: out of threads, with descriptor passing on",
    .timeLimit(.minutes(5)),
    .enabled(if: canRunAsAnotherUser && toolExists("prlimit"), "needs root, setpriv and prlimit (Linux only)"),
    .limitedConcurrency
)
struct ThreadLimitCLITests {
    @Test("a server whose thread limit cannot hold a relay for every connection serves fewer, half per user, so one user's connections never take the threads another's need")
    func lowThreadLimitAtStart() async throws {
        try await withTemporarySocketDirectory { directory in
            // The server runs as `nobody`, whose RLIMIT_NPROC applies (root's does not), in a directory of its own.
            chown(directory, uid_t(otherUserID), gid_t(otherUserID))
            chmod(directory, 0o755)
            let path = directory + "/s.sock"
            let asNobody = asOtherUser().joined(separator: " ")
            let setup = "exec prlimit --nproc=200:200 /usr/bin/setpriv \(asNobody) \"$0\" \"$@\""
            let options = ["--max-descriptors", "1", "--handshake-timeout", "60"]
            try await withServeCommand(at: path, options, shellSetup: setup) { server in
                let warning = try #require(await server.standardError.waitForLine(containing: "thread limit"))
                let perUser = try #require(Self.connectionsPerUser(in: warning), "log: \(warning)")
                #expect(perUser >= 1 && perUser < 100, "log: \(warning)")
                // More connections of root's (which the server serves as well as its own user's) than 200 threads
                // could hold with a relay of two threads each: past `perUser` they are refused.
                var held: [RawUnixSocket] = []
                for _ in 0..<(perUser + 40) {
                    let connection = try RawUnixSocket(connectingTo: path)
                    connection.write(framedHello)
                    held.append(connection)
                }
                // The server's own user is served meanwhile: its connection's relay still gets its threads.
                let other = try await runCLIAsOtherUser(["request", "--socket", path, "hi"])
                #expect(other.status == 0, "another user must be served: \(other.error)")
                #expect(other.output == "reply: \"hi\"\n")
                held.removeAll()
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
                #expect(!(await server.standardError.text()).contains("pthread_create"))
            }
        }
    }

    /// The `M` of "serving at most N connections, M per user" in a log line.
    private static func connectionsPerUser(in line: String) -> Int? {
        guard let range = line.range(of: #"connections, [0-9]+ per user"#, options: .regularExpression) else {
            return nil
        }
        return Int(line[range].dropFirst("connections, ".count).prefix { $0.isNumber })
    }
}

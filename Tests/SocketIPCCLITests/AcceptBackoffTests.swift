import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("serve: out of file descriptors", .timeLimit(.minutes(1)))
struct AcceptBackoffTests {
    @Test("at the descriptor limit the server logs once, backs off, logs once more with a count when it recovers, and serves again")
    func descriptorExhaustionIsLoggedOnce() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/s.sock"
            let server = try TestProcess.shell("ulimit -n 48; exec \"$0\" \"$@\"", ["serve", "--socket", path])
            try await withProcess(server) { server in
                #expect(await server.standardOutput.waitForLine(containing: "listening on") != nil)
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
                let recovered = await server.standardError.waitForLine(containing: "accepting connections")
                #expect(recovered?.contains("accepting connections again") == true, "log: \(recovered ?? "none")")
                #expect(recovered?.contains("failures=") == true, "log: \(recovered ?? "none")")

                let served = try await runCLI(["request", "--socket", path, "hi"])
                #expect(served.status == 0, "stderr: \(served.error)")
                #expect(served.output == "reply: \"hi\"\n")
            }
        }
    }
}

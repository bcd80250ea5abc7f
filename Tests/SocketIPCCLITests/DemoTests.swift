import Testing

@Suite("socket-ipc demo", .timeLimit(.minutes(1)))
struct DemoTests {
    @Test("demo: both servers and the client processes talk, and the socket files are removed")
    func demo() async throws {
        let result = try await runCLI(["demo"])
        #expect(result.status == 0, "stderr: \(result.error)")
        let lines = result.output.split(separator: "\n").map(String.init)
        // What the servers saw.
        #expect(lines.contains { $0.hasPrefix("[server eof]") && $0.contains("received 14 bytes") })
        #expect(
            lines.contains {
                $0.hasPrefix("[server framed]") && $0.contains("one-way message: \"a one-way framed message\"")
            })
        #expect(lines.contains { $0.hasPrefix("[server framed]") && $0.contains("answered 20 requests") })
        // What the clients saw.
        #expect(lines.contains { $0.hasPrefix("[client eof]") && $0.contains("ack: 14") })
        #expect(lines.contains { $0.hasPrefix("[client send]") && $0.contains("sent 24 bytes") })
        #expect(lines.contains { $0.hasPrefix("[client push]") && $0.contains("server pushed: \"welcome") })
        let replies = lines.filter { $0.hasPrefix("[client request]") && $0.contains("reply: \"pong for ping #") }
        #expect(replies.count == 20)
        #expect(lines.last == "demo finished: socket files removed")
    }
}

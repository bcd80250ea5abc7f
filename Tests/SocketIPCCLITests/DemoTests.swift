import SocketIPCTestSupport
import Testing

@Suite("socket-ipc demo", .timeLimit(.minutes(5)), .limitedConcurrency)
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
        // `listen --connect --count 1`: the push's metadata line, then its text.
        #expect(lines.contains { $0.hasPrefix("[client push]") && $0.contains(" message ") && $0.contains(" bytes from uid=") })
        #expect(lines.contains { $0.hasPrefix("[client push]") && $0.contains("welcome, pid ") })
        let replies = lines.filter { $0.hasPrefix("[client request]") && $0.contains("reply: \"pong for ping #") }
        #expect(replies.count == 20)
        // `request --count`'s summary.
        #expect(lines.contains { $0.hasPrefix("[client request]") && $0.contains("20 requests (10 at once) in ") })
        #expect(lines.last == "demo finished: socket files removed")
    }

    @Test("demo: a service client starts before its server, rides out a restart, and its watch carries on")
    func service() async throws {
        let result = try await runCLI(["demo"])
        #expect(result.status == 0, "stderr: \(result.error)")
        let lines = result.output.split(separator: "\n").map(String.init)
        // The typed service part, from its first line on: what the client saw, in order.
        let start = try #require(lines.firstIndex { $0.hasPrefix("[demo]") && $0.contains("a typed service") })
        let service = lines[start...].filter { $0.hasPrefix("[service client]") || $0.hasPrefix("[server service]") }
            .map { $0.replacing(#/ in \d+ ms:/#, with: " in N ms:") }
        // A retry takes about 100 ms, so a slow new server may cost the client another retry or two.
        var expected = [
            "[service client] state: connecting (attempt 1)",
            "[service client] state: waiting to retry (1) in N ms: connectionRefused",
            "[server service] the first server listens on ",
            "[service client] state: connecting (attempt 2)",
            "[service client] state: ready",
            "[service client] call demo.echo \"hello\" -> \"hello\"",
            "[service client] watch demo.counter: 0",
            "[service client] call demo.increment 1 -> 1",
            "[service client] watch demo.counter: 1",
            "[server service] the first server stopped and removed its socket file",
            // The first connection lasted less than the backoff's maximum delay: its loss counts as a failure.
            "[service client] state: waiting to retry (2) in N ms: peerGoingAway",
            "[server service] the second server listens on ",
            "[service client] state: connecting (attempt ",
            "[service client] state: ready",
            "[service client] watch demo.counter: 1 (resubscribed, from the second server)",
            "[service client] call demo.increment 2 -> 3",
            "[service client] watch demo.counter: 3",
            "[service client] state: shut down",
        ][...]
        for line in service {
            guard let next = expected.first else {
                Issue.record("more lines than expected: \(line)")
                break
            }
            if line.hasPrefix(next) {
                expected.removeFirst()
            } else if !(line.contains("state: connecting (attempt") || line.contains("state: waiting to retry")) {
                Issue.record("expected \(next), got \(line)")
                break
            }
        }
        #expect(expected.isEmpty, "missing: \(Array(expected))")
        #expect(lines.last == "demo finished: socket files removed")
    }
}

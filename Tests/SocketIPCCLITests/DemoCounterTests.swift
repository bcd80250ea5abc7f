import NIOCore
import SocketIPC
import SocketIPCTestSupport
import Testing

/// The demo's counter, watched and changed at once, as a fuzzer found it: `socket-ipc serve`'s `demo.counter`
/// watches cancelled while `demo.increment` calls change the value.
@Suite("socket-ipc serve's demo.counter under churn", .timeLimit(.minutes(5)), .limitedConcurrency)
struct DemoCounterTests {
    @Test("watches of demo.counter cancelled while demo.increment runs leave every event loop serving (before: the counter told its watchers under the lock their onTermination takes, a deadlock that stopped an event loop for good)")
    func watchesCancelledDuringIncrements() async throws {
        try await withServeCommand { path, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask { try await Self.churnWatches(at: path, rounds: 60, watches: 20) }
                    group.addTask { try await Self.increment(at: path, times: 3000) }
                }
                try await group.waitForAll()
            }
            // Connections land on every event loop: each must still answer.
            for _ in 0..<8 {
                let echoed = try await runCLI(["call", "--timeout", "20", path, "demo.echo", "1"])
                #expect(echoed.status == 0 && echoed.output == "1\n", "\(echoed)")
            }
        }
    }

    @Test("one user's watches of demo.counter are limited: the next is refused with resourceExhausted (before: a review's 10,000 watches, each woken by every increment, held another user's calls 2-3 s)")
    func watchesPerUserLimited() async throws {
        try await withServeCommand { path, _ in
            // Two connections: a connection takes at most 100 calls at once.
            let connections = [try await Client.connect(to: path), try await Client.connect(to: path)]
            defer { for connection in connections { connection.close() } }
            let (watching, watchingNow) = AsyncStream.makeStream(of: Void.self)
            let limit = 128
            let tasks = (0..<limit).map { index in
                Task {
                    try await connections[index % 2].serverStreaming(
                        method: "demo.counter",
                        request: ByteBuffer(string: "{}")
                    ) { _ in
                        // Each response: the first one (no increments here) says the watch is registered.
                        watchingNow.yield()
                    }
                }
            }
            defer { for task in tasks { task.cancel() } }
            var iterator = watching.makeAsyncIterator()
            for _ in 0..<limit { await iterator.next() }

            let refused = await #expect(throws: ServiceError.self) {
                try await connections[0].serverStreaming(method: "demo.counter", request: ByteBuffer(string: "{}")) { _ in }
            }
            #expect(refused?.code == "resourceExhausted", "\(String(describing: refused))")
        }
    }

    /// `rounds` times: opens `watches` watches of the counter on a new connection, waits until each has its first
    /// value (its handler runs), then cancels them all and closes the connection.
    private static func churnWatches(at path: String, rounds: Int, watches: Int) async throws {
        for _ in 0..<rounds {
            let connection = try await Client.connect(to: path)
            let (watching, watchingNow) = AsyncStream.makeStream(of: Void.self)
            let tasks = (0..<watches).map { _ in
                Task {
                    try await connection.serverStreaming(method: "demo.counter", request: ByteBuffer(string: "{}")) { _ in
                        watchingNow.yield()
                    }
                }
            }
            var iterator = watching.makeAsyncIterator()
            for _ in 0..<watches { await iterator.next() }
            for task in tasks { task.cancel() }
            connection.close()
            await connection.waitUntilClosed()
        }
    }

    /// Calls `demo.increment` `times` times on one connection; stops at the first failure, which it records.
    private static func increment(at path: String, times: Int) async throws {
        let connection = try await Client.connect(to: path)
        defer { connection.close() }
        for _ in 0..<times {
            do {
                _ = try await connection.call(method: "demo.increment", request: ByteBuffer(string: "1"), timeout: .seconds(20))
            } catch {
                Issue.record("demo.increment failed: \(error)")
                return
            }
        }
    }
}

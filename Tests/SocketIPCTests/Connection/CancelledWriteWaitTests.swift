import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A sender that waits for a peer that stopped reading (the queue above its high watermark) must be able to give up:
/// a caller's deadline cancels its task, and the wait ends with `CancellationError`.
@Suite("Cancelling a send that waits for a peer that does not read", .timeLimit(.minutes(2)))
struct CancelledWriteWaitTests {
    /// A raw server that sends its hello and then reads nothing, for the length of `body`, which gets its path and
    /// the task accepting its one connection; it closes that connection once `body` is done.
    func withSilentServer(_ body: (String, Task<RawSocket, any Error>) async throws -> Void) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let accepting = Task { () -> RawSocket in
                let peer = try await RawSocket.accepting(on: listener)
                try await peer.write(callsPeerHelloBytes)
                return peer
            }
            try await body(path, accepting)
            try await accepting.value.close()
        }
    }

    /// Sends 1 MiB one-way messages to a peer that reads nothing until one waits for room (and then, once cancelled,
    /// stops). One message of 8 MiB did not always wait: when the event loop had handed it to the channel before the
    /// channel said it was not writable, the send found room and returned, and nothing waited (a failure seen under
    /// load, in CI).
    static func fillUntilASendWaits(_ connection: Connection) -> Task<Void, any Error> {
        Task {
            let message = ByteBuffer(repeating: 0x61, count: 1 << 20)
            while true { try await connection.send(message) }
        }
    }

    /// A client connection to ``withSilentServer(_:)``, for the length of `body`.
    func withSilentPeer(_ body: (Connection) async throws -> Void) async throws {
        try await self.withSilentPeerSocket { connection, _ in try await body(connection) }
    }

    /// As ``withSilentPeer(_:)``, with the server's side of the connection, which reads only what `body` reads.
    func withSilentPeerSocket(_ body: (Connection, RawSocket) async throws -> Void) async throws {
        try await self.withSilentServer { path, accepting in
            let connection = try await Client.connect(to: path)
            defer { connection.abort() }
            try await body(connection, try await accepting.value)
        }
    }

    @Test("a request's timeout covers its wait for room while the peer reads nothing: timedOut, not a wait until the close")
    func requestTimeoutCoversTheWaitForRoom() async throws {
        try await withSilentPeer { connection in
            let filler = Self.fillUntilASendWaits(connection)
            defer { filler.cancel() }
            #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            // Before, the request waited for room until the connection closed, whatever its timeout.
            let result = await outcome(within: .seconds(30)) {
                _ = try await connection.request(ByteBuffer(string: "x"), timeout: .milliseconds(300))
            }
            #expect(result == "timedOut")
        }
    }

    @Test("a send waiting for room ends with CancellationError when its task is cancelled, then or before it waits", arguments: [false, true])
    func cancelledSend(cancelBeforeTheWait: Bool) async throws {
        try await withSilentPeer { connection in
            let started = AsyncStream.makeStream(of: Void.self)
            let sending = Task {
                started.continuation.yield()
                let message = ByteBuffer(repeating: 0x61, count: 1 << 20)
                // Until the queue is full and a send waits; the peer never reads.
                while true { try await connection.send(message) }
            }
            if cancelBeforeTheWait {
                for await _ in started.stream { break }
            } else {
                #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            }
            sending.cancel()
            // Before, the send waited for ever: the safety net turns that into a failure.
            let outcome = await outcome(within: .seconds(30)) { try await sending.value }
            #expect(outcome == "CancellationError")
            #expect(connection.state.withLock { $0.writersWaiting } == 0, "the cancelled wait is gone")
        }
    }

    @Test("a call whose deadline passes while its request waits for a peer that reads nothing: withConnection drops what is queued and returns, without waiting out the close timeout")
    func deadlineDropsTheQueue() async throws {
        try await self.withSilentServer { path, _ in
            var configuration = ClientConfiguration()
            // Before, the close waited this long for the queued request to be written.
            configuration.connection.closeTimeout = .seconds(3600)
            let outcome = await outcome(within: .seconds(30)) { [configuration] in
                try await Client.withConnection(to: path, configuration: configuration) { connection in
                    // 8 MiB: the socket takes a part, the rest stays queued.
                    let request = ByteBuffer(repeating: 0x61, count: 8 << 20)
                    _ = try await connection.call(method: "any", request: request, timeout: .milliseconds(200))
                }
            }
            #expect(outcome == "deadlineExceeded")
        }
    }
}

/// How `body` ended, within `limit`: "returned", the code of a `SocketIPCError`, the type of another error, or "still
/// running" (a safety net, not a synchronisation: what is tested ends at once or never). Returns at the limit without
/// waiting for `body`, which is cancelled then, so that the test can clean up what holds it.
func outcome(within limit: Duration, _ body: @escaping @Sendable () async throws -> Void) async -> String {
    let (outcomes, continuation) = AsyncStream.makeStream(of: String.self)
    let running = Task {
        do {
            try await body()
            continuation.yield("returned")
        } catch let error as SocketIPCError {
            continuation.yield("\(error.code)")
        } catch {
            continuation.yield("\(type(of: error))")
        }
    }
    let timer = Task {
        try? await Task.sleep(for: limit)
        continuation.yield("still running after \(limit)")
    }
    var first = ""
    for await outcome in outcomes {
        first = outcome
        break
    }
    timer.cancel()
    running.cancel()
    return first
}

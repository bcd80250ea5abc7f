import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `waitUntilPeerHasRead()` returns once the peer has read what was sent before it (its pong to a ping that follows,
/// answered in order), and fails with the peer's reason when the peer refused it: what the framed `socket-ipc send`
/// waits for before it says "sent" (found by a review: `sent`, exit 0, for a message the server dropped as too large).
@Suite("Waiting until the peer has read what was sent", .timeLimit(.minutes(2)), .limitedConcurrency)
struct WaitUntilPeerHasReadTests {
    /// Counts the one-way messages it receives.
    struct CountingHandler: ConnectionHandler {
        let received: Counter

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            self.received.value.add(1, ordering: .relaxed)
        }
    }

    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    @Test("after 100 one-way messages, the wait returns true once the server's handler has every one")
    func returnsOnceRead() async throws {
        let received = Counter()
        try await withFramedTestServer(makeHandler: { CountingHandler(received: received) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            for _ in 0..<100 { try await connection.send(ByteBuffer(string: "one-way")) }
            #expect(try await connection.waitUntilPeerHasRead())
            #expect(received.value.load(ordering: .relaxed) == 100)
        }
    }

    @Test("a message over the server's maximum: the wait fails with messageTooLarge, the server's going-away reason")
    func refusedAsTooLarge() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = 1000 },
            makeHandler: { CountingHandler(received: Counter()) }
        ) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            try await connection.send(ByteBuffer(repeating: 0x61, count: 2000))
            let error = await #expect(throws: SocketIPCError.self) { try await connection.waitUntilPeerHasRead() }
            #expect(error?.code == .messageTooLarge, "\(String(describing: error))")
            // Later waits fail at once with the same reason.
            let again = await #expect(throws: SocketIPCError.self) { try await connection.waitUntilPeerHasRead() }
            #expect(again?.code == .messageTooLarge)
        }
    }

    @Test("a version-1 peer without pings: false at once, nothing sent")
    func version1Peer() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/v1.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let accepting = Task { () -> RawSocket in
                let peer = try await RawSocket.accepting(on: listener)
                try await peer.write(helloBytes)
                return peer
            }
            let connection = try await Client.connect(to: path)
            defer { connection.abort() }
            let peer = try await accepting.value
            defer { peer.close() }
            #expect(try await connection.waitUntilPeerHasRead() == false)
            // The client's hello, and no ping behind it.
            #expect(try await peer.read(exactly: 8).prefix(4) == [0x53, 0x49, 0x50, 0x43])
            let (bytes, _) = try await peer.readAvailable(for: .milliseconds(100))
            #expect(bytes.isEmpty, "\(bytes)")
        }
    }

    @Test("a peer that never answers: the wait ends with CancellationError when its task is cancelled, and with the close when the connection closes")
    func peerThatNeverAnswers() async throws {
        try await CancelledWriteWaitTests().withSilentPeerSocket { connection, peer in
            let cancelled = Task { try await connection.waitUntilPeerHasRead() }
            // Its ping reached the peer: the client's hello, then a ping frame (length 5, kind 0x0B).
            #expect(try await peer.read(exactly: 8 + 9).dropFirst(8).prefix(5) == [0, 0, 0, 5, 0x0B])
            cancelled.cancel()
            let first = await outcome(within: .seconds(30)) { _ = try await cancelled.value }
            #expect(first == "CancellationError")
            let waiting = Task { try await connection.waitUntilPeerHasRead() }
            _ = try await peer.read(exactly: 9)
            // Shut down, not closed: the helper closes the descriptor once, after the body (a second close would close
            // another test's descriptor that took the number).
            _ = shutdown(peer.descriptor, Int32(SHUT_RDWR))
            let second = await outcome(within: .seconds(30)) { _ = try await waiting.value }
            #expect(second == "connectionClosed")
        }
    }

    @Test("a task cancelled before it waits gets CancellationError at once (found by a review: the wait went on until the peer closed)")
    func cancelledBeforeTheWait() async throws {
        try await CancelledWriteWaitTests().withSilentPeerSocket { connection, _ in
            let result = await outcome(within: .seconds(30)) {
                withUnsafeCurrentTask { $0?.cancel() }
                _ = try await connection.waitUntilPeerHasRead()
            }
            #expect(result == "CancellationError")
        }
    }

    @Test("a peer that answers the keepalive's pings but not this one: the wait fails with peerNotResponding at the next keepalive pong, not never (found by a review: `send` waited for good)")
    func peerThatSkipsThePing() async throws {
        try await CancelledWriteWaitTests().withSilentServer { path, accepting in
            var configuration = ClientConfiguration()
            configuration.connection.keepaliveInterval = .milliseconds(50)
            configuration.connection.keepaliveTimeout = .seconds(30)
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.abort() }
            let peer = try await accepting.value
            _ = try await peer.read(exactly: 8)
            // Answers every ping whose id is below 2^31 (the keepalive's), and no other.
            let answering = Task {
                while true {
                    for frame in try await peer.readFrames(1) where frame.kind == 0x0B {
                        guard let id = frame.id, id < 1 << 31 else { continue }
                        try await peer.write(frameBytes(kind: 0x0C, id: id, payload: []))
                    }
                }
            }
            defer { answering.cancel() }
            let result = await outcome(within: .seconds(30)) { _ = try await connection.waitUntilPeerHasRead() }
            #expect(result == "peerNotResponding")
        }
    }
}

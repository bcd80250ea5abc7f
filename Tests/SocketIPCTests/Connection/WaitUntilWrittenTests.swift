import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// `waitUntilWritten()` returns once the socket holds everything sent, not before: what `socket-ipc send` waits for
/// before it says "sent" (found by a review: the close after the send flushed for its close timeout, dropped the rest,
/// and the command said "sent" all the same).
@Suite("Waiting until what was sent is written", .timeLimit(.minutes(2)), .limitedConcurrency)
struct WaitUntilWrittenTests {
    @Test("a 4 MiB message to a peer that reads it late: the wait ends only after the peer read most of it")
    func endsOnceWritten() async throws {
        try await CancelledWriteWaitTests().withSilentPeerSocket { connection, peer in
            let message = ByteBuffer(repeating: 0x61, count: 4 << 20)
            let sending = Task { try await connection.send(message) }
            let done = Atomic<Bool>(false)
            let waiting = Task {
                try await sending.value
                try await connection.waitUntilWritten()
                done.store(true, ordering: .releasing)
            }
            // The client's hello, the frame's header and the first MiB: the socket cannot hold the rest yet.
            _ = try await peer.read(exactly: 8 + 5 + (1 << 20))
            let early = done.load(ordering: .acquiring)
            #expect(!early, "the wait ended with 3 MiB not written")
            _ = try await peer.read(exactly: 3 << 20)
            let outcome = await outcome(within: .seconds(30)) { try await waiting.value }
            #expect(outcome == "returned")
            let finished = done.load(ordering: .acquiring)
            #expect(finished)
        }
    }

    @Test("a peer that takes nothing for a whole close timeout ends the wait with timedOut, and the connection")
    func peerThatReadsNothing() async throws {
        try await CancelledWriteWaitTests().withSilentServer { path, accepting in
            var configuration = ClientConfiguration()
            configuration.connection.closeTimeout = .milliseconds(500)
            // The send queues all of it without waiting for room; what the socket does not take waits in the channel.
            configuration.connection.writeBufferHighWatermark = 64 << 20
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.abort() }
            _ = try await accepting.value
            // More than the socket takes without a reader.
            let message = ByteBuffer(repeating: 0x61, count: 8 << 20)
            let outcome = await outcome(within: .seconds(30)) {
                try await connection.send(message)
                try await connection.waitUntilWritten()
            }
            // Before this wait existed, the close after a send gave up as silently as this.
            #expect(outcome == "timedOut")
            #expect(!connection.isOpen)
        }
    }
}

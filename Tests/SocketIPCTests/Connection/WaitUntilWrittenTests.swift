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
}

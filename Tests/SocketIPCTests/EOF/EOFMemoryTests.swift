import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

/// Issue 9, section 3 (EOF style): a peer that sends one byte per write costs the server about what it sent, not
/// a read buffer per byte: the message is accumulated in one buffer that grows by doubling, and streamed chunks
/// are copied out of their (much larger) read buffers.
@Suite("EOF-style memory per byte received", .timeLimit(.minutes(5)), .limitedConcurrency)
struct EOFMemoryTests {
    /// Raises the server's time limit for one message (its handshake timeout) from 10 s to 120 s.
    static let generousTimeLimit: @Sendable (inout ServerConfiguration) -> Void = { $0.handshakeTimeout = .seconds(120) }

    @Test(
        "a message sent one byte per write is held in a buffer of at most about twice its size",
        arguments: ["on the event loop", "collecting"]
    )
    func accumulatedMessage(kind: String) async throws {
        let seen = Mutex<(size: Int, capacity: Int)?>(nil)
        let record: @Sendable (ByteBuffer) -> ByteBuffer? = { message in
            seen.withLock { $0 = (message.readableBytes, message.capacity) }
            return nil
        }
        let handler: EOFMessageHandler =
            kind == "collecting"
            ? .collecting { message, _ in record(message) }
            : .onEventLoop { message, _ in record(message) }
        // The message must end within the server's time limit (10 s by default); 20 000 one-byte writes can take
        // longer on a loaded 2-core machine running the whole suite. This test is about memory, not the limit
        // (EOFTimeLimitTests checks that).
        try await withEOFTestServer(handler: handler, configure: Self.generousTimeLimit) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([UInt8](repeating: 0x61, count: 20_000), chunkSize: 1)
            socket.shutdownWrite()
            _ = try await socket.readToEnd()
        }
        let (size, capacity) = try #require(seen.withLock { $0 })
        #expect(size == 20_000)
        #expect(capacity <= 2 * size + 1024, "held \(capacity) bytes for a \(size)-byte message")
    }

    @Test("a streaming handler's chunks of a one-byte-per-write message hold about what they contain")
    func streamedChunks() async throws {
        let worst = Mutex<(readable: Int, capacity: Int)>((0, 0))
        let total = Mutex(0)
        let handler = EOFMessageHandler.streaming { body, _ in
            for try await chunk in body {
                total.withLock { $0 += chunk.readableBytes }
                worst.withLock { worst in
                    if chunk.capacity - chunk.readableBytes > worst.capacity - worst.readable {
                        worst = (chunk.readableBytes, chunk.capacity)
                    }
                }
            }
            return nil
        }
        try await withEOFTestServer(handler: handler, configure: Self.generousTimeLimit) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([UInt8](repeating: 0x61, count: 2_000), chunkSize: 1)
            socket.shutdownWrite()
            _ = try await socket.readToEnd()
        }
        #expect(total.withLock { $0 } == 2_000)
        let (readable, capacity) = worst.withLock { $0 }
        #expect(capacity <= 2 * readable + 64, "a chunk of \(readable) bytes held \(capacity)")
    }
}

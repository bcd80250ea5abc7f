import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("EOF-style messages", .timeLimit(.minutes(5)), .limitedConcurrency)
struct EOFMessageTests {
    /// Acknowledges with the 4-byte big-endian count of bytes received.
    static let countingHandler = EOFMessageHandler.onEventLoop { message, _ in
        var acknowledgement = ByteBuffer()
        acknowledgement.writeInteger(UInt32(message.readableBytes))
        return acknowledgement
    }

    @Test("a message written in 1-byte pieces arrives whole at EOF and is acknowledged", arguments: [0, 1, 5000])
    func oneByteWrites(size: Int) async throws {
        // An EOF-style message must end within the server's time limit (its handshake timeout, 10 s by default); 5000
        // one-byte writes, each from a thread of its own, take longer than that on a loaded 2-core machine running the
        // whole suite. This test is about the bytes, not the limit (EOFTimeLimitTests checks that).
        try await withEOFTestServer(handler: Self.countingHandler, configure: { $0.handshakeTimeout = .seconds(120) }) {
            _,
            path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([UInt8](repeating: 0x61, count: size), chunkSize: 1)
            socket.shutdownWrite()
            let acknowledgement = try await socket.readToEnd()
            #expect(acknowledgement == withUnsafeBytes(of: UInt32(size).bigEndian) { Array($0) })
        }
    }

    @Test("Client.sendMessage gets the acknowledgement; the handler sees the whole message and the peer's credentials")
    func clientRoundTrip() async throws {
        let seen = Recorder()
        let handler = EOFMessageHandler.collecting { message, context in
            seen.items.withLock { $0.append("\(String(buffer: message)) from pid \(context.peer?.processID ?? -1)") }
            return ByteBuffer(string: "got it")
        }
        try await withEOFTestServer(handler: handler) { _, path in
            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
            #expect(String(buffer: acknowledgement) == "got it")
        }
        #expect(seen.items.withLock { $0 } == ["hello from pid \(getpid())"])
    }

    @Test("sendMessage works from an event loop (Client.withEventLoopExecutor), small and large, many at once")
    func fromEventLoop() async throws {
        // Fifty messages at once, some large: the server's time limit is raised as in `oneByteWrites`.
        try await withEOFTestServer(handler: Self.countingHandler, configure: { $0.handshakeTimeout = .seconds(120) }) {
            _,
            path in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        try await Client.withEventLoopExecutor {
                            // Every fifth message is larger than the socket buffer, so it cannot go out at once.
                            let size = index % 5 == 0 ? 1_000_000 : 100 + index
                            let acknowledgement = try await Client.sendMessage(ByteBuffer(repeating: 7, count: size), to: path)
                            #expect(acknowledgement.getInteger(at: 0, as: UInt32.self) == UInt32(size))
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test(
        "an acknowledgement larger than the socket buffer arrives whole; one over maximumAcknowledgementSize is messageTooLarge",
        arguments: [false, true]
    )
    func largeAcknowledgement(fromEventLoop: Bool) async throws {
        // Larger than a socket's buffers (about 200 KiB by default), so it takes many reads.
        let expected = ByteBuffer(bytes: (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        let acknowledgementSize = expected.readableBytes
        let handler = EOFMessageHandler.onEventLoop { _, _ in expected }
        try await withEOFTestServer(handler: handler, configure: { $0.handshakeTimeout = .seconds(120) }) { _, path in
            let send: @Sendable (Int) async throws -> ByteBuffer = { maximum in
                // From an event loop the client never waits inline, so the acknowledgement is read by the
                // process-wide waiter, a piece per readiness event; from elsewhere it starts inline.
                if fromEventLoop {
                    try await Client.withEventLoopExecutor {
                        try await Client.sendMessage(ByteBuffer(string: "hi"), to: path, maximumAcknowledgementSize: maximum)
                    }
                } else {
                    try await Client.sendMessage(ByteBuffer(string: "hi"), to: path, maximumAcknowledgementSize: maximum)
                }
            }
            let acknowledgement = try await send(acknowledgementSize)
            #expect(acknowledgement == expected)
            let error = await #expect(throws: SocketIPCError.self) { try await send(acknowledgementSize - 1) }
            #expect(error?.code == .messageTooLarge)
        }
    }

    @Test("a message over the maximum closes that connection and the send throws connectionClosed; the server goes on")
    func tooLarge() async throws {
        let handler = EOFMessageHandler.onEventLoop(maximumSize: 1000) { message, _ in ByteBuffer(string: "ok \(message.readableBytes)") }
        try await withEOFTestServer(handler: handler) { _, path in
            // One byte over: the server leaves it unread, so the client's read fails instead of seeing a clean end.
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(ByteBuffer(repeating: 1, count: 1001), to: path)
            }
            #expect(error?.code == .connectionClosed)
            let accepted = try await Client.sendMessage(ByteBuffer(repeating: 1, count: 1000), to: path)
            #expect(String(buffer: accepted) == "ok 1000")
        }
    }

    @Test("a 256 MiB message streams through in bounded memory")
    func streaming() async throws {
        let chunkSize = 1024 * 1024
        let chunks = 256
        let largestChunk = Atomic<Int>(0)
        let handler = EOFMessageHandler.streaming { body, _ in
            var total = 0
            var checksum: UInt64 = 0
            for try await chunk in body {
                total += chunk.readableBytes
                largestChunk.max(chunk.readableBytes, ordering: .relaxed)
                chunk.withUnsafeReadableBytes { bytes in
                    for byte in bytes { checksum = checksum &+ UInt64(byte) }
                }
            }
            var acknowledgement = ByteBuffer()
            acknowledgement.writeMultipleIntegers(UInt64(total), checksum)
            return acknowledgement
        }
        try await withEOFTestServer(handler: handler, configure: { $0.handshakeTimeout = .seconds(120) }) { _, path in
            let piece = ByteBuffer(repeating: 3, count: chunkSize)
            var acknowledgement = try await Client.sendMessage(to: path) { writer in
                for _ in 0..<chunks { try await writer.write(piece) }
            }
            let read = acknowledgement.readMultipleIntegers(as: (UInt64, UInt64).self)
            let (total, checksum) = try #require(read)
            #expect(total == UInt64(chunkSize * chunks))
            #expect(checksum == UInt64(chunkSize * chunks * 3))
        }
        // Chunks are what one read returned, never the whole message.
        #expect(largestChunk.load(ordering: .relaxed) <= 1024 * 1024)
    }

    @Test("a streamed message over the server's maximum fails with a SocketIPCError, not NIO's")
    func streamedTooLarge() async throws {
        let handler = EOFMessageHandler.onEventLoop(maximumSize: 1000) { message, _ in ByteBuffer(string: "ok") }
        try await withEOFTestServer(handler: handler) { _, path in
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(to: path) { writer in
                    for _ in 0..<4096 { try await writer.write(ByteBuffer(repeating: 1, count: 64 * 1024)) }
                }
            }
            #expect(error?.code == .connectionClosed)
        }
    }

    @Test("a handler that throws closes its connection without acknowledgement and the server keeps serving")
    func handlerThrows() async throws {
        let handler = EOFMessageHandler.collecting { message, _ in
            if String(buffer: message) == "bad" { throw SocketIPCError(.remoteError, "bad message") }
            return ByteBuffer(string: "fine")
        }
        try await withEOFTestServer(handler: handler) { _, path in
            let refused = try await Client.sendMessage(ByteBuffer(string: "bad"), to: path)
            #expect(refused.readableBytes == 0)
            let accepted = try await Client.sendMessage(ByteBuffer(string: "good"), to: path)
            #expect(String(buffer: accepted) == "fine")
        }
    }
}

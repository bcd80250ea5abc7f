import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// The real ``Connection`` behind its real channel handler, on NIO's embedded channels instead of a socket: what it
/// writes is read back byte for byte, and what the peer sends is written in by the test. Without a descriptor every
/// flush goes through the channel, which is the path the frame writer takes whenever the socket is busy.
@Suite("Connection on an embedded channel", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectionEmbeddedTests {
    /// What the test sees of a connection: the connection itself, the replies its handler kept, and how it closed.
    final class Observed: Sendable {
        let connection = Mutex<Connection?>(nil)
        let heldReplies = Mutex<[Reply]>([])
        let closeErrors = Mutex<[SocketIPCError?]>([])
        let messages = Mutex<[ByteBuffer]>([])

        var opened: Connection? { self.connection.withLock { $0 } }

        func lifecycle() -> ConnectionLifecycle {
            var lifecycle = ConnectionLifecycle()
            lifecycle.opened = { connection in self.connection.withLock { $0 = connection } }
            return lifecycle
        }
    }

    /// Answers `ping` with `pong` at once, keeps the reply of any other request for the test, and records one-way
    /// messages and the close.
    struct Handler: ConnectionHandler {
        let observed: Observed

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            self.observed.messages.withLock { $0.append(message) }
        }

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            if String(buffer: request) == "ping" {
                reply.succeed(ByteBuffer(string: "pong"))
            } else {
                self.observed.heldReplies.withLock { $0.append(reply) }
            }
        }

        func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
            self.observed.closeErrors.withLock { $0.append(error) }
        }
    }

    static func channelHandler(_ observed: Observed) -> ConnectionChannelHandler {
        ConnectionChannelHandler(
            handler: Handler(observed: observed),
            options: SharedConnectionOptions(ConnectionOptions()),
            connectionID: 1,
            lifecycle: observed.lifecycle(),
            logger: testLogger
        )
    }

    /// The bytes of the peer's hello followed by `frames`, as PROTOCOL.md lays them out.
    static func bytes(hello: Bool = false, _ frames: Frame...) -> ByteBuffer {
        var buffer = ByteBuffer()
        if hello { Hello.write(into: &buffer) }
        for frame in frames { buffer.writeFrame(frame) }
        return buffer
    }

    static let address = try! SocketAddress(unixDomainSocketPath: "/embedded.sock")

    /// The next buffer the connection wrote that is not empty (``Connection/close()`` writes an empty one to learn
    /// when what came before it is written).
    static func nextWrite(_ channel: EmbeddedChannel) throws -> ByteBuffer? {
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            if buffer.readableBytes > 0 { return buffer }
        }
        return nil
    }

    @Test("the hello, then a request answered at once: the reply leaves in the read batch's flush, as its bytes")
    func replyBytes() throws {
        let observed = Observed()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(Self.channelHandler(observed))
        try channel.connect(to: Self.address).wait()
        // "SIPC", version 1, flags calls and strict credit, reserved.
        #expect(try Self.nextWrite(channel) == ByteBuffer(bytes: [0x53, 0x49, 0x50, 0x43, 0x01, 0x09, 0x00, 0x00]))

        try channel.writeInbound(
            Self.bytes(
                hello: true,
                .message(ByteBuffer(string: "note")),
                .request(id: 7, payload: ByteBuffer(string: "ping"))
            )
        )
        // 00000009 03 00000007 "pong"
        let reply: [UInt8] = [0, 0, 0, 9, 0x03, 0, 0, 0, 7] + Array("pong".utf8)
        #expect(try Self.nextWrite(channel) == ByteBuffer(bytes: reply))
        #expect(observed.messages.withLock { $0 } == [ByteBuffer(string: "note")])
        let connection = try #require(observed.opened)
        #expect(!connection.hasRequestsInFlight)
        _ = try channel.finish()
    }

    @Test("going away waits for the peer's request to be answered, then writes the answer and closes")
    func goAwayDrainsThenCloses() throws {
        let observed = Observed()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(Self.channelHandler(observed))
        try channel.connect(to: Self.address).wait()
        _ = try Self.nextWrite(channel)
        let connection = try #require(observed.opened)
        try channel.writeInbound(Self.bytes(hello: true, .request(id: 3, payload: ByteBuffer(string: "slow"))))
        let held = try #require(observed.heldReplies.withLock { $0.first })

        connection.goAway(.normal, message: "bye")
        channel.embeddedEventLoop.run()
        // 00000005 05 00 "bye": the going-away is written at once; the connection waits for the answer.
        #expect(try Self.nextWrite(channel) == ByteBuffer(bytes: [0, 0, 0, 5, 0x05, 0x00] + Array("bye".utf8)))
        #expect(channel.isActive)
        #expect(connection.hasRequestsInFlight)

        held.succeed(ByteBuffer(string: "done"))
        channel.embeddedEventLoop.run()
        #expect(try Self.nextWrite(channel) == Self.bytes(.reply(id: 3, payload: ByteBuffer(string: "done"))))
        #expect(!channel.isActive)
        #expect(!connection.isOpen)
        // An orderly close: the handler hears of no error.
        #expect(observed.closeErrors.withLock { $0.count } == 1)
        #expect(observed.closeErrors.withLock { $0.first } == .some(nil))
    }

    @Test("send and request from a task: the frames are their documented bytes, and the peer's reply completes it")
    func sendAndRequest() async throws {
        let observed = Observed()
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(Self.channelHandler(observed))
        }
        try await channel.connect(to: Self.address)
        #expect(try await channel.waitForOutboundWrite(as: ByteBuffer.self).readableBytes == Hello.length)
        let connection = try #require(observed.opened)

        try await connection.send(ByteBuffer(string: "note"))
        // 00000005 01 "note"
        let message = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(message == ByteBuffer(bytes: [0, 0, 0, 5, 0x01] + Array("note".utf8)))

        async let reply = connection.request(ByteBuffer(string: "ping"))
        // 00000009 02 00000001 "ping": the connection's first request has id 1.
        let request = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(request == ByteBuffer(bytes: [0, 0, 0, 9, 0x02, 0, 0, 0, 1] + Array("ping".utf8)))
        try await channel.writeInbound(Self.bytes(hello: true, .reply(id: 1, payload: ByteBuffer(string: "pong"))))
        #expect(try await reply == ByteBuffer(string: "pong"))
        #expect(!connection.hasRequestsInFlight)

        // A request still waiting when the channel closes fails with connectionClosed.
        let unanswered = Task { try await connection.request(ByteBuffer(string: "never")) }
        _ = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        try await channel.close()
        let failure = await #expect(throws: SocketIPCError.self) { try await unanswered.value }
        #expect(failure?.code == .connectionClosed)
        #expect(connection.closeError?.code == .connectionClosed)
    }

    /// A connection on an embedded channel after both hellos, with nothing written since.
    static func established(_ observed: Observed = Observed()) throws -> (EmbeddedChannel, Connection) {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(Self.channelHandler(observed))
        try channel.connect(to: Self.address).wait()
        _ = try Self.nextWrite(channel)
        try channel.writeInbound(Self.bytes(hello: true))
        return (channel, try #require(observed.opened))
    }

    @Test(
        "a sender on the event loop that queues 64 KiB without yielding has it written at once, not held until it yields",
        arguments: ["one-way messages", "a stream's call messages"]
    )
    func earlyFlushBoundsTheQueue(of what: String) throws {
        let (channel, connection) = try Self.established()
        // 200 messages of 1 KiB: 1,029 bytes each on the wire (1,033 for call messages, whose header has the call's
        // id), about 206,000 in all, below the 256 KiB high watermark, so the sender never has to wait, and the
        // event loop never runs in between.
        let message = ByteBuffer(repeating: 0x61, count: 1024)
        let calls = what.contains("call")
        let frameLength = calls ? 1033 : 1029
        var largestQueue = 0
        for _ in 0..<200 {
            let mustWait =
                calls ? try connection.queueCallFrame(id: 1, .message(message)) : try connection.queueMessage(message)
            #expect(mustWait == false)
            largestQueue = max(largestQueue, connection.state.withLock { $0.queuedBytes })
        }
        #expect(largestQueue < Connection.earlyFlushThreshold + frameLength)
        var written = ByteBuffer()
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&buffer) }
        // Three flushes of 64 frames (the first count at or above 64 KiB) went out before the loop ran; the
        // scheduled flush writes the rest.
        #expect(written.readableBytes == 3 * 64 * frameLength)
        channel.embeddedEventLoop.run()
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&buffer) }
        var expected = ByteBuffer()
        for _ in 0..<200 {
            if calls { expected.writeCallFrame(id: 1, .message(message)) } else { expected.writeFrame(.message(message)) }
        }
        #expect(written == expected)
        _ = try channel.finish()
    }

    @Test("credit granted on the event loop is written at once: the producer does not wait for the reader to yield")
    func creditIsWrittenAtOnce() throws {
        let (channel, connection) = try Self.established()

        connection.writeCallControlFrame(id: 3, .credit(32_768))
        // Before the event loop runs anything scheduled: the frame is already in the channel's outbound.
        var expected = ByteBuffer()
        expected.writeCallFrame(id: 3, .credit(32_768))
        #expect(try Self.nextWrite(channel) == expected)
        // A control frame queued the plain way waits for the scheduled flush.
        connection.queueCallControlFrame(id: 3, .credit(1))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.run()
        expected.clear()
        expected.writeCallFrame(id: 3, .credit(1))
        #expect(try Self.nextWrite(channel) == expected)
        _ = try channel.finish()
    }
}

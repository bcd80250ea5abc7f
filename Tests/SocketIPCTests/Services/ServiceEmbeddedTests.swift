import NIOCore
import NIOEmbedded
import Synchronization
import SocketIPCServices
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// The services layer behind a real connection on NIO's embedded channel: what the handler's side writes, and
/// when, without a socket in between. The embedded connection is the connecting side: the peer's calls have even ids.
@Suite("Services on an embedded channel", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceEmbeddedTests {
    enum Upper: ServiceMethod {
        static let name = "test.upper"
        typealias Request = String
        typealias Response = String
    }

    static func serving(_ router: ServiceRouter) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let handler = ConnectionChannelHandler(
            handler: ServiceConnectionHandler(router: router),
            options: SharedConnectionOptions(ConnectionOptions()),
            connectionID: 1,
            lifecycle: ConnectionLifecycle(),
            logger: testLogger
        )
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: ConnectionEmbeddedTests.address).wait()
        _ = try ConnectionEmbeddedTests.nextWrite(channel)  // this side's hello
        return channel
    }

    @Test("a unary call whose open, request and half-close arrive in one read is answered in that read's flush, before the event loop runs anything else")
    func unaryCallAnsweredInItsReadBatch() throws {
        var router = ServiceRouter()
        router.register(Upper.self) { text, _ in text.uppercased() }
        let channel = try Self.serving(router)

        var input = ByteBuffer()
        Hello.write(into: &input, flags: .calls)
        input.writeCallFrame(id: 2, .open(CallOpen(method: Upper.name)))
        input.writeCallFrame(id: 2, .message(ByteBuffer(string: "\"abc\"")))
        input.writeCallFrame(id: 2, .end(.ok))
        input.writeCallFrame(id: 4, .open(CallOpen(method: Upper.name)))
        input.writeCallFrame(id: 4, .message(ByteBuffer(string: "\"def\"")))
        input.writeCallFrame(id: 4, .end(.ok))
        try channel.writeInbound(input)

        // The embedded loop has not run: both handlers ran at the end of the read batch, in order, and their
        // answers left with its one flush.
        var expected = ByteBuffer()
        expected.writeCallFrame(id: 2, .message(ByteBuffer(string: "\"ABC\"")))
        expected.writeCallFrame(id: 2, .end(.ok))
        expected.writeCallFrame(id: 4, .message(ByteBuffer(string: "\"DEF\"")))
        expected.writeCallFrame(id: 4, .end(.ok))
        #expect(try ConnectionEmbeddedTests.nextWrite(channel) == expected)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.run()
        _ = try channel.finish()
    }

    @Test("a handler that suspends goes on as a task on the event loop once what it waits for arrives")
    func handlerThatSuspendsGoesOn() throws {
        var router = ServiceRouter()
        router.register(Upper.self) { text, _ in text.uppercased() }
        let channel = try Self.serving(router)

        // The open alone: the handler starts at the end of this batch and waits for its request.
        var input = ByteBuffer()
        Hello.write(into: &input, flags: .calls)
        input.writeCallFrame(id: 2, .open(CallOpen(method: Upper.name)))
        try channel.writeInbound(input)
        #expect(try ConnectionEmbeddedTests.nextWrite(channel) == nil)

        input.clear()
        input.writeCallFrame(id: 2, .message(ByteBuffer(string: "\"later\"")))
        input.writeCallFrame(id: 2, .end(.ok))
        try channel.writeInbound(input)
        channel.embeddedEventLoop.run()
        var expected = ByteBuffer()
        expected.writeCallFrame(id: 2, .message(ByteBuffer(string: "\"LATER\"")))
        expected.writeCallFrame(id: 2, .end(.ok))
        var written = ByteBuffer()
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&buffer) }
        #expect(written == expected)
        _ = try channel.finish()
    }
}

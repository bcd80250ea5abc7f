import NIOCore
import NIOEmbedded
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// The framed channel handler on NIO's `EmbeddedChannel`: bytes in, bytes out, time advanced by hand; no socket.
@Suite("ConnectionChannelHandler on EmbeddedChannel", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectionChannelHandlerEmbeddedTests {
    /// What the handler told the connection's owner.
    final class Events: Sendable {
        let handshakes = Atomic<Int>(0)
        let closes = Mutex<[SocketIPCError?]>([])
    }

    /// Answers every request with its payload.
    struct Echo: ConnectionHandler {
        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            reply.succeed(request)
        }
    }

    static let hello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x01, 0x00, 0x00]
    /// The hello this side sends: the calls and strict-credit flags.
    static let ownHello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x09, 0x00, 0x00]

    static func frame(kind: UInt8, id: UInt32? = nil, payload: [UInt8]) -> [UInt8] {
        let header = id == nil ? 1 : 5
        var bytes = withUnsafeBytes(of: UInt32(header + payload.count).bigEndian) { Array($0) } + [kind]
        if let id { bytes += withUnsafeBytes(of: id.bigEndian) { Array($0) } }
        return bytes + payload
    }

    /// Aborts the connection from inside the first message's handling.
    struct AbortOnMessage: ConnectionHandler {
        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) { connection.abort() }
    }

    /// An active embedded channel with the handler of a server (handshake timeout of `handshakeTimeout`, `options`).
    static func makeChannel<Handler: ConnectionHandler>(
        events: Events,
        handshakeTimeout: Duration? = .seconds(5),
        handler: Handler = Echo(),
        options: ConnectionOptions = ConnectionOptions()
    ) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let lifecycle = ConnectionLifecycle(
            handshakeCompleted: { _ in events.handshakes.add(1, ordering: .relaxed) },
            closed: { _, error in events.closes.withLock { $0.append(error) } }
        )
        let channelHandler = ConnectionChannelHandler(
            handler: handler,
            options: SharedConnectionOptions(options),
            connectionID: 1,
            lifecycle: lifecycle,
            handshakeTimeout: handshakeTimeout,
            pausesReadingWhileUnwritable: true,
            logger: testLogger
        )
        try channel.pipeline.syncOperations.addHandler(channelHandler)
        // Connecting an embedded channel makes it active, which sends the hello.
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/embedded.sock")).wait()
        return channel
    }

    /// Everything the handler wrote so far, as bytes.
    static func written(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            bytes += buffer.readableBytesView
        }
        return bytes
    }

    static func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

    @Test("the hello goes out first; a request after the peer's hello is answered; the handshake is reported once")
    func requestReply() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events)
        #expect(try Self.written(channel) == Self.ownHello)
        try channel.writeInbound(Self.buffer(Self.hello + Self.frame(kind: 0x02, id: 7, payload: Array("ping".utf8))))
        channel.embeddedEventLoop.run()
        #expect(try Self.written(channel) == Self.frame(kind: 0x03, id: 7, payload: Array("ping".utf8)))
        try channel.writeInbound(Self.buffer(Self.frame(kind: 0x02, id: 8, payload: [])))
        channel.embeddedEventLoop.run()
        #expect(try Self.written(channel) == Self.frame(kind: 0x03, id: 8, payload: []))
        #expect(events.handshakes.load(ordering: .relaxed) == 1)
        _ = try? channel.finish()
    }

    @Test("a hello and a request split at every byte still make one reply")
    func splitEverywhere() throws {
        let stream = Self.hello + Self.frame(kind: 0x02, id: 3, payload: Array("abc".utf8))
        for split in 1..<stream.count {
            let events = Events()
            let channel = try Self.makeChannel(events: events)
            _ = try Self.written(channel)
            try channel.writeInbound(Self.buffer(Array(stream[..<split])))
            try channel.writeInbound(Self.buffer(Array(stream[split...])))
            channel.embeddedEventLoop.run()
            #expect(try Self.written(channel) == Self.frame(kind: 0x03, id: 3, payload: Array("abc".utf8)), "split at \(split)")
            #expect(events.handshakes.load(ordering: .relaxed) == 1, "split at \(split)")
            _ = try? channel.finish()
        }
    }

    @Test("an unknown frame kind gets going-away 0x01, and the connection closes")
    func protocolViolation() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events)
        _ = try Self.written(channel)
        try channel.writeInbound(Self.buffer(Self.hello + [0x00, 0x00, 0x00, 0x01, 0x09]))
        channel.embeddedEventLoop.run()
        let written = try Self.written(channel)
        #expect(written.count > 5)
        #expect(written[4] == 0x05, "a going-away frame")
        #expect(written[5] == 0x01, "reason protocolViolation")
        // (A socket lingers half-closed for the peer to read why: an embedded channel has no half-close, and closes.)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
        let closes = events.closes.withLock { $0 }
        #expect(closes.count == 1)
        #expect(closes.first??.code == .protocolViolation)
    }

    @Test("a peer silent past the handshake timeout is told so and closed at once; the timer fires once")
    func handshakeTimeout() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events, handshakeTimeout: .seconds(2))
        _ = try Self.written(channel)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1999))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        let written = try Self.written(channel)
        #expect(written.count > 5 && written[4] == 0x05, "a going-away frame")
        #expect(!channel.isActive)
        #expect(events.handshakes.load(ordering: .relaxed) == 0)
        #expect(events.closes.withLock { $0.map { $0?.code } } == [.timedOut])
    }

    @Test("after the handshake, the timer is cancelled: the connection outlives the timeout")
    func handshakeTimerCancelled() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events, handshakeTimeout: .seconds(2))
        try channel.writeInbound(Self.buffer(Self.hello))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive)
        #expect(events.handshakes.load(ordering: .relaxed) == 1)
        _ = try? channel.finish()
        #expect(events.closes.withLock { $0.count } == 1)
    }

    @Test("a going-away 0x00 from the peer with nothing in flight closes the connection in order")
    func peerGoesAway() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events)
        _ = try Self.written(channel)
        try channel.writeInbound(Self.buffer(Self.hello + Self.frame(kind: 0x05, payload: [0x00] + Array("bye".utf8))))
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
        #expect(events.closes.withLock { $0.count } == 1)
    }

    @Test("a first message whose handler aborts the connection still reports the handshake, then the close")
    func handshakeReportedWhenFirstFrameCloses() throws {
        let events = Events()
        let channel = try Self.makeChannel(events: events, handler: AbortOnMessage())
        _ = try Self.written(channel)
        _ = try? channel.writeInbound(Self.buffer(Self.hello + Self.frame(kind: 0x01, payload: [1])))
        channel.embeddedEventLoop.run()
        #expect(events.handshakes.load(ordering: .relaxed) == 1)
        #expect(events.closes.withLock { $0.count } == 1)
        #expect(!channel.isActive)
    }
}

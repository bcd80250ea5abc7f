import NIOCore
import NIOEmbedded
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// One turn of the event loop hands out at most ``ConnectionChannelHandler/frameBudget`` frames of a connection's
/// reads; the rest waits for the loop's next turn, in order, and nothing more is read meanwhile.
@Suite("A read's frames share the event loop", .timeLimit(.minutes(5)), .limitedConcurrency)
struct FrameBudgetTests {
    typealias Embedded = ConnectionChannelHandlerEmbeddedTests

    /// Records the first four bytes of every message, as a big-endian number, in order.
    struct Recorder: ConnectionHandler {
        final class Seen: Sendable {
            let numbers = Mutex<[UInt32]>([])
        }
        let seen = Seen()

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            let number = message.getInteger(at: message.readerIndex, as: UInt32.self) ?? .max
            self.seen.numbers.withLock { $0.append(number) }
        }
    }

    /// Counts the `read()` calls that reach the channel, to see whether the handler holds them back.
    final class ReadCounter: ChannelOutboundHandler, Sendable {
        typealias OutboundIn = Never
        let reads = Atomic<Int>(0)

        func read(context: ChannelHandlerContext) {
            self.reads.add(1, ordering: .relaxed)
            context.read()
        }
    }

    static var budget: Int { ConnectionChannelHandler.frameBudget }

    /// Options without a read's share in time (`turnTime`): a debug build on a busy machine takes longer than it for
    /// a budget's frames, and these tests count frames.
    static var countingOptions: ConnectionOptions {
        var options = ConnectionOptions()
        options.turnTime = nil
        return options
    }

    /// An established embedded connection whose messages go to `recorder`, with a `ReadCounter` before its handler.
    static func establishedChannel(recorder: Recorder, counter: ReadCounter) throws -> EmbeddedChannel {
        let channel = try Embedded.makeChannel(events: Embedded.Events(), handler: recorder, options: Self.countingOptions)
        try channel.pipeline.syncOperations.addHandler(counter, position: .first)
        _ = try Embedded.written(channel)
        try channel.writeInbound(Embedded.buffer(Embedded.hello))
        channel.embeddedEventLoop.run()
        return channel
    }

    static func message(_ number: UInt32) -> [UInt8] {
        Embedded.frame(kind: 0x01, payload: withUnsafeBytes(of: number.bigEndian) { Array($0) })
    }

    @Test("a read of more messages than the budget hands out the budget, the rest on the next turn, in order")
    func messagesBeyondTheBudget() throws {
        let recorder = Recorder()
        let counter = ReadCounter()
        let channel = try Self.establishedChannel(recorder: recorder, counter: counter)
        defer { _ = try? channel.finish() }
        let count = 2 * Self.budget + 100
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count * 12)
        for number in 0..<UInt32(count) { bytes += Self.message(number) }

        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(recorder.seen.numbers.withLock { $0.count } == Self.budget)

        // While the rest waits for the next turn, a read() the pipeline asks for is held back.
        let readsBefore = counter.reads.load(ordering: .relaxed)
        channel.pipeline.read()
        #expect(counter.reads.load(ordering: .relaxed) == readsBefore)

        channel.embeddedEventLoop.run()
        #expect(recorder.seen.numbers.withLock { $0 } == Array(0..<UInt32(count)))
        // Once everything kept is handed out, the held read() is passed on.
        #expect(counter.reads.load(ordering: .relaxed) == readsBefore + 1)
        #expect(channel.isActive)
    }

    /// Records as ``Recorder`` does, and takes at least 10 µs per message (spinning): a handler that is slow per
    /// message, as a server that prints each one.
    struct SlowRecorder: ConnectionHandler {
        let recorder = Recorder()

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            let until = ContinuousClock.now.advanced(by: .microseconds(10))
            while ContinuousClock.now < until {}
            self.recorder.didReceiveMessage(message, on: connection)
        }
    }

    @Test("a read whose handler is slow gives up the loop after its time (once 1,024 frames are out), the rest in order")
    func slowHandlerYieldsAfterItsTime() throws {
        let slow = SlowRecorder()
        let counter = ReadCounter()
        let channel = try Embedded.makeChannel(events: Embedded.Events(), handler: slow)
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.addHandler(counter, position: .first)
        _ = try Embedded.written(channel)
        try channel.writeInbound(Embedded.buffer(Embedded.hello))
        channel.embeddedEventLoop.run()
        let count = 4_000
        var bytes: [UInt8] = []
        for number in 0..<UInt32(count) { bytes += Self.message(number) }

        // 1,024 messages take 10 ms or more, past the read's 2 ms: the first look at the clock ends the turn. Before,
        // the read handed out all 4,000 (its frame budget is 16,384), holding the loop for 40 ms or more.
        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(slow.recorder.seen.numbers.withLock { $0.count } == TurnClock.framesBeforeClock)

        channel.embeddedEventLoop.run()
        #expect(slow.recorder.seen.numbers.withLock { $0 } == Array(0..<UInt32(count)))
        #expect(channel.isActive)
    }

    @Test("frames off the common path cost more of the budget: a message behind many of them waits for a next turn")
    func controlFramesCostMore() throws {
        let recorder = Recorder()
        let counter = ReadCounter()
        let channel = try Self.establishedChannel(recorder: recorder, counter: counter)
        defer { _ = try? channel.finish() }
        // Error replies for requests never made are ignored; each is a frame off the common path.
        let ignored = Self.budget / ConnectionChannelHandler.controlFrameCost + 10
        var bytes: [UInt8] = []
        for id in 0..<UInt32(ignored) { bytes += Embedded.frame(kind: 0x04, id: id + 1, payload: Array("no".utf8)) }
        bytes += Self.message(7)

        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(recorder.seen.numbers.withLock { $0 }.isEmpty)
        channel.embeddedEventLoop.run()
        #expect(recorder.seen.numbers.withLock { $0 } == [7])
        #expect(channel.isActive)
    }

    @Test("a read within the budget is handed out at once, in its own turn")
    func withinTheBudget() throws {
        let recorder = Recorder()
        let counter = ReadCounter()
        let channel = try Self.establishedChannel(recorder: recorder, counter: counter)
        defer { _ = try? channel.finish() }
        var bytes: [UInt8] = []
        for number in 0..<UInt32(Self.budget - 1) { bytes += Self.message(number) }
        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(recorder.seen.numbers.withLock { $0.count } == Self.budget - 1)
        let readsBefore = counter.reads.load(ordering: .relaxed)
        channel.pipeline.read()
        #expect(counter.reads.load(ordering: .relaxed) == readsBefore + 1)
    }

    /// Holds the requests whose payload is "hold"; answers the others at once.
    final class Mixed: ConnectionHandler, Sendable {
        let held = Mutex<[Reply]>([])

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            if request.readableBytesView.elementsEqual("hold".utf8) {
                self.held.withLock { $0.append(reply) }
            } else {
                reply.succeed(request)
            }
        }
    }

    /// An established embedded connection of `handler` with `maximumConcurrentRequests`.
    static func establishedChannel<Handler: ConnectionHandler>(
        handler: Handler,
        maximumConcurrentRequests: Int
    ) throws -> EmbeddedChannel {
        var options = Self.countingOptions
        options.maximumConcurrentRequests = maximumConcurrentRequests
        let channel = try Embedded.makeChannel(events: Embedded.Events(), handler: handler, options: options)
        _ = try Embedded.written(channel)
        try channel.writeInbound(Embedded.buffer(Embedded.hello))
        channel.embeddedEventLoop.run()
        return channel
    }

    /// How many frames of `kind` are in `bytes`.
    static func count(of kind: UInt8, in bytes: [UInt8]) -> Int {
        var index = 0
        var count = 0
        while index + 5 <= bytes.count {
            let length = bytes[index..<index + 4].reduce(0) { $0 << 8 | Int($1) }
            if bytes[index + 4] == kind { count += 1 }
            index += 4 + length
        }
        return count
    }

    @Test("requests answered at once at the limit of unanswered ones go on in the same read, within its budget, however many", arguments: [1, 100])
    func requestsAnsweredAtTheLimit(maximumConcurrentRequests: Int) throws {
        let handler = Mixed()
        let channel = try Self.establishedChannel(handler: handler, maximumConcurrentRequests: maximumConcurrentRequests)
        defer { _ = try? channel.finish() }
        // All but one of the unanswered requests the connection allows are held; then requests answered at once,
        // each of which reaches the limit and finds room made. Before, each called the decoding again, a level
        // deeper: a few thousand overflowed the event loop's stack and killed the process.
        var bytes: [UInt8] = []
        for id in 0..<UInt32(maximumConcurrentRequests - 1) {
            bytes += Embedded.frame(kind: 0x02, id: id + 1, payload: Array("hold".utf8))
        }
        let answered = 3 * Self.budget
        for id in 0..<UInt32(answered) { bytes += Embedded.frame(kind: 0x02, id: id + 1_000, payload: []) }
        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(Self.count(of: 0x03, in: try Embedded.written(channel)) <= Self.budget)
        channel.embeddedEventLoop.run()
        #expect(Self.count(of: 0x03, in: try Embedded.written(channel)) + Self.budget >= answered)
        #expect(channel.isActive)
    }

    @Test("a connection paused for requests answers pings within the budget too; the rest after the next turn")
    func pausedReadsKeepTheBudget() throws {
        let handler = Mixed()
        let channel = try Self.establishedChannel(handler: handler, maximumConcurrentRequests: 1)
        defer { _ = try? channel.finish() }
        try channel.writeInbound(Embedded.buffer(Embedded.frame(kind: 0x02, id: 1, payload: Array("hold".utf8))))
        _ = try Embedded.written(channel)
        // Paused: pings are still answered, but not all 9,000 of one read in one turn (before, all of them).
        let pings = 9_000
        var bytes: [UInt8] = []
        for id in 0..<UInt32(pings) { bytes += Embedded.frame(kind: 0x0B, id: id + 1, payload: []) }
        try channel.writeInbound(Embedded.buffer(bytes))
        let allowed = Self.budget / ConnectionChannelHandler.controlFrameCost
        let first = Self.count(of: 0x0C, in: try Embedded.written(channel))
        #expect(first <= allowed, "one read while paused answered \(first) pings")
        channel.embeddedEventLoop.run()
        #expect(first + Self.count(of: 0x0C, in: try Embedded.written(channel)) == pings)
        // The held request is still held; answering it ends the pause.
        #expect(handler.held.withLock { $0.count } == 1)
        #expect(channel.isActive)
    }

    @Test("a going-away with an error while paused is acted on at once: nothing after it is answered, the connection closes")
    func goingAwayWithErrorWhilePaused() throws {
        let channel = try Self.establishedChannel(handler: Mixed(), maximumConcurrentRequests: 1)
        defer { _ = try? channel.finish() }
        try channel.writeInbound(Embedded.buffer(Embedded.frame(kind: 0x02, id: 1, payload: Array("hold".utf8))))
        _ = try Embedded.written(channel)
        // Before, it was held with the requests, and the pings after it were still answered.
        var bytes = Embedded.frame(kind: 0x05, payload: [0x01] + Array("bye".utf8))
        for id in 0..<UInt32(10) { bytes += Embedded.frame(kind: 0x0B, id: id + 1, payload: []) }
        try channel.writeInbound(Embedded.buffer(bytes))
        channel.embeddedEventLoop.run()
        #expect(Self.count(of: 0x0C, in: try Embedded.written(channel)) == 0)
        #expect(!channel.isActive)
    }

    /// The connection a channel handler made, once open.
    final class Opened: Sendable {
        let connection = Mutex<Connection?>(nil)
    }

    @Test("a reply read before the close while paused and yielding still reaches its request", arguments: [3_000, 5_000])
    func replyReadBeforeCloseWhilePausedAndYielding(ignored: Int) async throws {
        let opened = Opened()
        var lifecycle = ConnectionLifecycle()
        lifecycle.opened = { connection in opened.connection.withLock { $0 = connection } }
        var options = Self.countingOptions
        options.maximumConcurrentRequests = 1
        let channel = NIOAsyncTestingChannel()
        let (sharedOptions, ownLifecycle) = (SharedConnectionOptions(options), lifecycle)
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(
                ConnectionChannelHandler(
                    handler: Mixed(),
                    options: sharedOptions,
                    connectionID: 1,
                    lifecycle: ownLifecycle,
                    logger: testLogger
                )
            )
        }
        try await channel.connect(to: SocketAddress(unixDomainSocketPath: "/embedded.sock"))
        _ = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        try await channel.writeInbound(Embedded.buffer(Embedded.hello))
        let connection = try #require(opened.connection.withLock { $0 })
        let pending = Task { try await connection.request(ByteBuffer(string: "mine")) }  // id 1
        _ = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        // The peer's own request, held: the connection is paused. Then one read of error replies nobody waits for
        // (more than the budget when 5,000), the reply this side waits for, and the close.
        try await channel.writeInbound(Embedded.buffer(Embedded.frame(kind: 0x02, id: 1, payload: Array("hold".utf8))))
        var bytes: [UInt8] = []
        for id in 0..<UInt32(ignored) { bytes += Embedded.frame(kind: 0x04, id: id + 1_000, payload: Array("no".utf8)) }
        bytes += Embedded.frame(kind: 0x03, id: 1, payload: Array("answer".utf8))
        let read = Embedded.buffer(bytes)
        try await channel.testingEventLoop.executeInContext {
            channel.pipeline.fireChannelRead(read)
            channel.pipeline.fireChannelReadComplete()
            channel.pipeline.fireChannelInactive()
        }
        // Before, the close dropped what the budget had left kept, the reply among it: connectionClosed.
        let result = await pending.result
        #expect((try? result.get()) == ByteBuffer(string: "answer"), "\(result)")
        _ = try? await channel.finish()
    }

    @Test("frames kept for the next turn are handed out when the peer closes first")
    func peerClosesWhileKept() throws {
        let recorder = Recorder()
        let counter = ReadCounter()
        let channel = try Self.establishedChannel(recorder: recorder, counter: counter)
        let count = Self.budget + 5
        var bytes: [UInt8] = []
        for number in 0..<UInt32(count) { bytes += Self.message(number) }
        try channel.writeInbound(Embedded.buffer(bytes))
        #expect(recorder.seen.numbers.withLock { $0.count } == Self.budget)
        channel.pipeline.fireChannelInactive()
        #expect(recorder.seen.numbers.withLock { $0 } == Array(0..<UInt32(count)))
        _ = try? channel.finish()
    }
}

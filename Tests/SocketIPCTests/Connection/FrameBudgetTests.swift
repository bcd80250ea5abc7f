import NIOCore
import NIOEmbedded
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// One read hands out at most ``ConnectionChannelHandler/frameBudgetPerTurn`` of frames before the event loop's other
/// work comes first (found by a hostile review: a megabyte of call opens and cancels in one read held a loop, and every
/// connection on it, for up to 1.5 s). On NIO's `EmbeddedChannel`, where the loop's next turn is `run()`.
@Suite("A read's frames share the event loop", .timeLimit(.minutes(2)))
struct FrameBudgetTests {
    typealias Embedded = ConnectionChannelHandlerEmbeddedTests

    /// How many messages a ``CountingHandler`` was handed.
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
        var count: Int { self.value.load(ordering: .relaxed) }
    }

    /// Counts the messages it is handed.
    struct CountingHandler: ConnectionHandler {
        let counter: Counter
        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            self.counter.value.add(1, ordering: .relaxed)
        }
    }

    @Test("20,000 one-way messages in one read: the budget's worth now, the rest on the loop's next turn; the same after the handshake (the fast path)")
    func messagesWaitForTheNextTurn() throws {
        let budget = ConnectionChannelHandler<Embedded.Echo>.frameBudgetPerTurn
        let counter = Counter()
        let channel = try Embedded.makeChannel(events: Embedded.Events(), handler: CountingHandler(counter: counter))
        defer { _ = try? channel.finish() }
        let messages = [UInt8](Array(repeating: Embedded.frame(kind: 0x01, payload: [0x2a]), count: 20_000).joined())
        // With the hello: the first read's frames take the general decoder.
        try channel.writeInbound(Embedded.buffer(Embedded.hello + messages))
        #expect(counter.count == budget)
        channel.embeddedEventLoop.run()
        #expect(counter.count == 20_000)
        // Established: the fast path of data frames.
        try channel.writeInbound(Embedded.buffer(messages))
        #expect(counter.count == 20_000 + budget)
        channel.embeddedEventLoop.run()
        #expect(counter.count == 40_000)
        #expect(channel.isActive)
    }

    @Test("frames that start or stop other work cost more of the budget (controlFrameCost): 2,000 pings, a read's worth at a time, are all answered")
    func controlFramesCostMore() throws {
        let channel = try Embedded.makeChannel(events: Embedded.Events(), handler: Embedded.Echo())
        defer { _ = try? channel.finish() }
        _ = try Embedded.written(channel)
        var pings = Embedded.hello
        for id in 1...2_000 { pings += Embedded.frame(kind: 0x0B, id: UInt32(id), payload: []) }
        try channel.writeInbound(Embedded.buffer(pings))
        let perTurn = ConnectionChannelHandler<Embedded.Echo>.frameBudgetPerTurn / ConnectionChannelHandler<Embedded.Echo>.controlFrameCost
        #expect(Self.pongs(try Embedded.written(channel)) == perTurn)
        // (An embedded loop's `run()` runs the turns queued while it runs, too: the rest, a turn at a time.)
        channel.embeddedEventLoop.run()
        #expect(Self.pongs(try Embedded.written(channel)) == 2_000 - perTurn)
        #expect(channel.isActive)
    }

    /// How many pong frames (kind 0x0C) `bytes` holds.
    static func pongs(_ bytes: [UInt8]) -> Int {
        var count = 0
        var offset = 0
        while offset + 5 <= bytes.count {
            let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            if bytes[offset + 4] == 0x0C { count += 1 }
            offset += 4 + length
        }
        return count
    }
}

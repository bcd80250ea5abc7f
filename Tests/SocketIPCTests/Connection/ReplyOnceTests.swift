import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

/// A `Reply` completed more than once answers once: the later completions send nothing and count nothing (found by a
/// review: each one lowered the count of unanswered requests again, which let more requests reach the handler than
/// `maximumConcurrentRequests`, and sent the requester a second reply frame with the same id).
@Suite("A reply completed twice", .timeLimit(.minutes(2)), .limitedConcurrency)
struct ReplyOnceTests {
    @Test("only the first completion goes out, and the cap of unanswered requests still holds")
    func secondCompletionIsIgnored() async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        let counter = RequestCounter()
        try await withFramedTestServer(
            configure: { $0.connection.maximumConcurrentRequests = 2 },
            makeHandler: { CompletingTwiceHandler(counter: counter, held: heldContinuation) }
        ) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            // Request 1 is completed three times by the handler. The hello offers the services layer's frames (flag
            // 0x01), among them the ping.
            let hello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x01, 0x00, 0x00]
            try await socket.send(pieces: [hello + frameBytes(kind: 0x02, id: 1, payload: Array("twice".utf8))])
            let first = try await socket.read(exactly: 8 + 9 + 5)
            #expect(Array(first[8...]) == frameBytes(kind: 0x03, id: 1, payload: Array("first".utf8)))

            // Three requests to hold, then a ping: pings are answered while requests are paused, so the pong comes
            // once everything before it was read, and nothing may come before it (no second reply to request 1).
            var stream: [UInt8] = []
            for id in 2...4 { stream += frameBytes(kind: 0x02, id: UInt32(id), payload: Array("hold".utf8)) }
            stream += frameBytes(kind: 0x0B, id: 99, payload: [])
            try await socket.send(pieces: [stream])
            let pong = try await socket.read(exactly: 9)
            try #require(pong == frameBytes(kind: 0x0C, id: 99, payload: []))
            // Before, the extra completions had taken two off the count: all three held requests were handed out.
            #expect(counter.received.load(ordering: .relaxed) == 3, "request 1 and two held: the cap is 2")

            // Answering the held ones lets the last one in.
            var answered = 0
            for await reply in held {
                counter.answered.add(1, ordering: .relaxed)
                reply.succeed(ByteBuffer(string: "ok"))
                reply.succeed(ByteBuffer(string: "again"))
                answered += 1
                if answered == 3 { break }
            }
            let replies = try await socket.read(exactly: 3 * (9 + 2))
            var expected: [UInt8] = []
            for id in 2...4 { expected += frameBytes(kind: 0x03, id: UInt32(id), payload: Array("ok".utf8)) }
            #expect(replies == expected)
            #expect(counter.mostUnanswered.load(ordering: .relaxed) <= 2)

            // A last ping: still nothing queued before its pong.
            try await socket.send(pieces: [frameBytes(kind: 0x0B, id: 100, payload: [])])
            #expect(try await socket.read(exactly: 9) == frameBytes(kind: 0x0C, id: 100, payload: []))
        }
    }
}

/// Completes the request "twice" three times at once (a success, another success, a failure); hands the others'
/// replies to the test.
private struct CompletingTwiceHandler: ConnectionHandler, Sendable {
    let counter: RequestCounter
    let held: AsyncStream<Reply>.Continuation

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let received = self.counter.received.add(1, ordering: .relaxed).newValue
        if String(buffer: request) == "twice" {
            reply.succeed(ByteBuffer(string: "first"))
            reply.succeed(ByteBuffer(string: "second"))
            reply.fail(SocketIPCError(.invalidState, "third"))
            self.counter.answered.add(1, ordering: .relaxed)
            return
        }
        let unanswered = received - self.counter.answered.load(ordering: .relaxed)
        _ = self.counter.mostUnanswered.max(unanswered, ordering: .relaxed)
        self.held.yield(reply)
    }
}

import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

/// What a peer can make a framed connection hold is bounded, whatever it does (issue 9, section 3): replies it never
/// reads, requests it never lets finish, frames it sends a byte at a time.
@Suite("Bounded memory per framed connection", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct BoundedMemoryTests {
    static let payloadSize = 64 * 1024
    static let requestCount = 1024

    @Test("a client that never reads its replies makes the server stop reading; others are still served")
    func unreadRepliesStopReading() async throws {
        let counter = RequestCounter()
        try await withFramedTestServer(makeHandler: { CountingEchoHandler(counter: counter) }) { _, path in
            let payload = [UInt8](repeating: 0x61, count: Self.payloadSize)
            var stream = helloBytes
            stream.reserveCapacity(8 + Self.requestCount * (9 + Self.payloadSize))
            for id in 1...Self.requestCount {
                stream += frameBytes(kind: 0x02, id: UInt32(id), payload: payload)
            }
            let hostile = try await RawSocket.connect(to: path)
            defer { hostile.close() }
            let taken = try await hostile.sendUntilStalled(stream)
            #expect(taken < stream.count, "the server stopped taking requests")
            // What the server read is bounded by what its unsent replies may reach before it stops reading: the
            // channel's write watermark (2 MiB), the replies to one batch of reads (NIO reads up to 4 times,
            // at most 1 MiB each) and the kernel's socket buffers (a few MiB): far below the 64 MiB sent.
            let handled = counter.received.load(ordering: .relaxed)
            #expect(handled * Self.payloadSize <= 16 * 1024 * 1024, "the server handled \(handled) requests")

            // Meanwhile another client is served.
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "next")) }
            #expect(String(buffer: reply) == "next")

            // Once the client reads, the server reads again and answers everything.
            let expected = 8 + Self.requestCount * (9 + Self.payloadSize)
            let received = try await hostile.send(Array(stream[taken...]), whileReading: expected)
            #expect(received.count == expected)
            #expect(counter.received.load(ordering: .relaxed) == Self.requestCount + 1)  // and the other client's
        }
    }

    @Test(
        "the server hands out at most maximumConcurrentRequests unanswered requests, and more as they are answered",
        arguments: [1, 8]
    )
    func requestsInFlightAreCapped(maximum: Int) async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        let counter = RequestCounter()
        let total = 100
        try await withFramedTestServer(
            configure: { $0.connection.maximumConcurrentRequests = maximum },
            makeHandler: { HoldingCountingHandler(counter: counter, held: heldContinuation) }
        ) { _, path in
            // All requests in one write, so that they arrive in one read: the cap holds within a read buffer.
            var stream = helloBytes
            for id in 1...total { stream += frameBytes(kind: 0x02, id: UInt32(id), payload: Array("r\(id)".utf8)) }
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.send(pieces: [stream])
            // Answer one only when `maximum` are held: had the server handed out more than the cap, the handler
            // would have seen more than `maximum` unanswered at once.
            var waiting: [Reply] = []
            var answered = 0
            for await reply in held {
                waiting.append(reply)
                if waiting.count == maximum || counter.received.load(ordering: .relaxed) == total {
                    for reply in waiting {
                        counter.answered.add(1, ordering: .relaxed)
                        reply.succeed(ByteBuffer(string: "ok"))
                    }
                    answered += waiting.count
                    waiting = []
                }
                if answered == total { break }
            }
            let replies = try await socket.read(exactly: 8 + total * (9 + 2))
            #expect(replies.count == 8 + total * 11)
            #expect(counter.mostUnanswered.load(ordering: .relaxed) == maximum)
        }
    }

    @Test("large requests count by their bytes too: unanswered ones hold at most the maximum message size (one always passes), and more are handed out as they are answered")
    func largeRequestsCappedByBytes() async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        let counter = RequestCounter()
        let total = 8
        let size = 100 * 1024
        try await withFramedTestServer(
            // The byte limit is the maximum message size: 256 KiB here, so the third request of 100 KiB reaches it.
            configure: { $0.connection.maximumMessageSize = 256 * 1024 },
            makeHandler: { HoldingCountingHandler(counter: counter, held: heldContinuation) }
        ) { _, path in
            // Eight requests, then a ping: pings are answered while requests are paused, so its pong says that
            // everything before it was read.
            var stream: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x01, 0x00, 0x00]
            for id in 1...total {
                stream += frameBytes(kind: 0x02, id: UInt32(id), payload: [UInt8](repeating: UInt8(id), count: size))
            }
            stream += frameBytes(kind: 0x0B, id: 99, payload: [])
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.send(pieces: [stream])
            let pong = try await socket.read(exactly: 8 + 9)
            #expect(Array(pong[8...]) == frameBytes(kind: 0x0C, id: 99, payload: []))
            // Before, all eight (800 KiB) were handed out: only the count (100) was limited.
            #expect(counter.received.load(ordering: .relaxed) == 3)
            var answered = 0
            for await reply in held {
                counter.answered.add(1, ordering: .relaxed)
                reply.succeed(ByteBuffer(string: "ok"))
                answered += 1
                if answered == total { break }
            }
            #expect(try await socket.read(exactly: total * (9 + 2)).count == total * 11)
            #expect(counter.mostUnanswered.load(ordering: .relaxed) == 3)
        }
    }

    @Test("a client with many large requests in flight gets every reply: the server's pause never deadlocks it")
    func pipelinedLargeRequests() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            try await Client.withConnection(to: path) { connection in
                // 48 MiB each way at once: far more than the socket buffers and both write watermarks hold.
                let payload = ByteBuffer(repeating: 0x62, count: 1024 * 1024)
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<48 {
                        group.addTask { try await connection.request(payload).readableBytes }
                    }
                    for try await size in group { #expect(size == payload.readableBytes) }
                }
            }
        }
    }

    @Test("at the cap of unanswered requests the server still reads replies, so handlers that ask the client back finish")
    func callbacksAtTheCap() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumConcurrentRequests = 2 },
            makeHandler: { CallbackHandler() }
        ) { _, path in
            // The client answers the server's questions by echoing them.
            let connection = try await Client.connect(to: path, handler: EchoHandler())
            defer { connection.close() }
            try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<20 {
                    group.addTask { String(buffer: try await connection.request(ByteBuffer(string: "q\(index)"))) }
                }
                var answers: Set<String> = []
                for try await answer in group { answers.insert(answer) }
                #expect(answers == Set((0..<20).map { "q\($0)" }))
            }
        }
    }

    @Test("a frame written a few bytes at a time still decodes correctly", arguments: [1, 3, 4096])
    func reassembly(chunkSize: Int) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let payload = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let frame = frameBytes(kind: 0x02, id: 7, payload: payload)
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            let pieces = stride(from: 0, to: frame.count, by: chunkSize).map {
                Array(frame[$0..<min($0 + chunkSize, frame.count)])
            }
            try await socket.send(pieces: [helloBytes] + pieces)
            let answer = try await socket.read(exactly: 8 + frame.count)
            #expect(Array(answer[8...]) == frameBytes(kind: 0x03, id: 7, payload: payload))
        }
    }
}

/// Counts the requests a server's handlers received and the test answered, and the most unanswered at once.
final class RequestCounter: Sendable {
    let received = Atomic<Int>(0)
    let answered = Atomic<Int>(0)
    let mostUnanswered = Atomic<Int>(0)
}

/// Echoes every request at once, counting them.
struct CountingEchoHandler: ConnectionHandler, Sendable {
    let counter: RequestCounter

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.counter.received.add(1, ordering: .relaxed)
        reply.succeed(request)
    }
}

/// Hands every request's reply to the test, counting how many are unanswered when each arrives.
struct HoldingCountingHandler: ConnectionHandler, Sendable {
    let counter: RequestCounter
    let held: AsyncStream<Reply>.Continuation

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let received = self.counter.received.add(1, ordering: .relaxed).newValue
        let unanswered = received - self.counter.answered.load(ordering: .relaxed)
        _ = self.counter.mostUnanswered.max(unanswered, ordering: .relaxed)
        self.held.yield(reply)
    }
}

/// Answers each request with the client's answer to the same question, asked back on the same connection.
struct CallbackHandler: ConnectionHandler, Sendable {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.complete { try await connection.request(request) }
    }
}

import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Services: streams and flow control", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceStreamTests {
    @Test("server streaming: every response in order, then the end")
    func serverStreaming() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let numbers = try await connection.serverStreaming(Count.self, 10_000) { responses in
                var numbers: [Int] = []
                for try await number in responses { numbers.append(number) }
                return numbers
            }
            #expect(numbers == Array(0..<10_000))
        }
    }

    @Test("client streaming: the handler reads every request and answers once")
    func clientStreaming() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let sum = try await connection.clientStreaming(Sum.self) { writer in
                for number in 1...5_000 { try await writer.write(number) }
            }
            #expect(sum == 5_000 * 5_001 / 2)
        }
    }

    @Test("bidirectional streaming: requests and responses interleave on one call")
    func bidirectional() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let answers = try await connection.bidirectionalStreaming(Echo.self) { writer, responses in
                var iterator = responses.makeAsyncIterator()
                var answers: [Int] = []
                // One at a time: each answer comes back before the next request goes.
                for number in 1...100 {
                    try await writer.write(number)
                    answers.append(try #require(try await iterator.next()))
                }
                return answers
            }
            #expect(answers == (1...100).map { $0 * 10 })
        }
    }

    @Test("several streams and calls share one connection at once")
    func concurrentStreams() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for count in [100, 2_000, 5_000, 300] {
                    group.addTask {
                        let total = try await connection.serverStreaming(Count.self, count) { responses in
                            try await responses.reduce(0) { $0 + $1 }
                        }
                        #expect(total == count * (count - 1) / 2)
                    }
                    group.addTask { _ = try await connection.call(Get.self, "k\(count)") }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test("a consumer that stops reading stops the producer on the other side after one window; memory stays bounded")
    func backpressure() async throws {
        enum Flood: ServiceMethod {
            static let name = "flood"
            typealias Request = Int
            typealias Response = String
        }
        let written = Atomic<Int>(0)
        let (blocked, blockedContinuation) = AsyncStream<Int>.makeStream()
        var router = ServiceRouter()
        router.register(Get.self) { _, _ in nil }
        router.registerServerStreaming(Flood.self) { _, writer, _ in
            let payload = String(repeating: "x", count: 1000)
            for _ in 0..<1_000_000 {
                try await writer.write(payload)
                written.add(1, ordering: .relaxed)
            }
        }
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            try await connection.serverStreaming(Flood.self, 0) { responses in
                var iterator = responses.makeAsyncIterator()
                _ = try await iterator.next()
                // Stop reading. The producer may write one window (64 KiB: about 64 messages of 1 KiB) and then waits
                // for credit; poll its count until it stays put, without timing anything.
                var last = -1
                var stable = 0
                while stable < 50 {
                    let now = written.load(ordering: .relaxed)
                    if now == last { stable += 1 } else { stable = 0 }
                    last = now
                    await Task.yield()
                    _ = try await connection.call(Get.self, "ping")
                }
                blockedContinuation.yield(last)
                blockedContinuation.finish()
                // Reading again lets it go on.
                for _ in 0..<500 { _ = try await iterator.next() }
            }
        }
        var observed = 0
        for await count in blocked { observed = count }
        // One window of credit, plus the message that went below zero, plus what sits in socket buffers never
        // exceeds it: credit is the only limit here.
        #expect(observed <= 70, "the producer wrote \(observed) messages of 1 KiB to a consumer that stopped reading")
        #expect(observed >= 60)
    }

    @Test("a message refused as too large takes no credit: the stream goes on, beyond a window, as before it")
    func tooLargeMessageTakesNoCredit() async throws {
        var router = ServiceRouter()
        router.registerBidirectionalStreaming(EchoText.self) { texts, writer, _ in
            for try await text in texts { try await writer.write(text) }
        }
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            var configuration = ClientConfiguration()
            configuration.connection.maximumMessageSize = 1024
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.close() }
            let echoed = try await connection.bidirectionalStreaming(EchoText.self) { writer, responses in
                var iterator = responses.makeAsyncIterator()
                // 100 KiB: more than the call's window of 64 KiB, so that credit taken for it would stop the
                // stream for good (the peer gives back only what it received).
                let error = await #expect(throws: SocketIPCError.self) {
                    try await writer.write(String(repeating: "x", count: 100 * 1024))
                }
                #expect(error?.code == .messageTooLarge)
                // Then more than a window's worth of small messages, each echoed.
                var echoed = 0
                for index in 0..<200 {
                    try await writer.write(String(repeating: "y", count: 500))
                    guard try await iterator.next()?.count == 500 else { break }
                    echoed = index + 1
                }
                return echoed
            }
            #expect(echoed == 200)
        }
    }
}

@Suite("Services: a handler that ends a client stream early", .timeLimit(.minutes(5)), .limitedConcurrency)
struct EarlyEndTests {
    enum TakeOne: ServiceMethod {
        static let name = "test.takeOne"
        typealias Request = String
        typealias Response = String
    }

    @Test("the caller's writes, waiting for credit or later, fail once the handler has ended the call")
    func writesFailAfterHandlerEnded() async throws {
        var router = ServiceRouter()
        // Reads one request and answers: the rest of the caller's stream has no reader and gets no credit.
        router.registerClientStreaming(TakeOne.self) { requests, _ in
            for try await request in requests { return "got \(request)" }
            return "nothing"
        }
        let served = router
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: served) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let chunk = String(repeating: "x", count: 4_096)
            let outcome = try await connection.clientStreaming(TakeOne.self) { writer -> Void in
                // More than the 64 KiB window: without the fix the write that waits for credit waited forever.
                var failure: (any Error)?
                do {
                    for _ in 0..<1_000 { try await writer.write(chunk) }
                } catch {
                    failure = error
                }
                let refused = try #require(failure as? SocketIPCError, "a write failed: \(String(describing: failure))")
                #expect(refused.code == .invalidState)
            }
            #expect(outcome.hasPrefix("got "))
        }
    }
}

/// Echoes text, to send messages of a chosen size.
private enum EchoText: ServiceMethod {
    static let name = "test.echoText"
    typealias Request = String
    typealias Response = String
}

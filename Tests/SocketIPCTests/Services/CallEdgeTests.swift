import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime


/// Calls at their edges, each found by a review: a deadline while a write waits for a peer that reads nothing, the
/// caller's half-close of a bidirectional call, a handler that answers before the last request, retries against the
/// call's deadline, a server that drains, calls back to a client, and a second `run()`.
@Suite("Calls at their edges", .timeLimit(.minutes(5)), .limitedConcurrency)
struct CallEdgeTests {
    enum Ping: ServiceMethod {
        static let name = "edge.client.ping"
        typealias Request = String
        typealias Response = String
    }

    enum CallBack: ServiceMethod {
        static let name = "edge.server.callback"
        typealias Request = String
        typealias Response = String
    }

    enum Summarise: ServiceMethod {
        static let name = "edge.summarise"
        typealias Request = Int
        typealias Response = Int
    }

    enum Upload: ServiceMethod {
        static let name = "edge.upload"
        typealias Request = Int
        typealias Response = String
    }

    enum Flaky: ServiceMethod {
        static let name = "edge.flaky"
        typealias Request = Int
        typealias Response = Int
        static let isIdempotent = true
    }

    enum Slow: ServiceMethod {
        static let name = "edge.slow"
        typealias Request = Int
        typealias Response = Int
    }

    enum Create: ServiceMethod {
        static let name = "edge.create"
        typealias Request = String
        typealias Response = String
    }

    enum LongName: ServiceMethod {
        static let name = "edge." + String(repeating: "n", count: 250) + ".get"
        typealias Request = String
        typealias Response = String
    }

    @Test("a method name over 255 bytes fails the call with invalidMessage before anything is sent: cut to fit, it would call another method; the connection serves on")
    func methodNameTooLong() async throws {
        // A handler of the name the long one was cut to: before, the call reached it.
        enum Truncated: ServiceMethod {
            static let name = String(LongName.name.utf8.prefix(255))!
            typealias Request = String
            typealias Response = String
        }
        var router = ServiceRouter()
        router.register(Truncated.self) { _, _ in "the wrong method" }
        router.register(Create.self) { text, _ in "created \(text)" }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: SocketIPCError.self) { try await connection.call(LongName.self, "x") }
                #expect(error?.code == .invalidMessage)
                #expect(error?.message.contains("259 bytes") == true, "\(String(describing: error))")
                let answer = try await connection.call(Create.self, "y")
                #expect(answer == "created y")
            }
        }
    }

    @Test("an empty method name fails the call with invalidMessage before anything is sent, as ServiceMethod documents (1 to 255 bytes); the connection serves on")
    func methodNameEmpty() async throws {
        var router = ServiceRouter()
        router.register(Create.self) { text, _ in "created \(text)" }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: SocketIPCError.self) {
                    try await connection.call(method: "", request: ByteBuffer(string: "\"x\""))
                }
                #expect(error?.code == .invalidMessage)
                #expect(error?.message.contains("empty") == true, "\(String(describing: error))")
                let answer = try await connection.call(Create.self, "y")
                #expect(answer == "created y")
            }
        }
    }

    enum Watch: ServiceMethod {
        static let name = "edge.watch"
        typealias Request = String
        typealias Response = String
    }

    @Test("a unary call, typed or untyped, of a method that streams its responses fails at once with invalidMessage, instead of waiting for the stream (found by a review: `socket-ipc call` of a watch waited for good); as a stream it is served")
    func unaryCallOfStreamingMethod() async throws {
        var router = ServiceRouter()
        // A watch that says nothing until it is cancelled: a unary call of it waited as long.
        router.registerServerStreaming(Watch.self) { key, changes, context in
            try await changes.write("first \(key)")
            try await context.sleep(for: .seconds(3600))
        }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let typed = await #expect(throws: SocketIPCError.self) { try await connection.call(Watch.self, "k") }
                #expect(typed?.code == .invalidMessage)
                #expect(typed?.message.contains("streams its responses") == true, "\(String(describing: typed))")
                let untyped = await #expect(throws: SocketIPCError.self) {
                    try await connection.call(method: Watch.name, request: ByteBuffer(string: "\"k\""))
                }
                #expect(untyped?.code == .invalidMessage)
                let first = try await connection.serverStreaming(Watch.self, "k") { changes in
                    try await changes.first { _ in true }
                }
                #expect(first == "first k")
            }
        }
    }

    @Test("a client's own calls do not count against the calls it handles: its server's call back is served")
    func ownCallsDoNotCount() async throws {
        var serverRouter = ServiceRouter()
        serverRouter.register(CallBack.self) { text, context in
            try await context.connection.call(Ping.self, text)
        }
        var clientRouter = ServiceRouter()
        clientRouter.maximumConcurrentCalls = 1
        clientRouter.register(Ping.self) { text, _ in "pong \(text)" }
        try await withServiceTestServer(router: serverRouter) { _, path in
            let connection = try await Client.connect(to: path, handler: ServiceConnectionHandler(router: clientRouter))
            defer { connection.close() }
            // Before, the client's own call in progress counted as the one call it may handle: the call back was
            // refused with resourceExhausted.
            #expect(try await connection.call(CallBack.self, "x") == "pong x")
        }
    }

    @Test("bidirectional: the caller half-closes with finish() and reads the summary the handler sends after the last request")
    func bidirectionalHalfClose() async throws {
        var router = ServiceRouter()
        router.registerBidirectionalStreaming(Summarise.self) { requests, responses, _ in
            var count = 0
            for try await number in requests {
                count += 1
                try await responses.write(number)
            }
            try await responses.write(-count)
        }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let result = try await connection.bidirectionalStreaming(Summarise.self) { writer, responses in
                for number in 1...3 { try await writer.write(number) }
                writer.finish()
                writer.finish()
                await #expect(throws: SocketIPCError.self) { try await writer.write(4) }
                var all: [Int] = []
                for try await number in responses { all.append(number) }
                return all
            }
            #expect(result == [1, 2, 3, -3])
        }
    }

    @Test("client streaming: a handler that answers before the last request; the caller gets its response")
    func clientStreamingEarlyAnswer() async throws {
        var router = ServiceRouter()
        router.registerClientStreaming(Upload.self) { requests, _ in
            var iterator = requests.makeAsyncIterator()
            _ = try await iterator.next()
            return "enough"
        }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            // Writes until the handler's end refuses them: before, that write's invalidState was the call's result,
            // and the response that had come was dropped.
            let response = try await connection.clientStreaming(Upload.self) { writer in
                for number in 0...1_000_000 { try await writer.write(number) }
            }
            #expect(response == "enough")
        }
    }

    @Test("client streaming: a write waiting for room, its peer reading nothing, ends at the call's deadline")
    func deadlineEndsWriteWaitingForRoom() async throws {
        try await CancelledWriteWaitTests().withSilentPeer { connection in
            let filler = CancelledWriteWaitTests.fillUntilASendWaits(connection)
            defer { filler.cancel() }
            #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            // The call's first write has credit but no room. Before, it waited past its deadline until the
            // connection closed.
            let result = await outcome(within: .seconds(30)) {
                _ = try await connection.clientStreaming(Upload.self, options: CallOptions(timeout: .milliseconds(300))) {
                    writer in
                    try await writer.write(1)
                }
            }
            #expect(result == "deadlineExceeded")
        }
    }

    @Test("a write waiting for room that the call's deadline ends throws deadlineExceeded itself, not CancellationError: the task was not cancelled")
    func writeWaitingForRoomThrowsTheDeadline() async throws {
        try await CancelledWriteWaitTests().withSilentPeer { connection in
            let filler = CancelledWriteWaitTests.fillUntilASendWaits(connection)
            defer { filler.cancel() }
            #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            let thrown = Mutex<String?>(nil)
            _ = await outcome(within: .seconds(30)) {
                _ = try await connection.clientStreaming(Upload.self, options: CallOptions(timeout: .milliseconds(300))) {
                    writer in
                    do {
                        // Until a write waits: once in a fresh-clone CI run the filler's queue had drained below its
                        // watermark for a moment, and one write found room and returned.
                        while true { try await writer.write(1) }
                    } catch {
                        thrown.withLock { $0 = (error as? SocketIPCError).map { "\($0.code)" } ?? "\(type(of: error))" }
                        throw error
                    }
                }
            }
            // Before, the writer threw CancellationError (the call's outcome was deadlineExceeded all the same).
            #expect(thrown.withLock { $0 } == "deadlineExceeded")
        }
    }

    @Test("finish() while a write of the call waits for room: the end goes after the message, not before")
    func finishDuringWriteWaitingForRoom() async throws {
        try await CancelledWriteWaitTests().withSilentPeerSocket { connection, peer in
            // One-way messages fill the write queue above its high watermark until the peer reads. (A single 8 MiB
            // message was seen not to wait in a full run under load: a sender that checks for room while a flush
            // moves the queue into the channel, before the channel says it is not writable, finds room once.)
            let filler = CancelledWriteWaitTests.fillUntilASendWaits(connection)
            defer { filler.cancel() }
            #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            let (written, writtenContinuation) = AsyncStream.makeStream(of: String.self)
            let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
            let call = Task {
                _ = try await connection.clientStreaming(Upload.self) { writer in
                    let write = Task {
                        do {
                            try await writer.write(42)
                            writtenContinuation.yield("returned")
                        } catch {
                            writtenContinuation.yield("\(error)")
                        }
                    }
                    // The case of the test: the write waits for room when finish() comes. (Once, under a full suite and
                    // three reviews' builds, it was never seen waiting in 49 s; what is asserted below holds either way.)
                    _ = await eventually { connection.state.withLock { $0.writersWaiting } == 2 }
                    writer.finish()
                    _ = await write.value
                    for await _ in release { break }
                }
            }
            defer {
                releaseContinuation.finish()
                call.cancel()
            }
            // The peer reads now: the call's frames in the order they were written. Before, [open, end, message],
            // and the handler's side dropped the message after the end although the write returned.
            _ = try await peer.read(exactly: 8)
            var kinds: [UInt8] = []
            while !(kinds.contains(0x07) && kinds.contains(0x08)) {
                for frame in try await peer.readFrames(1) where (0x06...0x08).contains(frame.kind) {
                    kinds.append(frame.kind)
                }
            }
            var outcome = ""
            for await text in written {
                outcome = text
                break
            }
            #expect(outcome == "returned")
            #expect(kinds == [0x06, 0x07, 0x08], "call frames on the wire: \(kinds)")
        }
    }

    @Test("two writes of one call waiting for room: the call's deadline ends both")
    func deadlineEndsBothWriteWaits() async throws {
        try await CancelledWriteWaitTests().withSilentPeer { connection in
            let filler = CancelledWriteWaitTests.fillUntilASendWaits(connection)
            defer { filler.cancel() }
            #expect(await eventually { connection.state.withLock { $0.writersWaiting } == 1 })
            let result = await outcome(within: .seconds(30)) {
                _ = try await connection.clientStreaming(Upload.self, options: CallOptions(timeout: .milliseconds(300))) {
                    writer in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await writer.write(1) }
                        group.addTask { try await writer.write(2) }
                        try await group.waitForAll()
                    }
                }
            }
            // Before, only the last wait was ended: the other waited until the connection closed.
            #expect(result == "deadlineExceeded")
        }
    }

    @Test("client streaming: the body's own error after the handler answered is the call's error")
    func clientStreamingKeepsTheBodysError() async throws {
        var router = ServiceRouter()
        router.registerClientStreaming(Upload.self) { requests, _ in
            var iterator = requests.makeAsyncIterator()
            _ = try await iterator.next()
            return "enough"
        }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await connection.clientStreaming(Upload.self) { writer in
                    // Writes until the handler's end refuses them, then fails for a reason of its own.
                    do {
                        for number in 0...1_000_000 { try await writer.write(number) }
                    } catch {}
                    throw SocketIPCError(.unauthorized, "the caller's own failure")
                }
            }
            // Before, any SocketIPCError of the body was taken for the refusal, and the call returned "enough".
            #expect(error?.code == .unauthorized)
        }
    }

    @Test("ServiceClient: one timeout covers an idempotent call's retries; it ends with deadlineExceeded")
    func deadlineAcrossRetries() async throws {
        let attempts = Atomic<Int>(0)
        var router = ServiceRouter()
        router.register(Flaky.self) { value, context in
            attempts.add(1, ordering: .relaxed)
            // Each attempt takes 3 s of the 4 s timeout, then its connection is lost, as if the server crashed.
            try await Task.sleep(for: .seconds(3))
            context.connection.close()
            try await Task.sleep(for: .seconds(60))
            return value
        }
        try await withServiceTestServer(router: router) { _, path in
            var configuration = ServiceClientConfiguration()
            configuration.backoff = ConnectionBackoff(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(20))
            let client = ServiceClient(path: path, configuration: configuration)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                // Before, each attempt had the whole 4 s again: 4 attempts, then connectionClosed after 12 s.
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await client.call(Flaky.self, 1, options: CallOptions(timeout: .seconds(4)))
                }
                #expect(error?.code == .deadlineExceeded)
                #expect(attempts.load(ordering: .relaxed) <= 2)
                client.shutdown()
                try await group.waitForAll()
            }
        }
    }

    @Test("ServiceClient: a stream's timeout covers its wait for a connection; the handler's deadline shows what is left")
    func streamTimeoutCoversTheWait() async throws {
        let deadlines = Mutex<[ContinuousClock.Instant?]>([])
        var router = ServiceRouter()
        router.registerServerStreaming(Slow.self) { value, writer, context in
            deadlines.withLock { $0.append(context.deadline) }
            try await writer.write(value)
        }
        try await withServiceTestServer(router: router) { _, path in
            // Each connection is ready 2 s after it was made (work done in onConnect, such as authenticating).
            let client = ServiceClient(path: path, onConnect: { _ in try await Task.sleep(for: .seconds(2)) })
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                // 30 s: room for a loaded test run, where the connection has taken more than 10 s to be made.
                let timeout = Duration.seconds(30)
                let start = ContinuousClock.now
                let values = try await client.serverStreaming(Slow.self, 5, options: CallOptions(timeout: timeout)) {
                    stream in
                    var values: [Int] = []
                    for try await value in stream { values.append(value) }
                    return values
                }
                #expect(values == [5])
                // Before, the call got its whole timeout again once the connection was ready: its deadline was at
                // least the timeout and 2 s after the call was made. Now it is the timeout after, plus the open's way
                // to the handler.
                let deadline = try #require(deadlines.withLock { $0.first } ?? nil)
                #expect(deadline < start + timeout + .milliseconds(1_500), "\(start.duration(to: deadline))")
                client.shutdown()
                try await group.waitForAll()
            }
        }
    }

    @Test("ServiceClient: after its server's going-away, new calls wait for the next connection; the call in progress finishes")
    func callDuringDrain() async throws {
        let (slowStarted, slowStartedContinuation) = AsyncStream.makeStream(of: Void.self)
        let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
        let created = Atomic<Int>(0)
        var router = ServiceRouter()
        router.register(Slow.self) { value, _ in
            slowStartedContinuation.yield()
            for await _ in release { break }
            return value
        }
        router.register(Create.self) { name, _ in
            created.add(1, ordering: .relaxed)
            return name
        }
        try await withServiceTestServer(router: router, configure: { $0.shutdownGracePeriod = .seconds(60) }) {
            server, path in
            let client = ServiceClient(path: path)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                var states = client.states.makeAsyncIterator()
                while let state = await states.next(), state != .ready {}
                let slow = Task { try await client.call(Slow.self, 7) }
                for await _ in slowStarted { break }
                server.shutdownGracefully()
                // The going-away makes the client connect anew at once, while the slow call goes on.
                while let state = await states.next(), state == .ready {}
                // Before, the client stayed ready on the draining connection and failed this call, which it never
                // sent, with peerGoingAway. Now it waits for a connection, which the stopping server never gives.
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await client.call(Create.self, "thing", options: CallOptions(timeout: .milliseconds(500)))
                }
                #expect(error?.code != .peerGoingAway)
                #expect(created.load(ordering: .relaxed) == 0)
                releaseContinuation.finish()
                #expect(try await slow.value == 7)
                client.shutdown()
                try await group.waitForAll()
            }
        }
    }

    @Test("ServiceClient: a call on a client that was never run says so when it gives up")
    func neverRun() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            var configuration = ServiceClientConfiguration()
            configuration.waitForConnectionTimeout = .milliseconds(200)
            let client = ServiceClient(path: path, configuration: configuration)
            let error = await #expect(throws: SocketIPCError.self) { _ = try await client.call(Get.self, "colour") }
            #expect(error?.code == .timedOut)
            #expect(error?.message.contains("the client is not running (call run()") == true, "\(String(describing: error))")
        }
    }

    @Test("ServiceClient: a second run() throws invalidState and changes nothing")
    func secondRun() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            let client = ServiceClient(path: path)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                var states = client.states.makeAsyncIterator()
                while let state = await states.next(), state != .ready {}
                let error = await #expect(throws: SocketIPCError.self) { try await client.run() }
                #expect(error?.code == .invalidState)
                // Before, it announced shutDown (and ended every `states` subscriber) while calls still went through.
                #expect(client.state == .ready)
                #expect(try await client.call(Get.self, "colour") == nil)
                client.shutdown()
                try await group.waitForAll()
                #expect(client.state == .shutDown)
            }
        }
    }
}

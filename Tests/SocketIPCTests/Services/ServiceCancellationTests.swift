import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Services: cancellation and deadlines cross the wire", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceCancellationTests {
    @Test("cancelling the calling task cancels the handler's task on the other side")
    func cancellation() async throws {
        let probe = HandlerProbe()
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter(probe: probe)) }) {
            _,
            path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let call = Task { try await connection.call(Block.self, "wait") }
            var started = probe.started.stream.makeAsyncIterator()
            let deadline = await started.next()
            #expect(deadline == .some(nil), "no deadline was set")
            call.cancel()
            await #expect(throws: CancellationError.self) { try await call.value }
            var ended = probe.ended.stream.makeAsyncIterator()
            #expect(await ended.next() == "cancelled")
            // The connection is fine afterwards.
            #expect(try await connection.call(Get.self, "x") == nil)
        }
    }

    @Test("a deadline travels with the call: the handler reads it, is cancelled when it passes; the caller gets deadlineExceeded")
    func deadline() async throws {
        let events = Mutex<[String]>([])
        let sent = Mutex<ContinuousClock.Instant?>(nil)
        var router = ServiceRouter()
        router.register(Block.self) { request, context in
            events.withLock { $0.append("started") }
            if let deadline = context.deadline, let sent = sent.withLock({ $0 }) {
                // The handler's deadline is the caller's, as sent: 500 ms from when the call left, give or take
                // the time the open frame took to arrive.
                events.withLock { $0.append(deadline > sent && deadline <= sent + .seconds(5) ? "deadline ok" : "deadline wrong") }
            }
            do {
                try await Task.sleep(for: .seconds(3600))
            } catch {
                events.withLock { $0.append(Task.isCancelled ? "cancelled" : "\(error)") }
                throw error
            }
            return request
        }
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            sent.withLock { $0 = .now }
            let error = try await #require(throws: SocketIPCError.self) {
                try await connection.call(Block.self, "wait", options: CallOptions(timeout: .milliseconds(500)))
            }
            #expect(error.code == .deadlineExceeded)
        }
        // The server has stopped, so its handlers have ended. On a loaded machine the deadline can pass before the
        // handler even started (then it never runs); otherwise it saw the deadline and was cancelled by it.
        let seen = events.withLock { $0 }
        #expect(seen.isEmpty || seen == ["started", "deadline ok", "cancelled"], "the handler saw \(seen)")
    }

    @Test("a server stream's consumer that stops early cancels the producer")
    func streamCancelled() async throws {
        enum Forever: ServiceMethod {
            static let name = "forever"
            typealias Request = Int
            typealias Response = Int
        }
        let (ended, endedContinuation) = AsyncStream<String>.makeStream()
        var router = ServiceRouter()
        router.registerServerStreaming(Forever.self) { _, writer, _ in
            var number = 0
            do {
                while true {
                    try await writer.write(number)
                    number += 1
                }
            } catch {
                endedContinuation.yield("stopped: \(type(of: error))")
                throw error
            }
        }
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let firstThree = try await connection.serverStreaming(Forever.self, 0) { responses in
                var numbers: [Int] = []
                for try await number in responses {
                    numbers.append(number)
                    if numbers.count == 3 { break }
                }
                return numbers
            }
            #expect(firstThree == [0, 1, 2])
            var iterator = ended.makeAsyncIterator()
            let stopped = await iterator.next()
            #expect(stopped?.hasPrefix("stopped") == true)
        }
    }
}

import SocketIPC
import SocketIPCTesting
import Synchronization
import Testing

@Suite("Services: cancellation and deadlines cross the wire")
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
        let probe = HandlerProbe()
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter(probe: probe)) }) {
            _,
            path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let before = ContinuousClock.now
            let error = try await #require(throws: SocketIPCError.self) {
                try await connection.call(Block.self, "wait", options: CallOptions(timeout: .milliseconds(200)))
            }
            #expect(error.code == .deadlineExceeded)
            var started = probe.started.stream.makeAsyncIterator()
            let seen = try #require(await started.next() ?? nil)
            // The handler's deadline is the caller's, as sent: 200 ms from when the call left.
            #expect(seen > before)
            #expect(seen <= before + .milliseconds(200) + .seconds(5))
            var ended = probe.ended.stream.makeAsyncIterator()
            #expect(await ended.next() == "cancelled")
        }
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

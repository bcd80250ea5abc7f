import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// An error larger than the maximum message size fails its own request or call only. Found by a hostile review: an
/// error reply of 70,000 bytes, or a `ServiceError` with 70 KB of details, under a 64 KiB maximum went out whole, and
/// the peer closed the connection for the frame, failing every other request and call on it.
@Suite("Errors larger than the maximum message size", .timeLimit(.minutes(2)))
struct OversizeErrorTests {
    static let maximum = 64 * 1024

    /// `big-error` fails with a message of 70,000 bytes; `hold` is handed to the test; anything else is echoed.
    struct BigErrorHandler: ConnectionHandler, Sendable {
        let held: AsyncStream<Reply>.Continuation
        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            switch String(buffer: request) {
            case "big-error": reply.fail(SocketIPCError(.remoteError, String(repeating: "é", count: 35_000)))
            case "hold": self.held.yield(reply)
            default: reply.succeed(request)
            }
        }
    }

    enum Fail: ServiceMethod {
        static let name = "test.fail"
        typealias Request = Int
        typealias Response = String
    }

    @Test("an error reply over the maximum is cut to fit: its request fails with it, another request in progress and a later one are answered")
    func errorReply() async throws {
        let (held, hold) = AsyncStream.makeStream(of: Reply.self)
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = Self.maximum },
            makeHandler: { BigErrorHandler(held: hold) }
        ) { _, path in
            var configuration = ClientConfiguration()
            configuration.connection.maximumMessageSize = Self.maximum
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.close() }
            let holding = Task { try await connection.request(ByteBuffer(string: "hold")) }
            var replies = held.makeAsyncIterator()
            let reply = try #require(await replies.next())
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await connection.request(ByteBuffer(string: "big-error"))
            }
            #expect(error?.code == .remoteError)
            // The server cuts it to the maximum ("… (70000 bytes, cut to the maximum message size)" at its end); the
            // client keeps the first 4 KiB of a peer's text (PeerText) and says how long it was.
            #expect(error?.message.hasSuffix(" bytes in all)") == true, "\(error?.message.suffix(80) ?? "")")
            #expect((error?.message.utf8.count ?? .max) <= 4096 + 40)
            reply.succeed(ByteBuffer(string: "held"))
            #expect(String(buffer: try await holding.value) == "held")
            #expect(String(buffer: try await connection.request(ByteBuffer(string: "after"))) == "after")
        }
    }

    @Test("a ServiceError whose details exceed the maximum reaches its caller without them; another call on the connection completes")
    func serviceErrorDetails() async throws {
        let (started, start) = AsyncStream.makeStream(of: Void.self)
        var router = ServiceRouter()
        router.register(Fail.self) { size, _ in
            if size > 0 {
                throw ServiceError(code: "tooBig", message: "details", details: String(repeating: "d", count: size))
            }
            start.yield()
            try await Task.sleep(for: .milliseconds(300))
            return "slow done"
        }
        try await withServiceTestServer(router: router, configure: { $0.connection.maximumMessageSize = Self.maximum }) {
            _, path in
            var configuration = ClientConfiguration()
            configuration.connection.maximumMessageSize = Self.maximum
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.close() }
            let slow = Task { try await connection.call(Fail.self, 0) }
            for await _ in started { break }
            let error = await #expect(throws: ServiceError.self) { _ = try await connection.call(Fail.self, 70_000) }
            #expect(error?.code == "tooBig")
            #expect(error?.message.contains("details left out: above the maximum message size") == true, "\(String(describing: error))")
            #expect(try await slow.value == "slow done")
        }
    }
}

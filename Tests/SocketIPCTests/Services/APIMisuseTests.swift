import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// What application code that misuses the services API gets: a typed error, never a trap or a silent loss (found by a
/// review of such misuse).
@Suite("Services API misuse", .timeLimit(.minutes(1)))
struct APIMisuseTests {
    /// A value whose encoding always fails, as a type with a bug in `encode(to:)` would.
    struct Unencodable: Codable, Sendable {
        struct Refused: Error {}
        init() {}
        init(from decoder: any Decoder) throws {}
        func encode(to encoder: any Encoder) throws { throw Refused() }
    }

    enum Take: ServiceMethod {
        static let name = "misuse.take"
        typealias Request = Unencodable
        typealias Response = Int
    }

    enum Fail: ServiceMethod {
        static let name = "misuse.fail"
        typealias Request = Int
        typealias Response = Int
    }

    enum Quiet: ServiceMethod {
        static let name = "misuse.quiet"
        typealias Request = Int
        typealias Response = Int
    }

    enum Chat: ServiceMethod {
        static let name = "misuse.chat"
        typealias Request = Int
        typealias Response = Int
    }

    @Test("a request that does not encode fails the call with invalidMessage, the codec's error as its cause; the connection serves on")
    func requestDoesNotEncode() async throws {
        var router = ServiceRouter()
        router.register(Take.self) { _, _ in 1 }
        router.register(Fail.self) { value, _ in value }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: SocketIPCError.self) { _ = try await connection.call(Take.self, Unencodable()) }
                #expect(error?.code == .invalidMessage)
                #expect(error?.cause is Unencodable.Refused)
                let streamError = await #expect(throws: SocketIPCError.self) {
                    _ = try await connection.clientStreaming(Take.self) { requests in try await requests.write(Unencodable()) }
                }
                #expect(streamError?.code == .invalidMessage)
                let echoed = try await connection.call(Fail.self, 7)
                #expect(echoed == 7)
            }
        }
    }

    @Test("a ServiceError whose details do not encode reaches its caller with a note that says so")
    func detailsDoNotEncode() async throws {
        var router = ServiceRouter()
        router.register(Fail.self) { _, _ in
            throw ServiceError(code: "broken", message: "it broke", details: Unencodable())
        }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: ServiceError.self) { _ = try await connection.call(Fail.self, 1) }
                #expect(error?.code == "broken")
                #expect(error?.message.hasPrefix("it broke (its details were left out: they could not be encoded") == true, "\(String(describing: error))")
            }
        }
    }

    @Test("a caller's stream or writer used after the body it was handed to returned throws invalidState, not CancellationError (which would say the task using it was cancelled)")
    func escapedCallerStream() async throws {
        var router = ServiceRouter()
        router.registerServerStreaming(Quiet.self) { _, _, _ in try await Task.sleep(for: .seconds(3600)) }
        router.registerBidirectionalStreaming(Chat.self) { requests, _, _ in for try await _ in requests {} }
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                let escaped = try await connection.serverStreaming(Quiet.self, 0) { $0 }
                let error = await #expect(throws: SocketIPCError.self) { for try await _ in escaped {} }
                #expect(error?.code == .invalidState, "\(String(describing: error))")
                let writer = try await connection.bidirectionalStreaming(Chat.self) { requests, _ in requests }
                let writeError = await #expect(throws: SocketIPCError.self) { try await writer.write(1) }
                #expect(writeError?.code == .invalidState, "\(String(describing: writeError))")
            }
        }
    }

    @Test("a resubscribing stream read from two tasks at once: one of them gets invalidState, and the process goes on")
    func resubscribingFromTwoTasks() async throws {
        var router = ServiceRouter()
        router.registerServerStreaming(Quiet.self) { _, _, _ in
            // Sends nothing until cancelled: a reader waits.
            try await Task.sleep(for: .seconds(3600))
        }
        try await withServiceTestServer(router: router) { _, path in
            let client = ServiceClient(path: path)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                let stream = client.resubscribing(Quiet.self, 0)
                let refused = await withTaskGroup(of: Bool.self) { readers in
                    for _ in 0..<2 {
                        readers.addTask {
                            var iterator = stream.makeAsyncIterator()
                            do {
                                _ = try await iterator.next()
                            } catch let error as SocketIPCError where error.code == .invalidState {
                                // The other reader waits on: the client's shutdown ends it.
                                client.shutdown()
                                return true
                            } catch {}
                            return false
                        }
                    }
                    return await readers.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
                #expect(refused == 1)
                client.shutdown()
                try await group.waitForAll()
            }
        }
    }
}

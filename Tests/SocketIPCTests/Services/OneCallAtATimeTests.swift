import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// Calls of one connection that an application serves one at a time (a single file, a database) all finish: the
/// large message of a call waiting its turn waits on its sender's side (strict credit, PROTOCOL.md "Flow control")
/// without holding up the call being served. A connection-wide pause on such messages, held on the receiving side
/// before strict credit, hung both tests for good (found by a review, and taken out again).
@Suite("Calls served one at a time on one connection", .timeLimit(.minutes(2)), .limitedConcurrency)
struct OneCallAtATimeTests {
    /// The maximum message size of both sides: two messages waiting their turn hold more than it.
    static let maximum = 1024 * 1024
    static let chunk = String(repeating: "u", count: 600 * 1024)

    /// A client connection with the same maximum message size as the server's.
    static func connect(to path: String) async throws -> Connection {
        var configuration = ClientConfiguration()
        configuration.connection.maximumMessageSize = Self.maximum
        return try await Client.connect(to: path, configuration: configuration)
    }

    @Test("uploads that the server writes one at a time all finish")
    func uploadsOneAtATime() async throws {
        let turns = Turns()
        var router = ServiceRouter()
        router.registerClientStreaming(Upload.self) { chunks, _ in
            try await turns.run {
                var total = 0
                for try await chunk in chunks { total += chunk.utf8.count }
                return total
            }
        }
        try await withServiceTestServer(router: router, configure: { $0.connection.maximumMessageSize = Self.maximum }) {
            _, path in
            let connection = try await Self.connect(to: path)
            defer { connection.close() }
            let sizes = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        try await connection.clientStreaming(Upload.self) { writer in
                            for _ in 0..<3 { try await writer.write(Self.chunk) }
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(sizes == Array(repeating: 3 * Self.chunk.utf8.count, count: 3))
        }
    }

    @Test("downloads opened at once and read one at a time all finish")
    func downloadsReadOneAtATime() async throws {
        var router = ServiceRouter()
        router.registerServerStreaming(Download.self) { count, writer, _ in
            for _ in 0..<count { try await writer.write(Self.chunk) }
        }
        try await withServiceTestServer(router: router, configure: { $0.connection.maximumMessageSize = Self.maximum }) {
            _, path in
            let connection = try await Self.connect(to: path)
            defer { connection.close() }
            let turns = Turns()
            let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        try await connection.serverStreaming(Download.self, 3) { responses in
                            try await turns.run {
                                var count = 0
                                for try await chunk in responses where chunk == Self.chunk { count += 1 }
                                return count
                            }
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(counts == [3, 3, 3])
        }
    }
}

private enum Upload: ServiceMethod {
    static let name = "turns.upload"
    typealias Request = String
    typealias Response = Int
}

private enum Download: ServiceMethod {
    static let name = "turns.download"
    typealias Request = Int
    typealias Response = String
}

/// Runs one body at a time, in the order they asked.
private final class Turns: Sendable {
    private let state = Mutex<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func run<Value: Sendable>(_ body: () async throws -> Value) async throws -> Value {
        await withCheckedContinuation { continuation in
            let now = self.state.withLock { state in
                if state.busy {
                    state.waiting.append(continuation)
                    return false
                }
                state.busy = true
                return true
            }
            if now { continuation.resume() }
        }
        defer {
            let next = self.state.withLock { state in
                if state.waiting.isEmpty {
                    state.busy = false
                    return nil as CheckedContinuation<Void, Never>?
                }
                return state.waiting.removeFirst()
            }
            next?.resume()
        }
        return try await body()
    }
}

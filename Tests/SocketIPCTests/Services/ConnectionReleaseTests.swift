import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// A closed connection lets go of its router, so that handler state that keeps `context.connection` in something the
/// router's closures capture makes no reference cycle (found by a review with AddressSanitizer: the connection, its
/// channel and its calls were never freed).
@Suite("Services: a closed connection is freed", .timeLimit(.minutes(3)), .limitedConcurrency)
struct ConnectionReleaseTests {
    /// What a handler keeps: the connection of its last call.
    final class LastConnection: Sendable {
        let connection = Mutex<Connection?>(nil)
    }

    /// Calls `numbers.echo` once on a server whose handler keeps its connection in `holder`.
    private static func serveOneCall(holder: LastConnection) async throws {
        var router = ServiceRouter()
        router.register(Echo.self) { number, context in
            holder.connection.withLock { $0 = context.connection }
            return number
        }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Client.connect(to: path)
            #expect(try await connection.call(Echo.self, 7) == 7)
            connection.close()
            await connection.waitUntilClosed()
        }
    }

    @Test("handler state that holds the connection is freed with it once the connection closed and the server ended")
    func handlerStateHoldingTheConnection() async throws {
        weak var released: LastConnection?
        do {
            let holder = LastConnection()
            released = holder
            try await Self.serveOneCall(holder: holder)
            #expect(holder.connection.withLock { $0 } != nil, "the handler ran and kept its connection")
        }
        // The last references go as the event loop finishes the connection's close: wait for that, boundedly.
        let deadline = ContinuousClock.now + .seconds(20)
        while released != nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(released == nil, "the connection and the router that holds its holder form a cycle")
    }
}

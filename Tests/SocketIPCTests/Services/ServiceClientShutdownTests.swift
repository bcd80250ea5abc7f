import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `ServiceClient.shutdown()` ends `run()` whatever the client is doing, and its `states` end with it. Found by a
/// hostile review: a shutdown while `onConnect` waited, or while a connect waited for a frozen server's hello, did
/// not end `run()` until that wait did; `states` of a client that never ran never ended. (Each test hangs, and fails
/// at its time limit, where the fault is back.)
@Suite("Services: ServiceClient.shutdown()", .timeLimit(.minutes(1)))
struct ServiceClientShutdownTests {
    @Test("shutdown() while onConnect waits for a call the server never answers: run() returns, the call cancelled")
    func shutdownDuringOnConnect() async throws {
        var router = ServiceRouter()
        router.register(Block.self) { request, _ in
            try await Task.sleep(for: .seconds(3600))
            return request
        }
        try await withServiceTestServer(router: router) { _, path in
            let (entered, enter) = AsyncStream<Void>.makeStream()
            let client = ServiceClient(path: path) { connection in
                enter.yield()
                _ = try await connection.call(Block.self, "x")
            }
            let runner = Task { try await client.run() }
            for await _ in entered { break }
            client.shutdown()
            _ = await runner.result
            let states = await Array(client.states)
            #expect(states == [.shutDown])
        }
    }

    @Test("shutdown() while a connect waits for the hello of a server that never accepts (a frozen one), with an hour's connect timeout: run() returns")
    func shutdownDuringConnect() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/frozen.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            var configuration = ServiceClientConfiguration()
            configuration.connection.connectTimeout = .seconds(3600)
            let client = ServiceClient(path: path, configuration: configuration)
            let runner = Task { try await client.run() }
            for await state in client.states where state == .connecting(attempt: 1) { break }
            client.shutdown()
            _ = await runner.result
            #expect(client.state == .shutDown)
        }
    }

    @Test("the states of a client shut down before it ran end: idle, then shut down")
    func statesEndWithoutRun() async throws {
        let client = ServiceClient(path: "/nonexistent/never.sock")
        let states = client.states
        client.shutdown()
        let seen = await Array(states)
        #expect(seen == [.idle, .shutDown])
        #expect(await Array(client.states) == [.shutDown])
    }
}

extension Array {
    /// The elements of `sequence`, until it ends.
    init<S: AsyncSequence>(_ sequence: S) async where S.Element == Element, S.Failure == Never {
        var elements: [Element] = []
        for await element in sequence { elements.append(element) }
        self = elements
    }
}

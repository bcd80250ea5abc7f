import Logging
import NIOCore
import SocketIPC

/// Runs an echo server with `configuration`, runs `body` once it accepts connections, then shuts it down and waits
/// for it. Unlike ``withRunningServer(_:_:)``, a server that fails to start ends the wait: its error is thrown.
func withStartedEchoServer<Value>(
    _ configuration: ServerConfiguration,
    _ body: () async throws -> Value
) async throws -> Value {
    let (events, event) = AsyncStream.makeStream(of: Result<Void, any Error>.self)
    let server = Server.framed(
        configuration: configuration,
        logger: testLogger,
        onServerRunning: { _ in event.yield(.success(())) }
    ) { EchoHandler() }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            do {
                try await server.run()
            } catch {
                event.yield(.failure(error))
            }
            event.finish()
        }
        var iterator = events.makeAsyncIterator()
        guard let started = await iterator.next() else { throw SocketIPCError(.invalidState, "the server never ran") }
        try started.get()
        let result: Value
        do {
            result = try await body()
        } catch {
            server.shutdownGracefully()
            throw error
        }
        server.shutdownGracefully()
        try await group.waitForAll()
        return result
    }
}

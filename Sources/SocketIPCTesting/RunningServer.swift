/// Runs a server for the length of `body`: starts it in a child task, waits until it accepts connections, runs
/// `body`, then shuts it down gracefully and waits until `Server.run()` has returned, also when `body` throws.
///
/// `makeServer` gets the `onServerRunning` hook to pass on to
/// `Server.framed(configuration:logger:onServerRunning:makeHandler:)` or
/// `Server.eof(configuration:logger:onServerRunning:handler:)`; that hook is how this function knows the server
/// accepts connections, so nothing waits for a fixed time. A server that cannot start (its path is taken, its
/// directory is missing or insecure) does not hang the test: its error is thrown.
///
/// ```swift
/// try await withRunningServer({ onServerRunning in
///     Server.framed(configuration: .init(path: path), onServerRunning: onServerRunning) {
///         AsyncRequestHandler { request, _ in request }
///     }
/// }) { server in
///     let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "ping")) }
///     #expect(String(buffer: reply) == "ping")
/// }
/// ```
///
/// Once this function returns, the server has stopped: its connections are closed and its socket file is removed,
/// so what its handlers recorded is complete.
/// - Parameters:
///   - makeServer: Makes the server, passing `onServerRunning` on; called once, before anything runs.
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the running server.
/// - Returns: What `body` returns.
/// - Throws: What `makeServer` or `body` throws; the `SocketIPCError` of a server that failed to start or failed
///   while running; `CancellationError` when the task is cancelled before the server runs.
@discardableResult
public func withRunningServer<Value>(
    _ makeServer: (_ onServerRunning: @escaping @Sendable (SocketPath) async -> Void) throws -> Server,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ server: Server) async throws -> Value
) async throws -> Value {
    let (events, event) = AsyncStream.makeStream(of: ServerEvent.self)
    let server = try makeServer { _ in event.yield(.running) }
    return try await withThrowingTaskGroup(of: Void.self, returning: Value.self) { group in
        group.addTask {
            defer { event.finish() }
            do {
                try await server.run()
            } catch {
                event.yield(.failed(error))
                throw error
            }
        }
        var iterator = events.makeAsyncIterator()
        switch await iterator.next() {
        case .running:
            break
        case .failed(let error):
            throw error
        case nil:
            // Cancelled while waiting, or the server returned without running (shut down before it started).
            try Task.checkCancellation()
            throw SocketIPCError(
                .invalidState,
                "the server stopped before it accepted connections",
                path: server.configuration.path
            )
        }
        let value: Value
        do {
            value = try await body(server)
        } catch {
            server.shutdownGracefully()
            try? await group.waitForAll()
            throw error
        }
        server.shutdownGracefully()
        try await group.waitForAll()
        return value
    }
}

/// What the task that runs a server tells ``withRunningServer(_:isolation:_:)``.
private enum ServerEvent: Sendable {
    /// The server accepts connections.
    case running
    /// ``Server/run()`` threw.
    case failed(any Error)
}

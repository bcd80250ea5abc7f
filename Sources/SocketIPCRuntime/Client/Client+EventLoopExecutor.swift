import NIOPosix

extension Client {
    /// Runs `body` on one of SocketIPC's event loops, as its task executor preference.
    ///
    /// Connections that `body` opens then live on the same thread as `body`, so sends, replies and EOF-style
    /// exchanges need no hand-over between threads. `body` must not block its thread.
    public static func withEventLoopExecutor<Result: Sendable>(
        _ body: () async throws -> Result
    ) async rethrows -> Result {
        let executor = EventLoopTaskExecutor.shared(for: MultiThreadedEventLoopGroup.singleton.any())
        return try await withTaskExecutorPreference(executor) { try await body() }
    }
}

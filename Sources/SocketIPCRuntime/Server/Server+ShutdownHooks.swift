@_spi(SocketIPCRuntime) import SocketIPCCore
import Synchronization

extension Server {
    /// Registers `body` to run when the server's shutdown begins, before its clients are told that it is going
    /// away, so that what `body` sends on the connections reaches each peer before the going-away frame.
    ///
    /// ```swift
    /// server.onGracefulShutdown {
    ///     await server.broadcast(ByteBuffer(string: "maintenance: back in a minute"))
    /// }
    /// ```
    ///
    /// The bodies run once, one after the other in the order they were registered, when the first shutdown
    /// begins: ``shutdownGracefully()``, a service group's graceful shutdown, or the cancellation of the task that
    /// runs ``run()``. Then, in a graceful shutdown, every connection is told that the server is going away (also
    /// those that opened while the bodies ran). Meanwhile the server accepts no new connections and serves the
    /// connections it has as before.
    ///
    /// The bodies are part of the drain: they run in a child task of the task that runs ``run()``, which returns only
    /// once they have ended; the grace period (``ServerConfiguration/shutdownGracePeriod``) counts from the start of
    /// the shutdown and, when it ends, cancels the bodies still running and closes the connections without a
    /// going-away. Keep them short: the going-away frames wait for them. (``broadcast(_:where:)`` never waits; a
    /// ``Connection/send(_:)`` to a peer that stopped reading waits until the grace period ends.) In a forced
    /// shutdown (the task that runs ``run()`` cancelled) they run cancelled, while the connections close. (A shutdown
    /// of a server that is not running yet runs them in a task of their own.)
    ///
    /// A body registered once the shutdown has begun runs at once: after the bodies still running, if some are, and
    /// otherwise in a task of its own.
    /// - Parameter body: What to do; it may send on ``connections`` (``broadcast(_:where:)``,
    ///   ``Connection/send(_:)``). A synchronous closure may be passed as well.
    public func onGracefulShutdown(_ body: @escaping @Sendable () async -> Void) {
        switch self.state.withLock({ $0.shutdownHooks.add(body) }) {
        case .kept:
            break
        case .runAtOnce:
            Task { await body() }
        }
    }

    /// Runs the shutdown hooks in the server's handler task group, as part of the drain: ``run()`` waits for them,
    /// and a forced shutdown or the grace period's end cancels them.
    func startShutdownHooksInDrain() {
        let tasks = ConnectionTasks(owner: .server(self.handlerTasks))
        tasks.run { await self.runShutdownHooks(inDrain: true) }
        // Ends its driver once the hooks have ended, without cancelling them.
        tasks.close(cancellingJobs: false)
    }

    /// Runs the shutdown hooks one after the other, also those registered meanwhile, until none is left. In the
    /// drain, then tells the state machine, and takes the steps it answers with: tell the connections that the server
    /// is going away, complete the drain.
    func runShutdownHooks(inDrain: Bool) async {
        while true {
            let (body, finished) = self.state.withLock {
                state -> (ShutdownHooks.Body?, StateMachine.ShutdownHooksFinished?) in
                if let body = state.shutdownHooks.next() { return (body, nil) }
                return (nil, inDrain ? state.machine.shutdownHooksFinished() : nil)
            }
            guard let body else {
                if let finished { self.perform(finished) }
                return
            }
            await body()
        }
    }

    /// Takes the steps that follow the shutdown hooks, outside the lock.
    private func perform(_ finished: StateMachine.ShutdownHooksFinished) {
        for connection in finished.tellGoingAway {
            connection.goAway(.normal, message: "the server is shutting down")
        }
        self.drained(finished.drained, gracePeriodTimer: finished.cancelGracePeriodTimer)
    }
}

import Synchronization

extension Server {
    /// Waits until the server accepts connections: returns once ``run()`` has claimed the socket path and listens
    /// (the moment the `onServerRunning` hook is called), at once if it did already, also after it has stopped.
    ///
    /// ```swift
    /// async let running: Void = server.run()
    /// try await server.waitUntilRunning()
    /// let connection = try await Client.connect(to: path)
    /// ```
    ///
    /// Any number of tasks may wait, before or after ``run()`` is called.
    /// - Throws: What ``run()`` threw if it failed before it listened (a `SocketIPCError` such as `pathOccupied`
    ///   or `addressInUse`); `SocketIPCError` with code `invalidState` if the server was shut down before it
    ///   listened; `CancellationError` if the waiting task is cancelled first (the wait then ends at once).
    public func waitUntilRunning() async throws {
        let id = self.state.withLock { $0.startup.makeID() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (waiter: StartupWaiters.Waiter) in
                let result = self.state.withLock { $0.startup.add(waiter, id: id, isCancelled: Task.isCancelled) }
                if let result { waiter.resume(with: result) }
            }
        } onCancel: {
            self.state.withLock { $0.startup.remove(id) }?.resume(throwing: CancellationError())
        }
    }

    /// The start ended as `outcome`: resumes the tasks waiting in ``waitUntilRunning()`` (the first time).
    func endStartup(_ outcome: StartupWaiters.Outcome) {
        let ended = self.state.withLock { $0.startup.end(outcome) }
        for waiter in ended.waiters { waiter.resume(with: ended.result) }
    }
}

import Synchronization

/// One piece of a handler's async work: answering a request (``Reply/complete(_:)``), handling an EOF-style message.
typealias HandlerJob = @Sendable () async -> Void

/// A server's handler work: a discarding task group that ``Server/run()`` drives, with one child task for each
/// connection that has async work (that connection's ``ConnectionTasks`` driver), started when its first job comes.
///
/// Drivers are asked for from event loops and other threads; the task that drives the group adds them as children.
/// Cancelling the group (``cancelAll()``: a forced shutdown, the grace period's end) or the task that runs it reaches
/// every handler's work as task cancellation, and ``run()`` returns only once all of that work has ended: no handler
/// outlives its server.
final class HandlerTaskGroup: Sendable {
    private struct State {
        /// Drivers asked for and not yet added to the group.
        var pending: [ConnectionTasks] = []
        /// Whether ``cancelAll()`` was called since the group last looked.
        var cancelRequested = false
        /// Whether ``finish()`` was called: the group ends once the drivers started so far have ended.
        var finishing = false
        /// Drivers added to the group that have not ended: the group keeps taking cancellations until none is left,
        /// so that a cancellation after ``finish()`` (the grace period's end, once every connection closed but a
        /// handler still runs) still reaches them.
        var running = 0
        /// Whether the group is done: a driver asked for now has no group to join.
        var ended = false
        /// The task driving the group, while it waits for something to do.
        var waiter: UnsafeContinuation<Void, Never>?
    }

    /// What the task driving the group does next.
    private struct Batch {
        var drivers: [ConnectionTasks] = []
        var cancel = false
        /// ``finish()`` was called and every driver has ended.
        var done = false
    }

    private let state = Mutex(State())

    /// A group that ``run()`` drives.
    init() {}

    /// Runs each connection's driver as a child task until ``finish()``, then waits for those children to end.
    func run() async {
        await withDiscardingTaskGroup { group in
            while true {
                let batch = await self.next()
                for driver in batch.drivers {
                    // On the global executor, as `Task {}` would run it: not on the executor that `run()`'s caller
                    // may prefer (an event loop's, inside `Client.withEventLoopExecutor`), whose I/O a handler
                    // would stall. (Drivers on their connection's event loop were tried: a loaded full test run then
                    // hung, for a reason not found yet.) Each job chooses its own executor.
                    group.addTask(executorPreference: globalConcurrentExecutor) {
                        await driver.drive()
                        self.driverEnded()
                    }
                }
                if batch.cancel { group.cancelAll() }
                if batch.done { break }
            }
        }
        let late = self.state.withLock { state -> [ConnectionTasks] in
            state.ended = true
            defer { state.pending = [] }
            return state.pending
        }
        for driver in late { Self.runCancelled(driver) }
    }

    /// Starts `driver` as a child of the group. From any thread.
    ///
    /// After ``finish()``, while drivers still run, it joins the group as before (a job that came after its
    /// connection closed, whose driver runs its jobs cancelled). Once the group is done (every connection closed and
    /// every driver ended), the driver runs in a task of its own, cancelled at once.
    func start(_ driver: ConnectionTasks) {
        let (waiter, ended) = self.state.withLock { state -> (UnsafeContinuation<Void, Never>?, Bool) in
            guard !state.ended else { return (nil, true) }
            state.pending.append(driver)
            defer { state.waiter = nil }
            return (state.waiter, false)
        }
        if ended { Self.runCancelled(driver) }
        waiter?.resume()
    }

    /// Cancels every handler's work, now and later: what is running, and what is started from now on.
    func cancelAll() {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.cancelRequested = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// A driver added to the group has ended.
    private func driverEnded() {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.running -= 1
            guard state.running == 0, state.finishing else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Lets ``run()`` return once the drivers started so far have ended: the server has drained.
    func finish() {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.finishing = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Waits until there is something to do, and takes it.
    private func next() async -> Batch {
        while true {
            let batch = self.state.withLock { state -> Batch? in
                let done = state.finishing && state.pending.isEmpty && state.running == 0
                guard !state.pending.isEmpty || state.cancelRequested || done else { return nil }
                defer {
                    state.running += state.pending.count
                    state.pending = []
                    state.cancelRequested = false
                }
                return Batch(drivers: state.pending, cancel: state.cancelRequested, done: done)
            }
            if let batch { return batch }
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let wakeNow = self.state.withLock { state -> Bool in
                    let done = state.finishing && state.running == 0
                    guard state.pending.isEmpty, !state.cancelRequested, !done else { return true }
                    state.waiter = continuation
                    return false
                }
                if wakeNow { continuation.resume() }
            }
        }
    }

    /// Runs a driver that has no group to join: in a task of its own, cancelled at once.
    private static func runCancelled(_ driver: ConnectionTasks) {
        Task { await driver.drive() }.cancel()
    }
}

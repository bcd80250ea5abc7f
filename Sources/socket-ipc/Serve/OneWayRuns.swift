import ServiceLifecycle
import Synchronization

/// The command runs of `serve --exec` for one-way messages, which nothing answers: kept so that the server's shutdown
/// can end them, leaving no child behind.
///
/// A run is queued until its command starts (it waits for the connection's previous one-way message and for its
/// turn, ``ExecTurns``), then running. When the graceful shutdown begins (``beginShutdown(gracePeriod:)``) the queued
/// runs are cancelled and no new one starts; ``finish()`` then waits for the running ones until the grace period is
/// over and cancels those still running, which kills their commands' process groups.
///
/// Runs outlive their connections (a client may send a message and close at once), so the connection limits do not
/// bound them: each user's runs not yet ended may hold at most ``maximumBytesPerUser``, each counted as its payload but
/// at least ``minimumBytesPerRun`` (what a queued run itself costs: its task and its place in the queue), and a message
/// beyond that is refused (its connection is closed), so that one user cannot fill the server's memory or queue, with
/// large messages or with many empty ones.
final class OneWayRuns: Sendable {
    /// The most payload bytes one user's runs not yet ended may hold: 64 MiB.
    static let maximumBytesPerUser = 64 << 20
    /// What a run counts against ``maximumBytesPerUser`` at least, whatever its payload: 4 KiB (a queued run itself
    /// holds about 2 KiB), so that a user's runs number at most 16,384.
    static let minimumBytesPerRun = 4 << 10

    private struct Run {
        var task: Task<Void, Never>?
        var isRunning = false
    }

    /// Why ``start(bytes:user:_:)`` did not start a run.
    enum Refusal: Error {
        /// The shutdown has begun.
        case shuttingDown
        /// The user's runs already hold ``maximumBytesPerUser``.
        case userBudgetSpent
    }

    private struct State {
        var runs: [UInt64: Run] = [:]
        var nextID: UInt64 = 0
        /// The payload bytes of each user's runs not yet ended, by uid (`UInt32.max` for a peer without credentials).
        var bytesByUser: [UInt32: Int] = [:]
        /// When the shutdown's grace period ends; `nil` until the shutdown begins.
        var deadline: ContinuousClock.Instant?
        /// Resumed once `runs` is empty.
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// Starts `body` in a task of its own and keeps it until it ends; `body` gets the `mayStart` to pass to
    /// ``ExecCommand/run(_:peer:kind:keepsOutput:mayStart:)``, which marks the run as running.
    /// - Parameters:
    ///   - bytes: The message's payload, charged to `user` until the run ends.
    ///   - user: The sender's uid; `nil` for a peer without credentials.
    /// - Returns: The task.
    /// - Throws: ``Refusal``, and `body` is not run: the shutdown has begun, or the user's budget is spent.
    func start(
        bytes: Int,
        user: UInt32?,
        _ body: @escaping @Sendable (_ mayStart: @escaping @Sendable () -> Bool) async -> Void
    ) throws(Refusal) -> Task<Void, Never> {
        let user = user ?? .max
        let bytes = max(bytes, Self.minimumBytesPerRun)
        return try self.state.withLock { (state) throws(Refusal) -> Task<Void, Never> in
            guard state.deadline == nil else { throw .shuttingDown }
            let held = state.bytesByUser[user, default: 0]
            // One message alone is always taken (the connection's maximum message size bounds it).
            guard held == 0 || held + bytes <= Self.maximumBytesPerUser else { throw .userBudgetSpent }
            state.bytesByUser[user] = held + bytes
            state.nextID += 1
            let id = state.nextID
            let task = Task {
                await body { self.markRunning(id) }
                self.remove(id, bytes: bytes, user: user)
            }
            state.runs[id] = Run(task: task)
            return task
        }
    }

    /// Begins the shutdown: no run starts any more, the queued ones are cancelled, and the running ones have
    /// `gracePeriod` from now (see ``finish()``). Does nothing the second time.
    func beginShutdown(gracePeriod: Duration) {
        let queued = self.state.withLock { state -> [Task<Void, Never>] in
            guard state.deadline == nil else { return [] }
            state.deadline = .now.advanced(by: gracePeriod)
            return state.runs.values.filter { !$0.isRunning }.compactMap(\.task)
        }
        for task in queued { task.cancel() }
    }

    /// Ends the grace period now: no run starts any more and every run is cancelled, which kills the process groups of
    /// the commands running (a second shutdown signal).
    func stopNow() {
        let tasks = self.state.withLock { state -> [Task<Void, Never>] in
            state.deadline = .now
            return state.runs.values.compactMap(\.task)
        }
        for task in tasks { task.cancel() }
    }

    /// Waits for the running commands until the grace period given to ``beginShutdown(gracePeriod:)`` is over (from
    /// now when the shutdown has not begun), cancels (kills) those still running then, and waits until every run has
    /// ended.
    func finish(gracePeriod: Duration) async {
        self.beginShutdown(gracePeriod: gracePeriod)
        let deadline = self.state.withLock { $0.deadline } ?? .now
        let killer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            guard !Task.isCancelled else { return }
            for task in self.state.withLock({ $0.runs.values.compactMap(\.task) }) { task.cancel() }
        }
        await self.waitUntilIdle()
        killer.cancel()
    }

    /// Marks the run as running, unless the shutdown has begun.
    /// - Returns: Whether the run may start its command.
    private func markRunning(_ id: UInt64) -> Bool {
        self.state.withLock { state in
            guard state.deadline == nil, state.runs[id] != nil else { return false }
            state.runs[id]?.isRunning = true
            return true
        }
    }

    private func remove(_ id: UInt64, bytes: Int, user: UInt32) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.runs[id] = nil
            let left = state.bytesByUser[user, default: 0] - bytes
            state.bytesByUser[user] = left > 0 ? left : nil
            guard state.runs.isEmpty else { return [] }
            defer { state.idleWaiters = [] }
            return state.idleWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until no run is kept.
    private func waitUntilIdle() async {
        await withCheckedContinuation { continuation in
            let isIdle = self.state.withLock { state in
                if state.runs.isEmpty { return true }
                state.idleWaiters.append(continuation)
                return false
            }
            if isIdle { continuation.resume() }
        }
    }
}

/// The service that tells ``OneWayRuns`` when the graceful shutdown begins; placed after the server in its
/// `ServiceGroup`, so that it is told first, at once.
struct OneWayRunsShutdown: Service {
    /// The runs.
    let runs: OneWayRuns
    /// The server's shutdown grace period.
    let gracePeriod: Duration

    /// Waits for the graceful shutdown (or the group's cancellation), then begins the runs' shutdown.
    func run() async throws {
        try? await gracefulShutdown()
        self.runs.beginShutdown(gracePeriod: self.gracePeriod)
    }
}

/// The tasks waiting in ``Server/waitUntilRunning()``, and how the server's start ended once it has: a value kept
/// beside the server's state machine, under the same lock, so that a waiter is either resumed by the event that ends
/// the start or sees its outcome, never neither.
struct StartupWaiters {
    /// A task waiting for the start to end.
    typealias Waiter = CheckedContinuation<Void, any Error>

    /// How the start ended.
    enum Outcome {
        /// The socket listens and accepts connections (the moment ``Server``'s `onServerRunning` hook is called).
        case running
        /// ``Server/run()`` failed before the socket listened, with this error.
        case failed(any Error)
        /// The server was shut down before its socket listened.
        case stoppedBeforeRunning(SocketIPCError)

        /// What a waiter is resumed with.
        var result: Result<Void, any Error> {
            switch self {
            case .running: .success(())
            case .failed(let error): .failure(error)
            case .stoppedBeforeRunning(let error): .failure(error)
            }
        }
    }

    /// How the start ended; `nil` while it has not.
    private(set) var outcome: Outcome?
    private var waiters: [UInt64: Waiter] = [:]
    private var lastID: UInt64 = 0

    /// How many tasks wait now.
    var count: Int { self.waiters.count }

    /// A number for the next waiter, to remove it by if its task is cancelled.
    mutating func makeID() -> UInt64 {
        self.lastID += 1
        return self.lastID
    }

    /// Keeps `waiter` until the start ends; or, if it has ended (or the waiting task is cancelled), returns what to
    /// resume it with at once.
    mutating func add(_ waiter: Waiter, id: UInt64, isCancelled: Bool) -> Result<Void, any Error>? {
        if let outcome = self.outcome { return outcome.result }
        if isCancelled { return .failure(CancellationError()) }
        self.waiters[id] = waiter
        return nil
    }

    /// Removes the waiter `id`, whose task was cancelled; returns it to resume with `CancellationError`, or `nil`
    /// if it was resumed already (or not yet added: ``add(_:id:isCancelled:)`` then sees the cancellation).
    mutating func remove(_ id: UInt64) -> Waiter? {
        self.waiters.removeValue(forKey: id)
    }

    /// The start ended: the first outcome is kept; returns the waiters to resume with it (none the second time).
    mutating func end(_ outcome: Outcome) -> (waiters: [Waiter], result: Result<Void, any Error>) {
        guard self.outcome == nil else { return ([], outcome.result) }
        self.outcome = outcome
        defer { self.waiters = [:] }
        return (Array(self.waiters.values), outcome.result)
    }
}

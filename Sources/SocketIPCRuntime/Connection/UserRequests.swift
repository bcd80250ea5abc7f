import Synchronization

/// One user's requests (version 1, kind `0x02`) handed to a server's handlers and not answered yet, across its
/// connections, bounded by ``ServerConfiguration/maximumConcurrentRequestsPerUser``; part of the user's
/// ``UserCallAccount``.
///
/// At the bound, the connection that handed out the request stops handing out its peer's frames, as at its own
/// ``ConnectionOptions/maximumConcurrentRequests`` (a pause, never an error: replies, pings and credit still pass),
/// and so does every connection of the user with a request to hand out (before it, the request left unread), and
/// they wait here. Once answers bring the user's count down to ``wakeLevel``, every waiting connection is told to go
/// on; a quarter of the bound between the two keeps a user's many paused connections from all waking for each answer.
final class UserRequests: Sendable {
    /// The most requests of the user in progress.
    let limit: Int
    /// The count at or below which waiting connections go on: three quarters of ``limit``.
    let wakeLevel: Int
    private let inProgress = Atomic<Int>(0)
    /// The connections waiting, by identity, with what tells each to go on.
    private let waiters = Mutex<[ObjectIdentifier: @Sendable () -> Void]>([:])
    /// How many wait: read without the lock by each answer, which takes the lock only when someone waits.
    private let waiting = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = max(1, limit)
        self.wakeLevel = self.limit - max(1, self.limit / 4)
    }

    /// Counts a request handed to a handler.
    /// - Returns: Whether the user is now at its ``limit``: the connection should pause (``waitForRoom(_:wake:)``).
    @inline(__always)
    func received() -> Bool {
        self.inProgress.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue >= self.limit
    }

    /// `count` requests counted by ``received()`` are over (answered, or their connection closed); tells the waiting
    /// connections to go on once the user is down to ``wakeLevel``.
    @inline(__always)
    func ended(_ count: Int = 1) {
        guard count > 0 else { return }
        let now = self.inProgress.wrappingSubtract(count, ordering: .sequentiallyConsistent).newValue
        // Sequentially consistent with `waitForRoom`: either it sees this count, or this sees its registration.
        guard now <= self.wakeLevel, self.waiting.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let woken = self.waiters.withLock { waiters -> [@Sendable () -> Void] in
            defer {
                waiters = [:]
                self.waiting.store(0, ordering: .sequentiallyConsistent)
            }
            return Array(waiters.values)
        }
        for wake in woken { wake() }
    }

    /// The connection `id` stops handing out frames until the user is down to ``wakeLevel``: `wake` is called then
    /// (once, from any thread).
    /// - Returns: `false` when the user is there already (nothing is registered, and the connection goes on).
    func waitForRoom(_ id: ObjectIdentifier, wake: @escaping @Sendable () -> Void) -> Bool {
        self.waiters.withLock { waiters in
            waiters[id] = wake
            self.waiting.store(waiters.count, ordering: .sequentiallyConsistent)
            guard self.inProgress.load(ordering: .sequentiallyConsistent) > self.wakeLevel else {
                waiters[id] = nil
                self.waiting.store(waiters.count, ordering: .sequentiallyConsistent)
                return false
            }
            return true
        }
    }

    /// The connection `id` closed: it no longer waits.
    func stopWaiting(_ id: ObjectIdentifier) {
        guard self.waiting.load(ordering: .sequentiallyConsistent) > 0 else { return }
        self.waiters.withLock { waiters in
            waiters[id] = nil
            self.waiting.store(waiters.count, ordering: .sequentiallyConsistent)
        }
    }

    /// The user's requests in progress.
    var count: Int { self.inProgress.load(ordering: .relaxed) }
}

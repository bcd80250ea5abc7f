import SocketIPCCore
import Synchronization

/// What one user's connections to a server share about calls: the ``CancelAllowance`` they spend together
/// (``CancelAllowance/perUser``), read with the server's clock, and the count of the user's calls in progress
/// (``beginCall(limit:)``), which `ServiceRouter.maximumConcurrentCallsPerUser` bounds, and of its version-1 requests
/// in progress (``requests``). Kept by the server's ``UserCallAccounts``.
final class UserCallAccount: Sendable {
    private let allowance: Mutex<CancelAllowance>
    /// The user's requests in progress, across its connections (``ServerConfiguration/maximumConcurrentRequestsPerUser``).
    let requests: UserRequests
    /// The user's calls in progress, across its connections.
    private let callsInProgress = Atomic<Int>(0)
    /// The clock every allowance of the server reads, the connections' own too.
    let clock: CancelClock

    init(_ rate: CancelAllowance.Rate, clock: CancelClock, requestLimit: Int = .max) {
        self.allowance = Mutex(CancelAllowance(rate))
        self.clock = clock
        self.requests = UserRequests(limit: requestLimit)
    }

    /// Counts one cancel (``CancelAllowance/spend(at:)``).
    func spend(at now: ContinuousClock.Instant) -> Duration? {
        self.allowance.withLock { $0.spend(at: now) }
    }

    /// Whether any of the allowance is left (``CancelAllowance/allowsOpen(at:)``).
    func allowsOpen() -> Bool {
        self.allowance.withLock { $0.allowsOpen(at: self.clock.now()) }
    }

    /// Whether the allowance is whole again (``CancelAllowance/isFull(at:)``) and no call or request of the user is in
    /// progress:
    /// then the account may be forgotten, as a new one would be the same.
    func isFull(at now: ContinuousClock.Instant) -> Bool {
        self.allowance.withLock { $0.isFull(at: now) } && self.callsInProgress.load(ordering: .relaxed) == 0
            && self.requests.count == 0
    }

    /// Counts one more call of the user in progress, unless `limit` are already.
    /// - Returns: Whether it was counted; each counted call is given back with ``endCall()``.
    func beginCall(limit: Int) -> Bool {
        var current = self.callsInProgress.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = self.callsInProgress.compareExchange(
                expected: current,
                desired: current + 1,
                ordering: .relaxed
            )
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// A call counted by ``beginCall(limit:)`` is over.
    func endCall() {
        self.callsInProgress.subtract(1, ordering: .relaxed)
    }
}

/// The clock a server's cancel allowances read: the continuous clock, or, for tests, a time set by hand, so that how
/// many cancels an allowance takes does not depend on how fast the machine runs.
package final class CancelClock: Sendable {
    private let isSet = Atomic<Bool>(false)
    private let setTime = Mutex<ContinuousClock.Instant>(.now)

    init() {}

    /// The time now: the continuous clock's, unless one was set.
    func now() -> ContinuousClock.Instant {
        self.isSet.load(ordering: .acquiring) ? self.setTime.withLock { $0 } : .now
    }

    /// Stops the clock at `instant` (tests only): every allowance of the server reads it from then on.
    package func set(_ instant: ContinuousClock.Instant) {
        self.setTime.withLock { $0 = instant }
        self.isSet.store(true, ordering: .releasing)
    }
}

import SocketIPCCore
import Synchronization

/// A ``CancelAllowance`` that several connections spend together: one user's, across its connections to a server
/// (``CancelAllowance/perUser``). Kept by the server's ``UserCancelAllowances``, read with its clock.
final class SharedCancelAllowance: Sendable {
    private let allowance: Mutex<CancelAllowance>
    /// The clock every allowance of the server reads, the connections' own too.
    let clock: CancelClock

    init(_ rate: CancelAllowance.Rate, clock: CancelClock) {
        self.allowance = Mutex(CancelAllowance(rate))
        self.clock = clock
    }

    /// Counts one cancel (``CancelAllowance/spend(at:)``).
    func spend(at now: ContinuousClock.Instant) -> Duration? {
        self.allowance.withLock { $0.spend(at: now) }
    }

    /// Whether any of the allowance is left (``CancelAllowance/allowsOpen(at:)``).
    func allowsOpen() -> Bool {
        self.allowance.withLock { $0.allowsOpen(at: self.clock.now()) }
    }

    /// Whether the allowance is whole again (``CancelAllowance/isFull(at:)``).
    func isFull(at now: ContinuousClock.Instant) -> Bool {
        self.allowance.withLock { $0.isFull(at: now) }
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

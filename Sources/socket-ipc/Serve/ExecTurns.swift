import Foundation
import Synchronization

/// The turns of `serve --exec` to run its command: at most ``limit`` runs at once across the whole server (requests,
/// one-way messages and EOF-style messages alike); the others wait for a turn, shared fairly between users
/// (``FairTurnQueue``: a freed turn goes to the waiting user holding the fewest, round-robin among equals, first come
/// first served within each user), so that one user's many or long runs do not keep another user's runs waiting.
///
/// An async semaphore: ``acquire(user:)`` returns once a turn is free, ``release(user:)`` hands it to the next waiter.
/// How many wait is bounded elsewhere: a framed connection stops reading at its maximum of unanswered requests and
/// closes at ``ExecHandler/maximumPendingMessages`` one-way messages, a user's one-way runs that outlive their
/// connections are bounded by ``OneWayRuns/maximumBytesPerUser``, and an EOF-style connection carries one message.
final class ExecTurns: Sendable {
    private struct State {
        /// Turns nobody holds.
        var free: Int
        /// Who waits, by ticket.
        var waiting: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        /// The tickets waiting, by user, in the order their turns come.
        var queue = FairTurnQueue<UInt64>()
        /// The turns each user holds (users holding none are absent).
        var held: [UInt32: Int] = [:]
        var nextTicket: UInt64 = 0
    }

    /// The most runs at once.
    let limit: Int
    private let state: Mutex<State>
    /// Called (outside the lock) each time a run starts waiting for its turn: lets a test know the order of waiters.
    private let waiterQueued: (@Sendable () -> Void)?

    /// The default ``limit``: twice the CPU count, at least 4.
    static var defaultLimit: Int { max(4, 2 * ProcessInfo.processInfo.activeProcessorCount) }

    /// Creates the turns.
    /// - Parameters:
    ///   - limit: The most runs at once, at least 1.
    ///   - waiterQueued: Called each time a run starts waiting for its turn (for tests); default none.
    init(limit: Int, waiterQueued: (@Sendable () -> Void)? = nil) {
        precondition(limit > 0, "the limit of runs at once must be at least 1")
        self.limit = limit
        self.state = Mutex(State(free: limit))
        self.waiterQueued = waiterQueued
    }

    /// Waits for a turn; call ``release(user:)`` with the same `user` once the run is over.
    /// - Parameter user: The uid of the peer the run is for; `nil` for a peer without credentials (they share one
    ///   place in the round).
    /// - Throws: `CancellationError` when the calling task is cancelled before it gets its turn (it then holds none).
    func acquire(user: UInt32?) async throws {
        let user = user ?? .max
        let ticket = self.state.withLock { state in
            state.nextTicket += 1
            return state.nextTicket
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let granted: Bool? = self.state.withLock { state in
                    if Task.isCancelled { return false }
                    if state.free > 0 {
                        state.free -= 1
                        state.held[user, default: 0] += 1
                        return true
                    }
                    state.waiting[ticket] = continuation
                    state.queue.append(ticket, user: user)
                    return nil
                }
                switch granted {
                case true?: continuation.resume()
                case false?: continuation.resume(throwing: CancellationError())
                case nil: self.waiterQueued?()
                }
            }
        } onCancel: {
            let continuation = self.state.withLock { state in
                let continuation = state.waiting.removeValue(forKey: ticket)
                if continuation != nil { state.queue.cancel(ticket) }
                return continuation
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Gives the turn `user` held back: to the waiter whose turn it is (``FairTurnQueue``: of the users who wait, the
    /// one holding the fewest turns), if any.
    /// - Parameter user: As given to ``acquire(user:)``.
    func release(user: UInt32?) {
        let user = user ?? .max
        let next = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
            if let turns = state.held[user], turns > 1 { state.held[user] = turns - 1 } else { state.held[user] = nil }
            if let (ticket, next) = state.queue.popNext(held: state.held) {
                guard let continuation = state.waiting.removeValue(forKey: ticket) else {
                    preconditionFailure("a ticket handed out has no waiter")
                }
                state.held[next, default: 0] += 1
                return continuation
            }
            state.free += 1
            return nil
        }
        next?.resume()
    }
}

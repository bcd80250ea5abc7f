import Foundation
import Synchronization

/// The turns of `serve --exec` to run its command: at most ``limit`` runs at once across the whole server (requests,
/// one-way messages and EOF-style messages alike); the others wait for a turn, first come first served.
///
/// An async semaphore: ``acquire()`` returns once a turn is free, ``release()`` hands it to the longest waiter. How
/// many wait is bounded elsewhere: a framed connection stops reading at its maximum of unanswered requests and
/// closes at ``ExecHandler/maximumPendingMessages`` one-way messages, and an EOF-style connection carries one message.
final class ExecTurns: Sendable {
    private struct State {
        /// Turns nobody holds.
        var free: Int
        /// Who waits, by ticket.
        var waiting: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        /// The tickets in the order they came, from `head` on; those no longer in `waiting` were cancelled.
        var order: [UInt64] = []
        var head = 0
        var nextTicket: UInt64 = 0

        /// Drops what `order` holds before `head` and the cancelled tickets, once they are most of it.
        mutating func compact() {
            let queued = self.order.count - self.head
            guard self.order.count >= 1024, self.head * 2 >= self.order.count || self.waiting.count * 2 < queued else {
                return
            }
            self.order = self.order[self.head...].filter { self.waiting[$0] != nil }
            self.head = 0
        }
    }

    /// The most runs at once.
    let limit: Int
    private let state: Mutex<State>

    /// The default ``limit``: twice the CPU count, at least 4.
    static var defaultLimit: Int { max(4, 2 * ProcessInfo.processInfo.activeProcessorCount) }

    /// Creates the turns.
    /// - Parameter limit: The most runs at once, at least 1.
    init(limit: Int) {
        precondition(limit > 0, "the limit of runs at once must be at least 1")
        self.limit = limit
        self.state = Mutex(State(free: limit))
    }

    /// Waits for a turn; call ``release()`` once the run is over.
    /// - Throws: `CancellationError` when the calling task is cancelled before it gets its turn (it then holds none).
    func acquire() async throws {
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
                        return true
                    }
                    state.waiting[ticket] = continuation
                    state.order.append(ticket)
                    return nil
                }
                switch granted {
                case true?: continuation.resume()
                case false?: continuation.resume(throwing: CancellationError())
                case nil: break
                }
            }
        } onCancel: {
            let continuation = self.state.withLock { state in
                let continuation = state.waiting.removeValue(forKey: ticket)
                state.compact()
                return continuation
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Gives the turn back: to the longest waiter, if any.
    func release() {
        let next = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
            while state.head < state.order.count {
                let ticket = state.order[state.head]
                state.head += 1
                if let continuation = state.waiting.removeValue(forKey: ticket) {
                    state.compact()
                    return continuation
                }
            }
            state.order.removeAll(keepingCapacity: true)
            state.head = 0
            state.free += 1
            return nil
        }
        next?.resume()
    }
}

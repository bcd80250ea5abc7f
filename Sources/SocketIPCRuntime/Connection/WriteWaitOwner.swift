import Synchronization

/// What may end a sender's wait for room in the write queue (``Connection/waitUntilWritable(owner:)``) before the
/// sender's task is cancelled: a call whose deadline passed, or that its caller gave up, while its writer waited for a
/// peer that stopped reading (found by a review: such a write waited until the connection closed).
///
/// The owner keeps the id of the wait in progress from ``writeWaitBegan(id:)`` to ``writeWaitEnded(id:)``, and ends
/// it with ``Connection/cancelWriteWait(id:)``, which makes it throw `CancellationError`.
package protocol WriteWaitOwner: AnyObject, Sendable {
    /// A wait with `id` began; returns `false` if the owner has stopped already, which ends it at once.
    func writeWaitBegan(id: UInt64) -> Bool
    /// The wait with `id` ended, however it did.
    func writeWaitEnded(id: UInt64)
}

/// Ends a wait for room once a request's timeout passed (``Connection/waitUntilWritable(within:)``).
final class WriteWaitLimit: WriteWaitOwner {
    private let state = Mutex<(waiting: UInt64?, expired: Bool)>((nil, false))

    /// Whether the timeout passed.
    var hasExpired: Bool { self.state.withLock { $0.expired } }

    func writeWaitBegan(id: UInt64) -> Bool {
        self.state.withLock { state in
            guard !state.expired else { return false }
            state.waiting = id
            return true
        }
    }

    func writeWaitEnded(id: UInt64) {
        self.state.withLock { state in
            if state.waiting == id { state.waiting = nil }
        }
    }

    /// The timeout passed: ends the wait in progress on `connection`, and any that begins later.
    func expire(on connection: Connection) {
        let waiting = self.state.withLock { state -> UInt64? in
            state.expired = true
            return state.waiting.take()
        }
        if let waiting { connection.cancelWriteWait(id: waiting) }
    }
}

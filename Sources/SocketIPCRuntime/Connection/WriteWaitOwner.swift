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

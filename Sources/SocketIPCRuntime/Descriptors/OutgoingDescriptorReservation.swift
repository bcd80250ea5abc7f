import Synchronization

/// Room for `count` descriptors among those this side sends on one connection (``OutgoingDescriptorAccounts``),
/// counted from the moment it is taken: the relay takes it over with the descriptors it queues
/// (``DescriptorRelay/registerOutgoing(_:reservation:)``), and room never used is given back when this is released.
package final class OutgoingDescriptorReservation: Sendable {
    /// How many descriptors it makes room for; 0 when nothing was counted (the connection had stopped sending).
    let count: Int
    /// The connection's relay, kept so that no other takes its identity in the accounts while this is counted.
    private let relay: DescriptorRelay
    private let user: UInt32?
    private let taken = Atomic<Bool>(false)

    init(count: Int, relay: DescriptorRelay, user: UInt32?) {
        self.count = count
        self.relay = relay
        self.user = user
    }

    /// Hands the count over to the relay, which uncounts it once it sends or drops the descriptors; `false` if it was
    /// handed over already.
    func takeOver() -> Bool {
        !self.taken.exchange(true, ordering: .acquiringAndReleasing)
    }

    deinit {
        guard !self.taken.load(ordering: .acquiring), self.count > 0 else { return }
        OutgoingDescriptorAccounts.resume(
            admitted: OutgoingDescriptorAccounts.remove(self.count, connection: ObjectIdentifier(self.relay), user: self.user)
        )
    }
}

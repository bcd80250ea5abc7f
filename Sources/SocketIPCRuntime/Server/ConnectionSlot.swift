import Synchronization

/// A connection's place in the server's admission count (its connection limits, per user and in all), held by its
/// channel and by handler work that outlives the channel: an EOF-style collecting handler goes on when its client
/// closes right after its message (as `socat` does), and until it ends it still holds what the connection held.
/// Released, once, when the last holder lets go.
final class ConnectionSlot: Sendable {
    private let holders = Atomic<Int>(1)
    private let released: @Sendable () -> Void

    /// A slot held by its channel; `released` runs when the last holder lets go.
    init(released: @escaping @Sendable () -> Void) {
        self.released = released
    }

    /// Takes one more hold, for work that may outlive the channel.
    func hold() {
        self.holders.add(1, ordering: .relaxed)
    }

    /// Lets go of one hold.
    func release() {
        if self.holders.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { self.released() }
    }
}

import Synchronization

/// What the server keeps for one connection it serves on a channel: the one object that the connection's lifecycle
/// callbacks and its channel's close capture.
///
/// A closure that captures a single object uses it as its context; one that captures the server and an id (or more)
/// allocates a context of its own. So the callbacks of ``ConnectionLifecycle`` and the channel's close capture this
/// object alone: an idle connection holds one allocation here instead of four (W6 of the benchmarks is an idle
/// connection's memory).
final class ServedConnection: Sendable {
    let server: Server
    let id: UInt64
    /// The connection's relay, when it passes descriptors.
    let relay: DescriptorRelay?
    /// The connection's place in the server's admission count.
    let slot: ConnectionSlot

    init(server: Server, id: UInt64, relay: DescriptorRelay?, slot: ConnectionSlot) {
        self.server = server
        self.id = id
        self.relay = relay
        self.slot = slot
    }

    /// The channel closed: the channel's hold of the slot ends, for a relayed connection once its relay has written
    /// the last bytes and closed the socket (the server's run() does not return before).
    func channelClosed() {
        guard let relay = self.relay else {
            self.slot.release()
            return
        }
        relay.whenFinished {
            _ = self.server.relays.withLock { $0.removeValue(forKey: self.id) }
            self.slot.release()
        }
    }
}

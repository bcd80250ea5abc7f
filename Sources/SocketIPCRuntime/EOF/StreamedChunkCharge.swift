import Synchronization

/// What the chunks of an EOF-style streamed message hold while they wait for the streaming handler, charged to the
/// peer's user (``ServerConfiguration/maximumIncomingBytesPerUser``) as the frames a connection gathers are.
///
/// The event loop charges a chunk as it queues it (``arrived(_:)``) and the handler's iterator gives it back as the
/// handler takes it (``taken(_:)``). A connection closed for its user's account keeps its charge for the chunks still
/// queued, as they still hold memory until a stalled handler takes them or lets its body go: the charge is given back
/// then (at the latest when this object goes, with the body and the channel's handler). Without it, a handler that
/// keeps up for a while and then stalls (forwarding to a slow sink) let each of a user's connections hold 8 chunks of
/// up to 1 MiB, uncounted.
final class StreamedChunkCharge: Sendable {
    private struct State {
        var charge: IncomingBytesCharge
        /// The memory holding the chunks queued and not yet taken.
        var queued = 0
    }

    private let state: Mutex<State>

    init(_ charge: IncomingBytesCharge) {
        self.state = Mutex(State(charge: charge))
    }

    /// Charges a chunk held in `bytes` of memory as it is queued for the handler.
    /// - Returns: `false`, with nothing charged, when the user's account cannot take it.
    func arrived(_ bytes: Int) -> Bool {
        self.state.withLock { state in
            guard state.charge.keep(state.queued + bytes) else { return false }
            state.queued += bytes
            return true
        }
    }

    /// Gives back a chunk held in `bytes` of memory: the handler took it, or it was dropped unqueued.
    func taken(_ bytes: Int) {
        self.state.withLock { state in
            state.queued = max(0, state.queued - bytes)
            // Less than what is charged always fits.
            _ = state.charge.keep(state.queued)
        }
    }

    /// Why the connection is closed: a chunk of `size` bytes would take its user over its account.
    func refusal(of size: Int) -> SocketIPCError {
        let (accounts, user) = self.state.withLock { ($0.charge.accounts, $0.charge.user) }
        return accounts.refusal(of: size, user: user)
    }

    deinit {
        self.state.withLock { $0.charge.release() }
    }
}

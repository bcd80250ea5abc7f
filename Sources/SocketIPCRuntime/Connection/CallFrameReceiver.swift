import SocketIPCCore

/// What takes the call frames (kinds `0x06` to `0x0A`) of a connection: the services layer installs one with
/// ``Connection/setCallReceiver(_:)`` when the connection opens. Without one, a call the peer opens is answered with
/// status `unknownMethod` and the call's other frames are dropped.
package protocol CallFrameReceiver: AnyObject, Sendable {
    /// Takes one frame of call `id`, on the connection's event loop, in the order frames arrived; must not block.
    /// - Returns: `nil`, or the protocol violation the frame is (a message beyond the credit given, an open with the
    ///   wrong parity or an id in use): the connection then says going-away `0x01` and closes.
    func receive(_ frame: CallFrame, id: UInt32, on connection: Connection) -> SocketIPCError?
    /// Takes a call message that carried `descriptors` (a descriptors frame came right before it), as
    /// ``receive(_:id:on:)`` otherwise. Descriptors not handed on are closed when `descriptors` is released.
    func receive(
        _ frame: CallFrame,
        id: UInt32,
        descriptors: ReceivedDescriptors,
        on connection: Connection
    ) -> SocketIPCError?
    /// A call message of `length` bytes for call `id` came as a shared payload (frame `0x0E`), not yet mapped or
    /// copied: whether it is worth that. `false` for a call that is over, that takes no more messages, or whose
    /// method takes no message that large (the call is then refused, as ``receive(_:id:on:)`` refuses a message
    /// above its limit); the payload is then dropped unread (found by a review: 1,000 payloads of 8 MiB for a call
    /// that was never opened cost the server 1.65 s of CPU in copies, and the peer 40 bytes each).
    func takesSharedMessage(id: UInt32, length: Int, on connection: Connection) -> Bool
    /// Whether call `id`, which the peer opened, has a handler that a cancel would stop now: what the peer's
    /// ``CancelAllowance`` counts. A cancel of a call that is over, or that was refused, stops nothing and costs no
    /// more than any frame (found by a review: counting those, an honest client that cancelled many calls, some of
    /// them refused already, was read no further for seconds).
    func cancelStopsHandler(id: UInt32) -> Bool
    /// The connection closed with `error`: every call still in progress fails with it.
    func connectionClosed(_ connection: Connection, error: SocketIPCError)
    /// This side said going-away `0x00` (its server is shutting down): the connection closes once its calls have
    /// ended, so end those that would not by themselves.
    func connectionGoingAway(_ connection: Connection)
    /// The peer said going-away (any reason): it takes no new calls on this connection.
    func peerIsGoingAway(_ connection: Connection)
}

extension CallFrameReceiver {
    /// Does nothing.
    package func peerIsGoingAway(_ connection: Connection) {}
}

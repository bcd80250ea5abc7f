import NIOCore

/// One unit of SocketIPC's framed protocol, as decoded by ``FrameDecoder``. See PROTOCOL.md for the byte layout.
///
/// ```
/// +----------------+----------+------------------------+-------------+
/// | length: UInt32 | kind: u8 | id: UInt32 (kinds 2-4) | payload ... |
/// +----------------+----------+------------------------+-------------+
///   big-endian; counts every byte after itself
/// ```
@usableFromInline
package enum Frame: Equatable, Sendable {
    /// A one-way message; nothing answers it.
    case message(ByteBuffer)
    /// A request the peer must answer with a reply or an error reply carrying the same id.
    case request(id: UInt32, payload: ByteBuffer)
    /// The answer to request `id`.
    case reply(id: UInt32, payload: ByteBuffer)
    /// Request `id` failed in the peer's handler; the payload is a UTF-8 description.
    case errorReply(id: UInt32, message: String)
    /// The sender will close the connection: it accepts no new requests but answers those it has.
    case goAway(GoAwayReason, message: String)
    /// A frame of call `id` (kinds `0x06` to `0x0A`); only from a peer that set ``HelloFlags/calls``.
    case call(id: UInt32, CallFrame)
    /// A keepalive ping; the receiver answers with a pong of the same id. Only from a peer that set
    /// ``HelloFlags/calls``.
    case ping(id: UInt32)
    /// The answer to this side's ping `id`.
    case pong(id: UInt32)
    /// The next frame carries `count` (1 to 255) file descriptors, passed with this frame's bytes. Only from a peer
    /// that set ``HelloFlags/descriptors``.
    case descriptors(count: Int)
    /// A frame of `kind` (message, request, reply or call message; `id` for those with one) whose `length` bytes of
    /// payload are in the sealed shared memory passed by the descriptors frame before it. Only from a peer that set
    /// ``HelloFlags/sharedPayloads``.
    case sharedPayload(kind: FrameKind, id: UInt32, length: Int)
}

/// The frame kinds, the byte after the length.
///
/// Kinds `0x01` to `0x05` are version 1's. Kinds `0x06` to `0x0C` (calls, their streams and keepalive) exist only on
/// a connection whose peer set ``HelloFlags/calls`` in its hello; from any other peer they are unknown kinds, as in
/// version 1.
@usableFromInline
package enum FrameKind: UInt8, Sendable {
    case message = 0x01
    case request = 0x02
    case reply = 0x03
    case errorReply = 0x04
    case goAway = 0x05
    /// Opens a call: the method's name and the caller's deadline.
    case callOpen = 0x06
    /// One message of a call's stream, in either direction.
    case callMessage = 0x07
    /// Ends one direction of a call: the caller's half-close, or the handler's final status.
    case callEnd = 0x08
    /// The caller gives up a call: cancelled, or its deadline passed.
    case callCancel = 0x09
    /// The receiver of a call's messages allows the sender more bytes (flow control).
    case callCredit = 0x0A
    /// Asks the peer to show it is alive (keepalive); it answers with a pong carrying the same id.
    case ping = 0x0B
    /// The answer to a ping.
    case pong = 0x0C
    /// The next frame carries this many file descriptors, passed with this frame's bytes (`SCM_RIGHTS`). Only from
    /// a peer that set ``HelloFlags/descriptors``.
    case descriptors = 0x0D
    /// A message, request, reply or call message whose payload is in the sealed shared memory (`memfd`) the
    /// descriptors frame before it passed. Only from a peer that set ``HelloFlags/sharedPayloads``.
    case sharedPayload = 0x0E
    /// The sender has a call message to send that costs more credit than it has, and asks for that much (as QUIC's
    /// `STREAM_DATA_BLOCKED`, RFC 9000, section 19.13). Only from a peer that set ``HelloFlags/strictCredit``.
    case callBlocked = 0x0F

    /// Bytes of the frame header after the length field: the kind, and the id where there is one.
    @inlinable
    package var headerLength: Int {
        switch self {
        case .message, .goAway, .descriptors, .sharedPayload: 1
        default: 5
        }
    }

    /// The hello flag a peer must have set to send this kind; empty for version 1's kinds.
    @inlinable
    package var requiredFlag: HelloFlags {
        switch self {
        case .message, .request, .reply, .errorReply, .goAway: []
        case .descriptors: .descriptors
        case .sharedPayload: [.descriptors, .sharedPayloads]
        case .callBlocked: [.calls, .strictCredit]
        default: .calls
        }
    }

    /// Whether the kind is one of version 1's, understood by every peer.
    @inlinable
    package var isVersion1: Bool { self.rawValue <= FrameKind.goAway.rawValue }
}

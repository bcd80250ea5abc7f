/// The frame kinds, the byte after the length.
@usableFromInline
package enum FrameKind: UInt8, Sendable {
    case message = 0x01
    case request = 0x02
    case reply = 0x03
    case errorReply = 0x04
    case goAway = 0x05

    /// Bytes of the frame header after the length field: the kind, and the id where there is one.
    @inlinable
    package var headerLength: Int {
        switch self {
        case .message, .goAway: 1
        case .request, .reply, .errorReply: 5
        }
    }
}

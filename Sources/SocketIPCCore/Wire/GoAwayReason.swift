/// Why a peer sends a going-away frame: the first payload byte of a ``Frame/goAway(_:message:)``.
@usableFromInline
package enum GoAwayReason: UInt8, Equatable, Sendable {
    /// An orderly close, such as a server shutting down.
    case normal = 0x00
    /// The peer broke the protocol (bad hello, unknown kind, truncated header).
    case protocolViolation = 0x01
    /// A frame exceeded the receiver's maximum.
    case messageTooLarge = 0x02
    /// The hello named a protocol version the receiver does not speak.
    case unsupportedVersion = 0x03
    /// The receiver's authorization policy refused this peer.
    case unauthorized = 0x04
    /// The sender is short of a resource it needs to go on with the connection, through no fault of the peer's: it
    /// could not take the descriptors passed (out of file descriptors). A peer that does not know this reason reads
    /// it as ``protocolViolation``, as PROTOCOL.md asks of any reason it does not know.
    case resourceExhausted = 0x05

    /// The error code a peer's going-away with this reason turns into.
    package var errorCode: SocketIPCError.Code {
        switch self {
        case .normal: .peerGoingAway
        case .protocolViolation: .protocolViolation
        case .messageTooLarge: .messageTooLarge
        case .unsupportedVersion: .unsupportedVersion
        case .unauthorized: .unauthorized
        case .resourceExhausted: .resourceExhausted
        }
    }

    package init(code: SocketIPCError.Code) {
        switch code {
        case .messageTooLarge: self = .messageTooLarge
        case .unsupportedVersion: self = .unsupportedVersion
        case .unauthorized: self = .unauthorized
        // `resourceExhausted` stays `0x01` here: a peer that claims more than its user may hold broke the rules. A side
        // short of a resource itself (``resourceExhausted``) says so explicitly.
        case .peerGoingAway: self = .normal
        default: self = .protocolViolation
        }
    }
}

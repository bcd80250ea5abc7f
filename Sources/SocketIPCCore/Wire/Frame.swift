import NIOCore

/// One unit of SocketIPC's framed protocol, as decoded by ``FrameDecoder``. See PROTOCOL.md for the byte layout.
///
/// ```
/// +----------------+----------+------------------------+-------------+
/// | length: UInt32 | kind: u8 | id: UInt32 (kinds 2-4) | payload ... |
/// +----------------+----------+------------------------+-------------+
///   big-endian; counts every byte after itself
/// ```
package enum Frame: Equatable {
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
}

/// The frame kinds, the byte after the length.
@usableFromInline
package enum FrameKind: UInt8, Sendable {
    case message = 0x01
    case request = 0x02
    case reply = 0x03
    case errorReply = 0x04
    case goAway = 0x05

    /// Bytes of the frame header after the length field: the kind, and the id where there is one.
    package var headerLength: Int {
        switch self {
        case .message, .goAway: 1
        case .request, .reply, .errorReply: 5
        }
    }
}

/// Why a peer sends a going-away frame: the first payload byte of a ``Frame/goAway(_:message:)``.
package enum GoAwayReason: UInt8, Equatable {
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

    /// The error code a peer's going-away with this reason turns into.
    package var errorCode: SocketIPCError.Code {
        switch self {
        case .normal: .peerGoingAway
        case .protocolViolation: .protocolViolation
        case .messageTooLarge: .messageTooLarge
        case .unsupportedVersion: .unsupportedVersion
        case .unauthorized: .unauthorized
        }
    }

    package init(code: SocketIPCError.Code) {
        switch code {
        case .messageTooLarge: self = .messageTooLarge
        case .unsupportedVersion: self = .unsupportedVersion
        case .unauthorized: self = .unauthorized
        case .peerGoingAway: self = .normal
        default: self = .protocolViolation
        }
    }
}

/// The 8 bytes each side sends first on a framed connection: magic `SIPC`, version, flags, reserved.
package enum Hello {
    /// `S` `I` `P` `C`.
    package static let magic: UInt32 = 0x5349_5043
    /// The protocol version this implementation speaks.
    package static let version: UInt8 = 1
    /// Bytes in a hello.
    package static let length = 8

    package static func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(UInt8(0))  // flags
        buffer.writeInteger(UInt16(0))  // reserved
    }
}

extension ByteBuffer {
    /// Writes a frame header: length, kind and (for requests and replies) the id. The payload follows.
    @inline(__always)
    package mutating func writeFrameHeader(_ kind: FrameKind, id: UInt32 = 0, payloadLength: Int) {
        // Three plain integer writes: `writeMultipleIntegers` copies through a generic path that costs more than
        // the rest of a small send.
        self.writeInteger(UInt32(truncatingIfNeeded: kind.headerLength + payloadLength))
        self.writeInteger(kind.rawValue)
        if kind.headerLength == 5 { self.writeInteger(id) }
    }

    /// Writes a whole frame.
    package mutating func writeFrame(_ frame: Frame) {
        switch frame {
        case .message(var payload):
            self.writeFrameHeader(.message, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .request(let id, var payload):
            self.writeFrameHeader(.request, id: id, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .reply(let id, var payload):
            self.writeFrameHeader(.reply, id: id, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .errorReply(let id, let message):
            self.writeFrameHeader(.errorReply, id: id, payloadLength: message.utf8.count)
            self.writeString(message)
        case .goAway(let reason, let message):
            self.writeFrameHeader(.goAway, payloadLength: 1 + message.utf8.count)
            self.writeInteger(reason.rawValue)
            self.writeString(message)
        }
    }
}

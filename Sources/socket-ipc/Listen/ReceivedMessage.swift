import Foundation
import NIOCore
import SocketIPC

/// One message as `listen` saw it: when and from whom it came, what kind it was, and its bytes.
struct ReceivedMessage {
    /// What carried the message.
    enum Kind: String {
        /// A framed one-way message (from a client, or pushed by the server with `listen --connect`).
        case message
        /// A framed request; `listen` answers it with an empty reply.
        case request
        /// An EOF-style message: everything one connection sent before its half-close.
        case eof
    }

    /// When the message had arrived whole.
    var time: Date
    /// The sender's credentials, where the kernel told them.
    var peer: PeerCredentials?
    /// The connection's number, as the library's logs and `listen`'s connection notes give it.
    var connectionID: UInt64
    /// What carried the message.
    var kind: Kind
    /// The payload.
    var payload: [UInt8]
    /// What the file descriptors passed with the message were, in order; they are closed once described.
    var descriptors: [DescriptorDescription] = []

    /// Records `payload`, received now.
    init(_ payload: ByteBuffer, kind: Kind, peer: PeerCredentials?, connectionID: UInt64, time: Date = Date()) {
        self.time = time
        self.peer = peer
        self.connectionID = connectionID
        self.kind = kind
        self.payload = Array(payload.readableBytesView)
    }

    /// Records `payload` and describes `descriptors`, closing them.
    init(
        _ payload: ByteBuffer,
        descriptors: ReceivedDescriptors,
        kind: Kind,
        peer: PeerCredentials?,
        connectionID: UInt64
    ) {
        self.init(payload, kind: kind, peer: peer, connectionID: connectionID)
        self.descriptors = DescriptorDescription.describingAndClosing(descriptors)
    }

    /// The time in ISO 8601, in UTC with milliseconds: `2026-11-30T16:03:06.123Z`.
    var timestamp: String {
        self.time.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt))
    }
}

import Logging
import NIOCore

/// A connection the server admitted, on the channel just made for it: what a ``ConnectionInitializer`` sets up.
struct AcceptedConnection {
    /// The connection's channel, not yet active.
    var channel: any Channel
    /// The connection's number in logs.
    var id: UInt64
    /// The channel's socket: the connection's, or the relay's socket pair when it passes descriptors.
    var descriptor: Int32
    /// The relay between the connection's socket and its channel, when it passes descriptors.
    var descriptorRelay: DescriptorRelay?
    /// The peer's credentials as the server read them when it accepted the connection (with what its policy needed:
    /// groups, control group, security label).
    var peer: PeerCredentials?
    /// What the accepting thread read already (an EOF-style message it could not finish there), if anything.
    var initialBytes: ByteBuffer?
    /// The server's callbacks, the handshake deadline counted from the accept, and where the connection's handler
    /// work runs.
    var lifecycle: ConnectionLifecycle
    /// Where the connection logs.
    var logger: Logger
}

/// How a ``Server`` of one style serves the connections it admits: ``FramedConnectionInitializer`` or
/// ``EOFConnectionInitializer``.
protocol ConnectionInitializer: Sendable {
    /// Whether the connection's channel stays open after the peer half-closes (the EOF style, whose message ends
    /// there and whose acknowledgement follows).
    var allowsRemoteHalfClosure: Bool { get }

    /// Whether a peer the authorization policy refused is told why before it is closed (framed), or closed before
    /// anything is read (EOF style).
    var explainsRefusals: Bool { get }

    /// The most descriptors a message may carry; above 0, each connection's bytes go through a ``DescriptorRelay``.
    var maximumDescriptorsPerMessage: Int { get }

    /// Serves an admitted connection on the accepting thread, where the style can do that without waiting for the
    /// peer.
    /// - Parameters:
    ///   - descriptor: The connection's socket.
    ///   - id: The connection's number in logs.
    ///   - peer: The peer's credentials, as the server read them at the accept (`nil` where the platform cannot tell).
    ///   - logger: Where the connection logs.
    /// - Returns: `nil` when the style cannot (the connection goes to a channel); otherwise whether it was served
    ///   here or goes to a channel with the bytes read so far.
    func serveOnAcceptingThread(
        _ descriptor: Int32, id: UInt64, peer: PeerCredentials?, logger: Logger
    ) -> EOFInlineServer.Outcome?

    /// Sets up the channel of an admitted connection: its options and handlers.
    /// - Throws: What setting them up threw; the server then closes the connection.
    func initialize(_ connection: AcceptedConnection) throws
}

extension ConnectionInitializer {
    /// No descriptors.
    var maximumDescriptorsPerMessage: Int { 0 }

    /// Serves nothing on the accepting thread.
    func serveOnAcceptingThread(
        _ descriptor: Int32, id: UInt64, peer: PeerCredentials?, logger: Logger
    ) -> EOFInlineServer.Outcome? {
        nil
    }
}

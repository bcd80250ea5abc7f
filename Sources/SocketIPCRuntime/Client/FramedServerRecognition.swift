import NIOCore
import SocketIPCCore

/// Tells whether the bytes an EOF-style client read back came from a framed SocketIPC server instead of an EOF-style
/// one: a framed server answers any connection with its hello and, when it dislikes what it read (the EOF client's
/// message is not a hello), a going-away frame.
///
/// ```
/// 53495043 01 00 0000          hello: magic "SIPC", version, flags, reserved
/// …                            frames the server sent at once (a message, say), if any
/// 0000000n 05 rr <text>        going-away: length, kind 0x05, reason, text (optional, maybe cut short)
/// ```
enum FramedServerRecognition {
    /// What a framed server said.
    struct Answer: Equatable {
        /// The protocol version of its hello.
        var protocolVersion: UInt8
        /// The reason of the going-away frame after the hello, if one came.
        var goAwayReason: UInt8?
        /// The text of that going-away frame, as far as it came.
        var goAwayText: String?
    }

    /// Parses `bytes` as a hello, followed by whole frames (the last may be cut short) among which the first
    /// going-away, if any, gives the reason: PROTOCOL.md lets a side send frames right after its hello, so a server
    /// may send a message before it reads the client's bytes and goes away (found by a review: a hello followed by a
    /// message frame was taken for an EOF-style acknowledgement).
    /// - Returns: What the framed server said, or `nil` when the bytes are anything else.
    static func recognize(_ bytes: ByteBuffer) -> Answer? {
        guard bytes.readableBytes >= 5,
            bytes.getInteger(at: bytes.readerIndex, as: UInt32.self) == Hello.magic,
            let version = bytes.getInteger(at: bytes.readerIndex + 4, as: UInt8.self)
        else { return nil }
        var rest = bytes
        rest.moveReaderIndex(forwardBy: min(Hello.length, rest.readableBytes))
        guard rest.readableBytes > 0 else { return Answer(protocolVersion: version) }
        // A whole hello has its reserved bytes zero (any version so far): an EOF-style server's acknowledgement that
        // happens to start with "SIPC" (an echo of "SIPC is great", found by a review) does not.
        guard bytes.getInteger(at: bytes.readerIndex + 6, as: UInt16.self) == 0 else { return nil }
        // Then whole frames of known kinds, each no longer than the largest frame a default server sends, until a
        // going-away, which a framed server sends before it closes on an EOF-style client; or bytes that end before
        // it (the rest was not read). Anything else is not a framed server's answer.
        while rest.readableBytes > 0 {
            guard let length = rest.readInteger(as: UInt32.self) else { return Answer(protocolVersion: version) }
            guard length >= 1, length <= Self.largestFrameLength else { return nil }
            guard let kindByte = rest.readInteger(as: UInt8.self) else { return Answer(protocolVersion: version) }
            guard let kind = FrameKind(rawValue: kindByte) else { return nil }
            if kind == .goAway {
                guard length >= 2 else { return nil }
                let reason = rest.readInteger(as: UInt8.self)
                let textLength = min(Int(length) - 2, rest.readableBytes)
                // A peer's text, escaped and cut as every going-away's is (found by a review: `socket-ipc probe`
                // printed a server's escape sequences and newlines raw).
                let text = textLength > 0 ? PeerText.read(&rest, length: textLength) : nil
                return Answer(protocolVersion: version, goAwayReason: reason, goAwayText: text)
            }
            guard rest.readableBytes >= Int(length) - 1 else { return Answer(protocolVersion: version) }
            rest.moveReaderIndex(forwardBy: Int(length) - 1)
        }
        // Whole frames and no going-away: a framed server closes an EOF-style client's connection only after one.
        return nil
    }

    /// The longest frame a server with the default maximum sends: the kind, an id, and 16 MiB.
    private static let largestFrameLength = UInt32(FrameDecoder.defaultMaximumPayload + 5)

    /// The error for an EOF-style exchange with a framed server at `path`, if `bytes` show that it is one.
    /// The error's code is ``SocketIPCError/Code/wrongStyle``.
    static func error(for bytes: ByteBuffer?, path: String) -> SocketIPCError? {
        guard let bytes, let answer = Self.recognize(bytes) else { return nil }
        var message =
            "this is a framed server: the server at \(path) answered with a framed SocketIPC hello (protocol version "
            + "\(answer.protocolVersion)), so it does not take EOF-style messages; use a framed connection "
            + "(socket-ipc send: drop --eof)"
        if answer.goAwayReason == GoAwayReason.unauthorized.rawValue {
            message += "; its authorization policy also refused this process"
        }
        return SocketIPCError(.wrongStyle, message, path: path)
    }
}

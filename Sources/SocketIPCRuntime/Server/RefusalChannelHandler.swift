import NIOCore

/// Tells a framed peer that the server's authorization policy refused it, then closes: the server's hello and a
/// going-away frame with reason `unauthorized` (`0x04`) in one write, as PROTOCOL.md describes.
///
/// The peer's own bytes (its hello, maybe a request) are read and dropped, and the connection is half-closed and
/// left open for at most ``ConnectionOptions/goAwayLingerTime`` before it is closed: closing at once with the peer's bytes unread could
/// make the peer's write fail with `EPIPE` before it reads the frame that says why.
final class RefusalChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// How long a refused connection may stay half-closed waiting for the peer to close its side.
    private let lingerTime: TimeAmount

    private let text: String

    /// - Parameters:
    ///   - text: The going-away frame's text.
    ///   - lingerTime: How long to wait, half-closed, for the peer to close (``ConnectionOptions/goAwayLingerTime``).
    init(text: String, lingerTime: Duration) {
        self.text = text
        self.lingerTime = .init(lingerTime)
    }

    func channelActive(context: ChannelHandlerContext) {
        var bytes = context.channel.allocator.buffer(capacity: Hello.length + 6 + self.text.utf8.count)
        Hello.write(into: &bytes)
        bytes.writeFrame(.goAway(.unauthorized, message: self.text))
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(bytes)).assumeIsolated().whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: self.lingerTime) { channel.close(promise: nil) }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The refused peer's bytes are dropped unread.
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

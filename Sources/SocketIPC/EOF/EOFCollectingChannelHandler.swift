import Logging
import NIOCore

/// Collects an EOF-style message until the client half-closes, then runs the handler and writes its
/// acknowledgement. Bounded by the handler's maximum size: one byte more closes the connection.
final class EOFCollectingChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let kind: EOFMessageHandler.Kind
    private var messageContext: EOFMessageContext
    private let authorization: AuthorizationPolicy
    private var message: ByteBuffer?
    private var done = false

    init(
        kind: EOFMessageHandler.Kind,
        context: EOFMessageContext,
        initialBytes: ByteBuffer? = nil,
        authorization: AuthorizationPolicy
    ) {
        self.message = initialBytes
        self.kind = kind
        self.messageContext = context
        self.authorization = authorization
    }

    private var maximumSize: Int {
        switch self.kind {
        case .eventLoop(let maximumSize, _), .collecting(let maximumSize, _): maximumSize
        case .streaming: .max
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        PeerCredentials.read(from: context.channel).assumeIsolated().whenSuccess { peer in
            self.messageContext.peer = peer
            if !self.authorization.allows(peer) {
                self.messageContext.logger.notice(
                    "authorization policy refused the peer",
                    metadata: ["socketipc.peer": "\(peer.map { "\($0)" } ?? "unknown")"]
                )
                self.done = true
                context.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        var chunk = Self.unwrapInboundIn(data)
        let size = (self.message?.readableBytes ?? 0) + chunk.readableBytes
        guard size <= self.maximumSize else {
            self.done = true
            self.message = nil
            let error = SocketIPCError(.messageTooLarge, "the message exceeds the maximum of \(self.maximumSize) bytes")
            self.messageContext.logger.notice("closing connection: message too large", metadata: ["error": "\(error)"])
            self.messageContext.reportFailure(error)
            context.close(promise: nil)
            return
        }
        if self.message == nil {
            self.message = chunk
        } else {
            self.message!.writeBuffer(&chunk)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .some(ChannelEvent.inputClosed) = event as? ChannelEvent, !self.done else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        self.done = true
        let message = self.message ?? context.channel.allocator.buffer(capacity: 0)
        self.message = nil
        let messageContext = self.messageContext
        switch self.kind {
        case .eventLoop(_, let body):
            do {
                let acknowledgement = try body(message, messageContext)
                Self.finish(channel: context.channel, acknowledgement: acknowledgement)
            } catch {
                messageContext.handlerFailed(error)
                context.close(promise: nil)
            }
        case .collecting(_, let body):
            Self.handleInTask(body, message: message, context: messageContext, channel: context.channel)
        case .streaming:
            preconditionFailure("streaming messages use EOFStreamingChannelHandler")
        }
    }

    private static func handleInTask(
        _ body: @escaping @Sendable (ByteBuffer, EOFMessageContext) async throws -> ByteBuffer?,
        message: ByteBuffer,
        context: EOFMessageContext,
        channel: any Channel
    ) {
        Task {
            do {
                Self.finish(channel: channel, acknowledgement: try await body(message, context))
            } catch {
                context.handlerFailed(error)
                channel.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.messageContext.logger.debug("connection error", metadata: ["error": "\(error)"])
        if !self.done {
            self.done = true
            self.messageContext.reportFailure(SocketIPCError(.connectionClosed, "the connection failed: \(error)"))
        }
        context.close(promise: nil)
    }

    /// Writes the acknowledgement, if any, and closes.
    static func finish(channel: any Channel, acknowledgement: ByteBuffer?) {
        guard let acknowledgement else {
            channel.close(promise: nil)
            return
        }
        channel.writeAndFlush(acknowledgement).whenComplete { _ in channel.close(promise: nil) }
    }
}

import Logging
import NIOCore

/// Collects an EOF-style message until the client half-closes, then runs the handler and writes its
/// acknowledgement. Bounded by the handler's maximum size: one byte more closes the connection; and by the time
/// limit: a message that has not ended (the client has not half-closed) within it closes the connection too.
///
/// The message is kept in one buffer that grows by doubling, never as the slices of the reads it came in (a slice
/// keeps its whole read buffer alive), so a peer that sends one byte per write costs at most about 2 bytes of memory
/// per byte.
final class EOFCollectingChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let kind: EOFMessageHandler.Kind
    private var messageContext: EOFMessageContext
    private let authorization: AuthorizationPolicy
    private let timeLimit: Duration
    private var message: ByteBuffer?
    private var done = false
    private var timer: Scheduled<Void>?

    init(
        kind: EOFMessageHandler.Kind,
        context: EOFMessageContext,
        initialBytes: ByteBuffer? = nil,
        authorization: AuthorizationPolicy,
        timeLimit: Duration
    ) {
        self.message = initialBytes
        self.kind = kind
        self.messageContext = context
        self.authorization = authorization
        self.timeLimit = timeLimit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let limit = self.timeLimit
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(limit)) {
            guard !self.done else { return }
            self.done = true
            self.message = nil
            let error = SocketIPCError(
                .timedOut,
                "the message did not end (no half-close from the client) within the time limit of \(limit)"
            )
            self.messageContext.logger.notice("closing connection: message timed out", metadata: ["error": "\(error)"])
            self.messageContext.reportFailure(error)
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
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
                self.timer?.cancel()
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
            self.timer?.cancel()
            self.message = nil
            let error = SocketIPCError(.messageTooLarge, "the message exceeds the maximum of \(self.maximumSize) bytes")
            self.messageContext.logger.notice("closing connection: message too large", metadata: ["error": "\(error)"])
            self.messageContext.reportFailure(error)
            context.close(promise: nil)
            return
        }
        if self.message == nil {
            self.message = chunk.keepingOnlyReadableBytes(allocator: context.channel.allocator)
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
        self.timer?.cancel()
        let message = self.message ?? context.channel.allocator.buffer(capacity: 0)
        self.message = nil
        let messageContext = self.messageContext
        switch self.kind {
        case .eventLoop(_, let body):
            do {
                let acknowledgement = try body(message, messageContext)
                Self.finish(channel: context.channel, acknowledgement: acknowledgement, timeLimit: self.timeLimit)
            } catch {
                messageContext.handlerFailed(error)
                context.close(promise: nil)
            }
        case .collecting(_, let body):
            Self.handleInTask(body, message: message, context: messageContext, channel: context.channel, timeLimit: self.timeLimit)
        case .streaming:
            preconditionFailure("streaming messages use EOFStreamingChannelHandler")
        }
    }

    private static func handleInTask(
        _ body: @escaping @Sendable (ByteBuffer, EOFMessageContext) async throws -> ByteBuffer?,
        message: ByteBuffer,
        context: EOFMessageContext,
        channel: any Channel,
        timeLimit: Duration
    ) {
        Task {
            do {
                Self.finish(channel: channel, acknowledgement: try await body(message, context), timeLimit: timeLimit)
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
            self.timer?.cancel()
            self.messageContext.reportFailure(SocketIPCError(.connectionClosed, "the connection failed: \(error)"))
        }
        context.close(promise: nil)
    }

    /// Writes the acknowledgement, if any, and closes; a client that has not read the whole acknowledgement within
    /// `timeLimit` is closed on (it would otherwise keep its connection, and its slot, for as long as it likes).
    static func finish(channel: any Channel, acknowledgement: ByteBuffer?, timeLimit: Duration) {
        guard let acknowledgement else {
            channel.close(promise: nil)
            return
        }
        if channel.eventLoop.inEventLoop {
            Self.write(acknowledgement, on: channel, timeLimit: timeLimit)
        } else {
            channel.eventLoop.execute { Self.write(acknowledgement, on: channel, timeLimit: timeLimit) }
        }
    }

    /// On the channel's event loop: writes `acknowledgement`, then closes.
    private static func write(_ acknowledgement: ByteBuffer, on channel: any Channel, timeLimit: Duration) {
        var pending = true
        let written = channel.writeAndFlush(acknowledgement).assumeIsolated()
        written.whenComplete { _ in
            pending = false
            channel.close(promise: nil)
        }
        // Usually the acknowledgement fits in the socket buffer and is written at once: no timer then.
        if pending {
            let timer = channel.eventLoop.assumeIsolated().scheduleTask(in: .init(timeLimit)) {
                channel.close(promise: nil)
            }
            written.whenComplete { _ in timer.cancel() }
        }
    }
}

extension ByteBuffer {
    /// This buffer, or a copy of its readable bytes in a buffer of their size when it holds much more storage than
    /// it has readable bytes (as a read's buffer does after a short read): what a handler keeps must cost about what
    /// it holds.
    func keepingOnlyReadableBytes(allocator: ByteBufferAllocator) -> ByteBuffer {
        guard self.capacity > 2 * self.readableBytes + 64 else { return self }
        var copy = allocator.buffer(capacity: self.readableBytes)
        copy.writeImmutableBuffer(self)
        return copy
    }
}

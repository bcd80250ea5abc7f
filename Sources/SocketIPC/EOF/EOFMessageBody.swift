import Logging
import NIOCore

/// The chunks of one EOF-style message, as they are read from the socket, ending when the client half-closes.
///
/// The server reads the next chunks only as the sequence is consumed, so a message of any size passes through in
/// bounded memory. Iterate it once.
public struct EOFMessageBody: AsyncSequence, Sendable {
    /// A chunk of the message.
    public typealias Element = ByteBuffer
    typealias Producer = NIOThrowingAsyncSequenceProducer<
        ByteBuffer, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, ReadDemand
    >

    let producer: Producer

    /// The iterator of the chunks.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: Producer.AsyncIterator

        /// The next chunk, or `nil` after the last.
        /// - Throws: ``SocketIPCError`` with code `connectionClosed` when the client went away before its half-close.
        public mutating func next() async throws -> ByteBuffer? {
            try await self.base.next()
        }
    }

    /// Makes the iterator.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.producer.makeAsyncIterator())
    }

    /// Collects every chunk into one buffer.
    /// - Parameter maximumSize: The largest message accepted.
    /// - Throws: ``SocketIPCError`` with code `messageTooLarge` when the message is larger.
    public func collect(upTo maximumSize: Int) async throws -> ByteBuffer {
        var whole = ByteBuffer()
        for try await var chunk in self {
            guard whole.readableBytes + chunk.readableBytes <= maximumSize else {
                throw SocketIPCError(.messageTooLarge, "the message exceeds the maximum of \(maximumSize) bytes")
            }
            whole.writeBuffer(&chunk)
        }
        return whole
    }
}

/// Asks the channel for more bytes when the consumer of an ``EOFMessageBody`` wants them.
struct ReadDemand: NIOAsyncSequenceProducerDelegate {
    let channel: any Channel

    func produceMore() {
        self.channel.eventLoop.execute {
            self.channel.pipeline.handler(type: EOFStreamingChannelHandler.self).assumeIsolated().whenSuccess {
                $0.produceMore()
            }
        }
    }

    func didTerminate() {}
}

/// Feeds an EOF-style message to a streaming handler through an ``EOFMessageBody``, reading from the socket only
/// while the handler keeps up (the channel does not read automatically).
final class EOFStreamingChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let body: @Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?
    private var messageContext: EOFMessageContext
    private let authorization: AuthorizationPolicy
    private var source: EOFMessageBody.Producer.Source?
    private var wantsMore = true
    private var context: ChannelHandlerContext?

    init(
        body: @escaping @Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?,
        context: EOFMessageContext,
        authorization: AuthorizationPolicy
    ) {
        self.body = body
        self.messageContext = context
        self.authorization = authorization
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        PeerCredentials.read(from: channel).assumeIsolated().whenSuccess { peer in
            self.messageContext.peer = peer
            guard self.authorization.allows(peer) else {
                self.messageContext.logger.notice("authorization policy refused the peer")
                context.close(promise: nil)
                return
            }
            let made = EOFMessageBody.Producer.makeSequence(
                backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
                finishOnDeinit: false,
                delegate: ReadDemand(channel: channel)
            )
            self.source = made.source
            let messageBody = EOFMessageBody(producer: made.sequence)
            let body = self.body
            let messageContext = self.messageContext
            Task {
                do {
                    let acknowledgement = try await body(messageBody, messageContext)
                    EOFCollectingChannelHandler.finish(channel: channel, acknowledgement: acknowledgement)
                } catch {
                    messageContext.handlerFailed(error)
                    channel.close(promise: nil)
                }
            }
            context.read()
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let source = self.source else { return }
        switch source.yield(Self.unwrapInboundIn(data)) {
        case .produceMore: self.wantsMore = true
        case .stopProducing: self.wantsMore = false
        case .dropped: self.wantsMore = false
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.wantsMore, self.source != nil { context.read() }
    }

    func produceMore() {
        guard !self.wantsMore else { return }
        self.wantsMore = true
        self.context?.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.source?.finish()
            self.source = nil
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.source?.finish(SocketIPCError(.connectionClosed, "the client closed the connection before the message ended"))
        self.source = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.messageContext.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

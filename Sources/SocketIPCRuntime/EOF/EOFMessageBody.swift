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
    /// What the queued chunks hold, charged to the peer's user; `nil` where nothing counts it.
    let charge: StreamedChunkCharge?

    /// The iterator of the chunks.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: Producer.AsyncIterator
        let charge: StreamedChunkCharge?

        /// The next chunk, or `nil` after the last.
        /// - Throws: `SocketIPCError` with code `connectionClosed` when the client went away before its half-close;
        ///   `resourceExhausted` when the server closed the connection because the chunks that its user's
        ///   connections hold waiting for their handlers reached ``ServerConfiguration/maximumIncomingBytesPerUser``
        ///   (after the chunks read before).
        public mutating func next() async throws -> ByteBuffer? {
            let chunk = try await self.base.next()
            if let chunk, let charge = self.charge { charge.taken(chunk.storageCapacity) }
            return chunk
        }
    }

    /// Makes the iterator.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.producer.makeAsyncIterator(), charge: self.charge)
    }

    /// Collects every chunk into one buffer.
    /// - Parameter maximumSize: The largest message accepted.
    /// - Throws: `SocketIPCError` with code `messageTooLarge` when the message is larger.
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
///
/// The time limit applies to each wait for more bytes: while the handler wants more and the client sends nothing
/// for that long (without half-closing), the connection is closed. Time the handler itself takes does not count.
/// Each chunk costs about what it holds: a short read's bytes are copied out of its (much larger) read buffer. On a
/// server, the chunks queued ahead of the handler count against their user's
/// ``ServerConfiguration/maximumIncomingBytesPerUser`` (``StreamedChunkCharge``); a chunk that would take the user
/// over it closes the connection with `resourceExhausted`.
final class EOFStreamingChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let body: @Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?
    private var messageContext: EOFMessageContext
    private let timeLimit: Duration
    private var source: EOFMessageBody.Producer.Source?
    private var wantsMore = true
    private var context: ChannelHandlerContext?
    /// When the handler started waiting for bytes that have not come yet; `nil` when it is not waiting.
    private var waitingSince: NIODeadline?
    private var timer: Scheduled<Void>?
    /// Where the handler runs, cancelled when the connection closes.
    private let tasks: ConnectionTaskSlot
    /// What the queued chunks hold, charged to the peer's user; `nil` where nothing counts it.
    private let charge: StreamedChunkCharge?

    init(
        body: @escaping @Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?,
        context: EOFMessageContext,
        timeLimit: Duration,
        taskOwner: ConnectionTasks.Owner,
        incomingBytes: IncomingBytesCharge? = nil
    ) {
        self.tasks = ConnectionTaskSlot(owner: taskOwner)
        self.charge = incomingBytes.map(StreamedChunkCharge.init)
        self.body = body
        self.messageContext = context
        self.timeLimit = timeLimit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.waitingSince = .now()
        self.scheduleTimer(at: .now() + .init(self.timeLimit), context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.timer?.cancel()
        self.timer = nil
    }

    /// Checks at `deadline` whether the current wait for bytes has lasted the time limit; one timer at a time,
    /// rescheduled as it fires rather than per read.
    private func scheduleTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        let channel = context.channel
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            guard self.context != nil else { return }
            let limit = TimeAmount(self.timeLimit)
            guard let since = self.waitingSince else {
                self.scheduleTimer(at: .now() + limit, context: context)
                return
            }
            if since + limit <= .now() {
                let error = SocketIPCError(
                    .timedOut,
                    "the client sent nothing for the time limit of \(self.timeLimit) while the message had not ended"
                )
                self.messageContext.logger.debug("closing connection: message timed out", metadata: ["error": "\(errorText(error))"])
                self.messageContext.reportFailure(error)
                self.source?.finish(error)
                self.source = nil
                self.timer = nil
                channel.close(promise: nil)
            } else {
                self.scheduleTimer(at: since + limit, context: context)
            }
        }
    }

    /// Asks the channel for more bytes and starts the wait for them.
    private func read(context: ChannelHandlerContext) {
        if self.waitingSince == nil { self.waitingSince = .now() }
        context.read()
    }

    func channelActive(context: ChannelHandlerContext) {
        if self.messageContext.peer != nil {
            self.start(context: context)
        } else {
            PeerCredentials.read(from: context.channel).assumeIsolated().whenSuccess { peer in
                self.messageContext.peer = peer
                self.start(context: context)
            }
        }
        context.fireChannelActive()
    }

    /// Starts the handler's task with the message's body, once the peer's credentials are known.
    private func start(context: ChannelHandlerContext) {
        let channel = context.channel
        let made = EOFMessageBody.Producer.makeSequence(
            backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
            finishOnDeinit: false,
            delegate: ReadDemand(channel: channel)
        )
        self.source = made.source
        let messageBody = EOFMessageBody(producer: made.sequence, charge: self.charge)
        let body = self.body
        let messageContext = self.messageContext
        let timeLimit = self.timeLimit
        self.tasks.get().run {
            do {
                let acknowledgement = try await body(messageBody, messageContext)
                EOFCollectingChannelHandler.finish(channel: channel, acknowledgement: acknowledgement, timeLimit: timeLimit)
            } catch {
                messageContext.handlerFailed(error)
                channel.close(promise: nil)
            }
        }
        self.read(context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let source = self.source else { return }
        self.waitingSince = nil
        let chunk = Self.unwrapInboundIn(data).keepingOnlyReadableBytes(allocator: context.channel.allocator)
        if let charge = self.charge, !charge.arrived(chunk.storageCapacity) {
            self.refuseOverAccount(chunk.readableBytes, charge: charge, context: context)
            return
        }
        switch source.yield(chunk) {
        case .produceMore: self.wantsMore = true
        case .stopProducing: self.wantsMore = false
        case .dropped:
            // Nobody reads the body any more: the chunk is not queued.
            self.charge?.taken(chunk.storageCapacity)
            self.wantsMore = false
        }
    }

    /// A chunk of `size` bytes would take the peer's user over its account: the handler's body fails with
    /// `resourceExhausted` after the chunks already queued, and the connection is closed, as a framed connection
    /// gathering a frame over it is.
    private func refuseOverAccount(_ size: Int, charge: StreamedChunkCharge, context: ChannelHandlerContext) {
        let error = charge.refusal(of: size)
        self.messageContext.logger.debug("closing connection: its user's incoming bytes", metadata: ["error": "\(errorText(error))"])
        self.messageContext.reportFailure(error)
        self.source?.finish(error)
        self.source = nil
        self.waitingSince = nil
        self.timer?.cancel()
        self.timer = nil
        context.close(promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.wantsMore, self.source != nil { self.read(context: context) }
    }

    func produceMore() {
        guard !self.wantsMore else { return }
        self.wantsMore = true
        if let context = self.context { self.read(context: context) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.source?.finish()
            self.source = nil
            self.waitingSince = nil
            self.timer?.cancel()
            self.timer = nil
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.source?.finish(SocketIPCError(.connectionClosed, "the client closed the connection before the message ended"))
        self.source = nil
        // A handler still running finishes (a message cut short has failed its body's stream above); the server's
        // grace period still ends it.
        self.tasks.close(cancellingJobs: false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.messageContext.logger.debug("connection error", metadata: ["error": "\(errorText(error))"])
        context.close(promise: nil)
    }
}

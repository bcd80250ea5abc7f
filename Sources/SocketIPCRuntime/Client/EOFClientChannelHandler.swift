import NIOCore

/// Writes the message, half-closes, and collects the acknowledgement until EOF.
///
/// Only an end-of-stream from the server after the whole message was written and the write side shut down counts
/// as delivery; a failed write, a reset or a close before that fails the exchange.
final class EOFClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What is left to write; `nil` when the whole message was written and the write side shut down already.
    private let message: ByteBuffer?
    private let maximumAcknowledgementSize: Int
    private let path: String
    private let promise: EventLoopPromise<ByteBuffer>
    private var received: ByteBuffer?
    /// Whether the whole message is written and the write side shut down.
    private var sent: Bool
    private var finished = false

    init(
        message: ByteBuffer?,
        received: ByteBuffer? = nil,
        maximumAcknowledgementSize: Int,
        path: String,
        acknowledgement: EventLoopPromise<ByteBuffer>
    ) {
        self.message = message
        self.sent = message == nil
        self.received = received.flatMap { $0.readableBytes > 0 ? $0 : nil }
        self.maximumAcknowledgementSize = maximumAcknowledgementSize
        self.path = path
        self.promise = acknowledgement
    }

    func channelActive(context: ChannelHandlerContext) {
        if let message = self.message {
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(Self.wrapOutboundOut(message), promise: written)
            written.futureResult.assumeIsolated().whenComplete { result in
                switch result {
                case .success:
                    self.sent = true
                    context.close(mode: .output, promise: nil)
                case .failure(let error):
                    self.fail(cause: "\(errorText(error))", context: context)
                }
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.finished else { return }
        var chunk = Self.unwrapInboundIn(data)
        if (self.received?.readableBytes ?? 0) + chunk.readableBytes > self.maximumAcknowledgementSize {
            self.finish(
                .failure(
                    SocketIPCError(
                        .messageTooLarge,
                        "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgementSize) bytes",
                        path: self.path
                    )
                ),
                context: context
            )
            return
        }
        if self.received == nil { self.received = chunk } else { self.received!.writeBuffer(&chunk) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.endOfStream(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Once the write side is shut down, NIO reports the server's end-of-stream by closing the channel (without
        // an error: a reset or a failed write arrives first, through `errorCaught` or the write's promise).
        self.endOfStream(context: context)
        context.fireChannelInactive()
    }

    /// The server closed its side: delivery if the whole message was written and the write side shut down first.
    private func endOfStream(context: ChannelHandlerContext) {
        if let framed = FramedServerRecognition.error(for: self.received, path: self.path) {
            self.finish(.failure(framed), context: context)
        } else if self.sent {
            self.finish(.success(self.received ?? ByteBuffer()), context: context)
        } else {
            self.fail(cause: "it closed while the message was being written", context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? IOError {
            self.fail(cause: errnoDescription(error.errnoCode), context: context)
        } else {
            self.fail(cause: "\(errorText(error))", context: context)
        }
    }

    /// Fails the exchange: as with a framed server if what it sent says so, else as not delivered.
    private func fail(cause: String, context: ChannelHandlerContext) {
        let error =
            FramedServerRecognition.error(for: self.received, path: self.path)
            ?? .eofNotDelivered(path: self.path, cause: cause)
        self.finish(.failure(error), context: context)
    }

    private func finish(_ result: Result<ByteBuffer, SocketIPCError>, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.received = nil
        self.promise.completeWith(result.mapError { $0 as any Error })
        context.close(promise: nil)
    }
}

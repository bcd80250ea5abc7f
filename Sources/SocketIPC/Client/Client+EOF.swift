import NIOCore
import NIOPosix

extension Client {
    /// Sends `message` as one EOF-style message (connect, write, half-close) and returns the server's
    /// acknowledgement: every byte it wrote before closing, empty if it wrote none.
    /// - Parameters:
    ///   - message: The message, of any size.
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    /// - Returns: The acknowledgement.
    /// - Throws: ``SocketIPCError`` with code `invalidPath`, `connectionRefused`, `messageTooLarge` (the
    ///   acknowledgement), `connectionClosed` (the connection failed before EOF) or `systemCall`.
    public static func sendMessage(
        _ message: ByteBuffer,
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: .seconds(10))
        let eventLoop = MultiThreadedEventLoopGroup.singleton.any()
        let acknowledgement = eventLoop.makePromise(of: ByteBuffer.self)
        do {
            _ = try await ClientBootstrap(group: eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            EOFClientChannelHandler(
                                message: message,
                                maximumAcknowledgementSize: maximumAcknowledgementSize,
                                acknowledgement: acknowledgement
                            )
                        )
                    }
                }
                .withConnectedSocket(descriptor)
                .get()
        } catch {
            acknowledgement.fail(error)
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(error)", path: path)
        }
        return try await acknowledgement.futureResult.get()
    }

    /// Sends one EOF-style message that `body` writes in pieces, with backpressure, then half-closes and returns the
    /// server's acknowledgement. Use it for messages too large to hold in memory.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    ///   - body: Writes the message with the ``EOFMessageWriter`` it is given.
    /// - Returns: The acknowledgement.
    public static func sendMessage(
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024,
        body: (EOFMessageWriter) async throws -> Void
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: .seconds(10))
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .withConnectedSocket(descriptor) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                    }
                }
        } catch {
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(error)", path: path)
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await body(EOFMessageWriter(outbound: outbound))
            outbound.finish()
            var acknowledgement = ByteBuffer()
            for try await var chunk in inbound {
                guard acknowledgement.readableBytes + chunk.readableBytes <= maximumAcknowledgementSize else {
                    throw SocketIPCError(
                        .messageTooLarge,
                        "the acknowledgement exceeds the maximum of \(maximumAcknowledgementSize) bytes"
                    )
                }
                acknowledgement.writeBuffer(&chunk)
            }
            return acknowledgement
        }
    }
}

/// Writes the pieces of one EOF-style message; each ``write(_:)`` waits while the server is not reading.
public struct EOFMessageWriter: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    /// Writes the next piece of the message.
    public func write(_ bytes: ByteBuffer) async throws {
        try await self.outbound.write(bytes)
    }
}

/// Writes the message, half-closes, and collects the acknowledgement until EOF.
final class EOFClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let message: ByteBuffer
    private let maximumAcknowledgementSize: Int
    private let promise: EventLoopPromise<ByteBuffer>
    private var received: ByteBuffer?
    private var finished = false

    init(message: ByteBuffer, maximumAcknowledgementSize: Int, acknowledgement: EventLoopPromise<ByteBuffer>) {
        self.message = message
        self.maximumAcknowledgementSize = maximumAcknowledgementSize
        self.promise = acknowledgement
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(Self.wrapOutboundOut(self.message), promise: nil)
        context.flush()
        context.close(mode: .output, promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = Self.unwrapInboundIn(data)
        if (self.received?.readableBytes ?? 0) + chunk.readableBytes > self.maximumAcknowledgementSize {
            self.finish(
                .failure(SocketIPCError(.messageTooLarge, "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgementSize) bytes")),
                context: context
            )
            return
        }
        if self.received == nil { self.received = chunk } else { self.received!.writeBuffer(&chunk) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.finish(.success(self.received ?? ByteBuffer()), context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.success(self.received ?? ByteBuffer()), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.finish(
            .failure(SocketIPCError(.connectionClosed, "the connection failed before the server's EOF: \(error)")),
            context: context
        )
    }

    private func finish(_ result: Result<ByteBuffer, SocketIPCError>, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.received = nil
        self.promise.completeWith(result.mapError { $0 as any Error })
        context.close(promise: nil)
    }
}

import Logging
import NIOCore

/// Callbacks a connection's owner (the server's registry, the client's connect call) gets from its channel handler.
struct ConnectionLifecycle: Sendable {
    /// Called on the event loop once the peer's hello has arrived.
    var handshakeCompleted: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection opened (before the peer's hello).
    var opened: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection closed; the error is `nil` for an orderly close.
    var closed: @Sendable (Connection, SocketIPCError?) -> Void = { _, _ in }
}

/// The one handler in a framed connection's pipeline: sends the hello, decodes every frame of a read in one loop
/// and hands each straight to the user's ``ConnectionHandler`` (no per-frame pipeline traversal), and flushes what
/// the handlers answered once per read batch.
final class ConnectionChannelHandler<Handler: ConnectionHandler>: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var handler: Handler?
    private var decoder: FrameDecoder
    private var cumulation: FrameAssembler?
    private var connection: Connection?
    private var failure: SocketIPCError?
    private var handshakeDone = false
    /// Whether a frame is being handed to the user's handler: a close it causes is reported after it returns, so the
    /// handler is never re-entered.
    private var dispatching = false
    private var isClosed = false
    private let options: ConnectionOptions
    private let connectionID: UInt64
    private let lifecycle: ConnectionLifecycle
    private let authorization: AuthorizationPolicy
    private let logger: Logger
    /// The socket's descriptor, where known, for the latency mode's busy polling.
    private let descriptor: Int32?

    init(
        handler: Handler,
        options: ConnectionOptions,
        connectionID: UInt64,
        lifecycle: ConnectionLifecycle,
        authorization: AuthorizationPolicy = .allowAll,
        descriptor: Int32? = nil,
        logger: Logger
    ) {
        self.descriptor = descriptor
        self.authorization = authorization
        self.handler = handler
        self.options = options
        self.decoder = FrameDecoder(maximumPayload: options.maximumMessageSize)
        self.connectionID = connectionID
        self.lifecycle = lifecycle
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        // Completes at once on the event loop. The connection exists before the hello is written: if the peer is
        // already gone, the failed write closes the channel right here, and that close must find the connection.
        PeerCredentials.read(from: channel).assumeIsolated().whenSuccess { peer in
            let connection = Connection(
                id: self.connectionID,
                channel: channel,
                descriptor: self.descriptor,
                options: self.options,
                peer: peer,
                logger: self.logger
            )
            self.connection = connection
            // Any close caused below is reported once this setup is done, never in the middle of it.
            self.dispatching = true
            defer { self.dispatching = false }
            if self.logger.logLevel <= .debug { connection.logger.debug("connection opened") }
            if let descriptor = self.descriptor, let poller = connection.busyPoller { poller.add(descriptor) }
            var hello = channel.allocator.buffer(capacity: Hello.length)
            Hello.write(into: &hello)
            guard self.authorization.allows(peer) else {
                // The hello and the going-away frame in one write, so that the peer reads them together and its
                // connect call can fail with `unauthorized` instead of returning a connection that is closing.
                self.fail(
                    SocketIPCError(
                        .unauthorized,
                        "the server's authorization policy refused this peer (\(peer.map { "\($0)" } ?? "credentials unknown"))"
                    ),
                    context: context,
                    after: hello
                )
                return
            }
            connection.writeThroughChannel(CollectionOfOne(hello))
            guard !self.isClosed else { return }
            self.lifecycle.opened(connection)
            self.handler!.connectionDidOpen(connection)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection = self.connection, self.failure == nil else { return }
        // Work on locals and store them back once per read: class properties accessed per frame would cost a
        // dynamic exclusivity check each time.
        var incoming = Self.unwrapInboundIn(data)
        var decoder = self.decoder
        var handler = self.handler.take()!
        let handshakeWasDone = self.handshakeDone
        var failure: SocketIPCError?
        var leftover: FrameAssembler?
        connection.readBatchStarted()
        self.dispatching = true
        do {
            // Complete the frame the last read left unfinished with just the bytes it lacks; the rest of this read
            // is then decoded where it lies, without copying.
            if var partial = self.cumulation.take() {
                while !self.isClosed {
                    let needed = decoder.bytesNeeded(toComplete: partial.head)
                    let missing = needed - partial.readableBytes
                    if missing > 0 {
                        guard incoming.readableBytes > 0 else { break }
                        partial.append(incoming.readSlice(length: min(missing, incoming.readableBytes))!, frameLength: needed)
                        continue
                    }
                    var whole = partial.takeContiguous()
                    if let frame = try decoder.next(from: &whole) {
                        Self.dispatch(frame, to: &handler, connection: connection)
                        self.noteHandshake(handshakeWasDone, connection)
                    }
                    partial = FrameAssembler(whole)
                    if whole.readableBytes == 0 { break }
                }
                if partial.readableBytes > 0 { leftover = partial }
            }
            if leftover == nil {
                while !self.isClosed, let frame = try decoder.next(from: &incoming) {
                    Self.dispatch(frame, to: &handler, connection: connection)
                    self.noteHandshake(handshakeWasDone, connection)
                }
                if incoming.readableBytes > 0 { leftover = Self.keep(incoming) }
            }
        } catch let error as SocketIPCError {
            failure = error
        } catch {
            failure = SocketIPCError(.protocolViolation, "\(error)")
        }
        self.dispatching = false
        self.handler = handler
        self.decoder = decoder
        if !self.handshakeDone && decoder.helloReceived {
            self.handshakeDone = true
            self.lifecycle.handshakeCompleted(connection)
        }
        if let failure {
            self.fail(failure, context: context)
            return
        }
        if let leftover, !self.isClosed { self.cumulation = leftover }
    }

    /// Reports the handshake once the first frame after the peer's hello has been dispatched, so that a going-away
    /// frame sent right after the hello (an authorization refusal) is known when the handshake is reported.
    @inline(__always)
    private func noteHandshake(_ wasDone: Bool, _ connection: Connection) {
        if !wasDone && !self.handshakeDone {
            self.handshakeDone = true
            self.lifecycle.handshakeCompleted(connection)
        }
    }

    @inline(__always)
    private static func dispatch(_ frame: Frame, to handler: inout Handler, connection: Connection) {
        switch frame {
        case .message(let message):
            handler.didReceiveMessage(message, on: connection)
        case .request(let id, let payload):
            connection.requestReceived()
            handler.didReceiveRequest(payload, reply: Reply(connection: connection, id: id), on: connection)
        case .reply(let id, let payload):
            connection.replyReceived(id: id, result: .success(payload))
        case .errorReply(let id, let message):
            connection.replyReceived(id: id, result: .failure(SocketIPCError(.remoteError, message)))
        case .goAway(let reason, let message):
            connection.peerIsGoingAway(reason, message: message)
        }
    }

    /// The start of a frame a read left unfinished, kept for the next read. A small rest is copied out of the read
    /// buffer, so that NIO can reuse that buffer; a large one is kept where it is. (When a read ends on a frame
    /// boundary nothing is kept, so an idle connection holds no read buffer.)
    private static func keep(_ rest: ByteBuffer) -> FrameAssembler {
        guard rest.readableBytes <= 4096 else { return FrameAssembler(rest) }
        var copy = ByteBufferAllocator().buffer(capacity: max(rest.readableBytes, 64))
        copy.writeImmutableBuffer(rest)
        return FrameAssembler(copy)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection?.readBatchEnded()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.connection?.writabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.failure == nil {
            self.failure = SocketIPCError(.connectionClosed, "the connection failed: \(error)")
            self.logger.debug("connection error", metadata: ["error": "\(error)"])
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.isClosed = true
        self.connection?.socketClosed()
        if let descriptor = self.descriptor, let poller = self.connection?.busyPoller { poller.remove(descriptor) }
        if self.dispatching {
            // Closed from inside the user's handler: report it once that call has returned.
            context.eventLoop.assumeIsolated().execute { self.reportClosed() }
        } else {
            self.reportClosed()
        }
        context.fireChannelInactive()
    }

    private func reportClosed() {
        self.cumulation = nil
        if let connection = self.connection {
            connection.closed(error: self.failure)
            let error = connection.closeError.flatMap { $0.code == .connectionClosed && self.failure == nil ? nil : $0 }
            if self.logger.logLevel <= .debug {
                connection.logger.debug("connection closed", metadata: error.map { ["error": "\($0)"] } ?? [:])
            }
            self.handler!.connectionDidClose(connection, error: error)
            self.lifecycle.closed(connection, error)
        }
    }

    /// Tells the peer why (a going-away frame, written after `prefix` in the same write) and closes: the decoder met
    /// something it cannot continue after, or the peer is not authorized.
    private func fail(_ error: SocketIPCError, context: ChannelHandlerContext, after prefix: ByteBuffer? = nil) {
        self.failure = error
        self.cumulation = nil
        self.logger.notice(
            "closing connection after a protocol error",
            metadata: ["socketipc.connection": "\(self.connectionID)", "error": "\(error)"]
        )
        var frame = prefix ?? context.channel.allocator.buffer(capacity: 64)
        frame.writeFrame(.goAway(GoAwayReason(code: error.code), message: error.message))
        self.connection?.flushPendingWrites()
        // Half-close and linger briefly instead of closing at once: a peer still writing would otherwise get EPIPE
        // and might never read the going-away frame that says why.
        let channel = context.channel
        let written = self.connection?.writeThroughChannel(CollectionOfOne(frame)) ?? context.writeAndFlush(Self.wrapOutboundOut(frame))
        written.assumeIsolated().whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        }
    }
}

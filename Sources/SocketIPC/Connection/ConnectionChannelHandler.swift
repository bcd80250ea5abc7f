import Logging
import NIOCore

/// Callbacks a connection's owner (the server's registry, the client's connect call) gets from its channel handler.
struct ConnectionLifecycle: Sendable {
    /// When the peer's handshake must be complete, if the owner set a deadline (the server: its handshake timeout
    /// after accepting the connection); otherwise the handler's handshake timeout counts from when it is active.
    var handshakeDeadline: NIODeadline? = nil
    /// Called on the event loop once the peer's hello has arrived.
    var handshakeCompleted: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection opened (before the peer's hello).
    var opened: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection closed; the error is `nil` for an orderly close.
    var closed: @Sendable (Connection, SocketIPCError?) -> Void = { _, _ in }
    /// Where ``Reply/complete(_:)`` runs the connection's async work, cancelled when the connection closes: in the
    /// server's task group, or (a client's connection) in a task of the connection's own.
    var handlerTaskOwner = ConnectionTasks.Owner.connection
}

/// The one handler in a framed connection's pipeline: sends the hello, decodes every frame of a read in one loop
/// and hands each straight to the user's ``ConnectionHandler`` (no per-frame pipeline traversal), and flushes what
/// the handlers answered once per read batch.
///
/// It also bounds what a peer can make this side hold, by holding back NIO's `read()` (with `autoRead` on, as NIO's
/// `BackPressureHandler` does) so that the kernel pushes back on the peer:
/// - on a server, while the channel is not writable (the peer does not read the answers it asked for), no more is
///   read. (Not on a client: what a client reads never makes it write, and a client that stopped reading replies
///   while its requests wait for the server could deadlock with a server that stopped reading for the same reason.)
/// - when the peer's unanswered requests reach ``ConnectionOptions/maximumConcurrentRequests``, no further request or
///   message is handed out, even from the middle of a read, until an answer makes room. Meanwhile it goes on reading
///   replies (a handler may be waiting for one from this same peer before it can answer), keeping the requests,
///   messages and going-away frames that come with them, in order, up to ``pausedReadLimit`` bytes; past that it
///   reads nothing more.
/// It closes a connection whose peer sent no complete hello within the handshake timeout (server side), and one that
/// stayed idle for ``ConnectionOptions/idleTimeout``.
final class ConnectionChannelHandler<Handler: ConnectionHandler>: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
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
    /// Whether a `read()` from the channel was held back; it is passed on once nothing holds reads any more.
    private var readHeld = false
    /// Whether requests and messages are not handed out until an answer makes room for more requests.
    private var pausedForRequests = false
    /// The requests and messages read while paused for requests, as their frames' bytes in order: they come before
    /// the bytes of ``cumulation`` once the pause ends.
    private var heldFrames: ByteBuffer?
    /// How many bytes a connection paused for requests keeps (requests and messages held, and the start of the
    /// frame being read) before it stops reading: 1 MiB.
    static var pausedReadLimit: Int { 1024 * 1024 }
    private var handshakeTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    /// When a read last delivered bytes (or a request was last seen in flight); kept only with an idle timeout.
    private var lastActivity = NIODeadline.uptimeNanoseconds(0)
    private let options: ConnectionOptions
    private let connectionID: UInt64
    private let lifecycle: ConnectionLifecycle
    private let handshakeTimeout: Duration?
    private let pausesReadingWhileUnwritable: Bool
    private let logger: Logger
    /// The socket's descriptor, where known, for the latency mode's busy polling.
    private let descriptor: Int32?

    /// Creates the handler of one connection.
    /// - Parameters:
    ///   - handshakeTimeout: How long the peer has, from when the channel is active, to send its whole hello; `nil`
    ///     (the client's case: its connect call has its own timeout) waits as long as it takes.
    ///   - pausesReadingWhileUnwritable: Whether to stop reading while the channel is not writable (a server's
    ///     case: what it reads makes it write replies).
    init(
        handler: Handler,
        options: ConnectionOptions,
        connectionID: UInt64,
        lifecycle: ConnectionLifecycle,
        handshakeTimeout: Duration? = nil,
        pausesReadingWhileUnwritable: Bool = false,
        descriptor: Int32? = nil,
        logger: Logger
    ) {
        self.descriptor = descriptor
        self.handler = handler
        self.options = options
        self.decoder = FrameDecoder(maximumPayload: options.effectiveMaximumMessageSize)
        self.connectionID = connectionID
        self.lifecycle = lifecycle
        self.handshakeTimeout = handshakeTimeout
        self.pausesReadingWhileUnwritable = pausesReadingWhileUnwritable
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
                logger: self.logger,
                handlerTaskOwner: self.lifecycle.handlerTaskOwner
            )
            self.connection = connection
            // Any close caused below is reported once this setup is done, never in the middle of it.
            self.dispatching = true
            defer { self.dispatching = false }
            if self.logger.logLevel <= .debug { connection.logger.debug("connection opened") }
            if let descriptor = self.descriptor, let poller = connection.busyPoller { poller.add(descriptor) }
            var hello = channel.allocator.buffer(capacity: Hello.length)
            Hello.write(into: &hello)
            connection.writeThroughChannel(CollectionOfOne(hello))
            guard !self.isClosed else { return }
            self.startTimers(context: context)
            self.lifecycle.opened(connection)
            self.handler!.connectionDidOpen(connection)
        }
        context.fireChannelActive()
    }

    // MARK: - Reading

    func read(context: ChannelHandlerContext) {
        if self.mustHoldReads(context: context) {
            self.readHeld = true
            return
        }
        context.read()
    }

    @inline(__always)
    private func mustHoldReads(context: ChannelHandlerContext) -> Bool {
        (self.pausedForRequests && self.bytesKeptWhilePaused >= Self.pausedReadLimit)
            || (self.pausesReadingWhileUnwritable && !context.channel.isWritable)
    }

    private var bytesKeptWhilePaused: Int {
        (self.heldFrames?.readableBytes ?? 0) + (self.cumulation?.readableBytes ?? 0)
    }

    /// Passes on a held `read()` once nothing holds reads any more.
    private func readIfHeld(context: ChannelHandlerContext) {
        guard self.readHeld, !self.mustHoldReads(context: context) else { return }
        self.readHeld = false
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection = self.connection, self.failure == nil else { return }
        var incoming = Self.unwrapInboundIn(data)
        if self.options.idleTimeout != nil { self.lastActivity = .now() }
        if self.pausedForRequests {
            if self.cumulation != nil {
                self.cumulation!.append(incoming)
            } else {
                self.cumulation = Self.keep(incoming)
            }
            connection.readBatchStarted()
            self.handOutRepliesWhilePaused(context: context, connection: connection)
            return
        }
        connection.readBatchStarted()
        self.decode(&incoming, context: context, connection: connection)
    }

    /// What handing out one frame asks of the read loop.
    private enum Step {
        /// Go on with the next frame.
        case next
        /// The peer's unanswered requests reached the maximum: hand out nothing more for now.
        case pauseForRequests
        /// The peer went away with a reason other than `0x00`: close.
        case peerFailed
    }

    /// Hands out every whole frame in the bytes kept from earlier reads and then in `incoming`, keeps the rest, and
    /// pauses or closes as the frames ask.
    private func decode(_ incoming: inout ByteBuffer, context: ChannelHandlerContext, connection: Connection) {
        // Work on locals and store them back once per read: class properties accessed per frame would cost a
        // dynamic exclusivity check each time.
        var decoder = self.decoder
        var handler = self.handler.take()!
        let handshakeWasDone = self.handshakeDone
        let limit = self.options.maximumConcurrentRequests
        var failure: SocketIPCError?
        var leftover: FrameAssembler?
        var step = Step.next
        self.dispatching = true
        do {
            // First the bytes earlier reads left: frames kept while paused, or the start of a frame, which takes
            // from this read just the bytes it lacks. The decoder looks at the partial frame after every piece, so a
            // bad frame is refused at the first byte that shows it, however the bytes were split.
            if var partial = self.cumulation.take() {
                while !self.isClosed {
                    if let frame = try decoder.next(from: &partial.bytes) {
                        step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: limit)
                        self.noteHandshake(handshakeWasDone, connection)
                        if step != .next { break }
                        continue
                    }
                    guard partial.readableBytes > 0, incoming.readableBytes > 0 else { break }
                    let missing = max(decoder.bytesNeeded(toComplete: partial.bytes) - partial.readableBytes, 1)
                    partial.append(incoming.readSlice(length: min(missing, incoming.readableBytes))!)
                }
                if partial.readableBytes > 0 { leftover = partial }
            }
            // Then the rest of this read, decoded where it lies, without copying.
            if leftover == nil && step == .next {
                while !self.isClosed, let frame = try decoder.next(from: &incoming) {
                    step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: limit)
                    self.noteHandshake(handshakeWasDone, connection)
                    if step != .next { break }
                }
            }
            if incoming.readableBytes > 0 {
                if leftover != nil {
                    leftover!.append(incoming)
                } else {
                    leftover = Self.keep(incoming)
                }
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
        if self.handshakeDone, let timer = self.handshakeTimer.take() { timer.cancel() }
        if let failure {
            self.fail(failure, context: context)
            return
        }
        if let leftover, !self.isClosed { self.cumulation = leftover }
        switch step {
        case .next:
            break
        case .pauseForRequests:
            if connection.pauseReadingForRequests() {
                self.pausedForRequests = true
                if self.cumulation != nil {
                    self.handOutRepliesWhilePaused(context: context, connection: connection)
                }
            } else if self.cumulation != nil {
                // Answers made room already: go on with what is kept.
                var nothing = ByteBuffer()
                self.decode(&nothing, context: context, connection: connection)
            }
        case .peerFailed:
            // PROTOCOL.md: after a going-away with a reason other than 0x00 the receiver reads no further and closes;
            // requests in flight fail with the reason's error.
            self.cumulation = nil
            self.heldFrames = nil
            context.close(promise: nil)
        }
    }

    /// While paused for requests: hands out the replies and error replies among the bytes kept, and moves the other
    /// frames among them (requests, messages, going-away), in order, to ``heldFrames``; keeps the start of an
    /// unfinished frame. A going-away is held too, so that it still comes after the requests sent before it.
    private func handOutRepliesWhilePaused(context: ChannelHandlerContext, connection: Connection) {
        guard var partial = self.cumulation.take(), self.failure == nil else { return }
        var handler = self.handler.take()!
        var failure: SocketIPCError?
        var step = Step.next
        self.dispatching = true
        do {
            while !self.isClosed {
                // The same bytes, not yet read: the frame's own bytes are taken from here if it is held.
                var before = partial.bytes
                guard let frame = try self.decoder.next(from: &partial.bytes) else { break }
                switch frame {
                case .request, .message, .goAway:
                    let bytes = before.readSlice(length: partial.bytes.readerIndex - before.readerIndex)!
                    if self.heldFrames == nil {
                        self.heldFrames = ByteBufferAllocator().buffer(capacity: max(bytes.readableBytes, 64))
                    }
                    self.heldFrames!.writeImmutableBuffer(bytes)
                default:
                    step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: .max)
                }
                if step != .next { break }
            }
        } catch let error as SocketIPCError {
            failure = error
        } catch {
            failure = SocketIPCError(.protocolViolation, "\(error)")
        }
        self.dispatching = false
        self.handler = handler
        if let failure {
            self.fail(failure, context: context)
        } else if step == .peerFailed {
            self.heldFrames = nil
            context.close(promise: nil)
        } else if partial.readableBytes > 0, !self.isClosed {
            self.cumulation = partial
        }
    }

    /// Answers made room for more requests: hand out the frames kept meanwhile, then read again.
    private func resumeAfterAnswers(context: ChannelHandlerContext) {
        guard self.pausedForRequests, let connection = self.connection, !self.isClosed else { return }
        self.pausedForRequests = false
        if var held = self.heldFrames.take() {
            // The requests and messages held come before what is still kept.
            if let rest = self.cumulation.take() { held.writeImmutableBuffer(rest.bytes) }
            self.cumulation = FrameAssembler(held)
        }
        if self.cumulation != nil && self.failure == nil {
            connection.readBatchStarted()
            var nothing = ByteBuffer()
            self.decode(&nothing, context: context, connection: connection)
            connection.readBatchEnded()
        }
        self.readIfHeld(context: context)
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
    private static func dispatch(
        _ frame: Frame,
        to handler: inout Handler,
        connection: Connection,
        maximumRequests: Int
    ) -> Step {
        switch frame {
        case .message(let message):
            handler.didReceiveMessage(message, on: connection)
        case .request(let id, let payload):
            let unanswered = connection.requestReceived()
            handler.didReceiveRequest(payload, reply: Reply(connection: connection, id: id), on: connection)
            if unanswered >= maximumRequests { return .pauseForRequests }
        case .reply(let id, let payload):
            connection.replyReceived(id: id, result: .success(payload))
        case .errorReply(let id, let message):
            connection.replyReceived(id: id, result: .failure(SocketIPCError(.remoteError, message)))
        case .goAway(let reason, let message):
            connection.peerIsGoingAway(reason, message: message)
            if reason != .normal { return .peerFailed }
        }
        return .next
    }

    /// The start of a frame a read left unfinished, kept for the next read. A small rest is copied out of the read
    /// buffer, so that NIO can reuse that buffer; a large one is kept where it is until the next read adds to it.
    /// (When a read ends on a frame boundary nothing is kept, so an idle connection holds no read buffer.)
    private static func keep(_ rest: ByteBuffer) -> FrameAssembler {
        guard rest.readableBytes <= 4096 else { return FrameAssembler(rest) }
        var copy = ByteBufferAllocator().buffer(capacity: max(rest.readableBytes, 64))
        copy.writeImmutableBuffer(rest)
        return FrameAssembler(copy)
    }

    // MARK: - Timeouts

    private func startTimers(context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        if let timeout = self.handshakeTimeout, !self.handshakeDone {
            // The server's clock started when it accepted the connection, which may have waited for a slot since.
            let deadline = self.lifecycle.handshakeDeadline ?? .now() + .init(timeout)
            self.handshakeTimer = loop.scheduleTask(deadline: deadline) {
                self.handshakeTimer = nil
                guard !self.handshakeDone, !self.isClosed, self.failure == nil else { return }
                self.fail(
                    SocketIPCError(.timedOut, "the peer sent no complete hello within \(timeout)"),
                    context: context,
                    linger: false
                )
            }
        }
        if let timeout = self.options.idleTimeout {
            self.lastActivity = .now()
            self.scheduleIdleCheck(at: self.lastActivity + .init(timeout), context: context)
        }
    }

    /// Checks at `deadline` whether the connection has been idle for the idle timeout: no bytes read and no request
    /// in flight either way. If so, says going-away `0x00` ("idle timeout") and closes; if not, checks again when
    /// it would be.
    private func scheduleIdleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleTimer = nil
            guard let connection = self.connection, let timeout = self.options.idleTimeout, !self.isClosed else {
                return
            }
            let now = NIODeadline.now()
            if connection.hasRequestsInFlight { self.lastActivity = now }
            let idleUntil = self.lastActivity + .init(timeout)
            guard idleUntil <= now else {
                self.scheduleIdleCheck(at: idleUntil, context: context)
                return
            }
            if self.logger.logLevel <= .debug {
                connection.logger.debug("closing an idle connection", metadata: ["timeout": "\(timeout)"])
            }
            connection.goAway(.normal, message: "idle timeout")
        }
    }

    // MARK: - Other events

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection?.readBatchEnded()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let isWritable = context.channel.isWritable
        self.connection?.writabilityChanged(isWritable)
        if isWritable { self.readIfHeld(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is RequestsAnswered {
            self.resumeAfterAnswers(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
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
        self.handshakeTimer.take()?.cancel()
        self.idleTimer.take()?.cancel()
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
            // The async work of its replies still running is cancelled; work that comes later runs cancelled.
            connection.handlerTasks.close()
        }
    }

    /// Tells the peer why (a going-away frame) and closes: the decoder met something it cannot continue after, or the
    /// peer's handshake timed out. (A peer the server's authorization policy refuses never gets here: the server
    /// answers it with a ``RefusalChannelHandler``.)
    /// - Parameter linger: Whether to half-close and wait (at most ``ConnectionOptions/goAwayLingerTime``) for the peer to close, so that a peer still
    ///   writing reads the going-away frame instead of failing with `EPIPE`; `false` closes once it is written, for a
    ///   peer that was silent (its handshake timed out), so that its slot is free as soon as it sees the close.
    private func fail(
        _ error: SocketIPCError,
        context: ChannelHandlerContext,
        linger: Bool = true
    ) {
        self.failure = error
        self.cumulation = nil
        // Debug only: the server logs each failed connection once, at notice and at a bounded rate.
        self.logger.debug(
            error.code == .timedOut ? "closing connection: handshake timeout" : "closing connection after a protocol error",
            metadata: ["socketipc.connection": "\(self.connectionID)", "error": "\(error)"]
        )
        var frame = context.channel.allocator.buffer(capacity: 64)
        frame.writeFrame(.goAway(GoAwayReason(code: error.code), message: error.message))
        self.connection?.flushPendingWrites()
        // Half-close and linger briefly instead of closing at once: a peer still writing would otherwise get EPIPE
        // and might never read the going-away frame that says why.
        let channel = context.channel
        let written = self.connection?.writeThroughChannel(CollectionOfOne(frame)) ?? context.writeAndFlush(Self.wrapOutboundOut(frame))
        written.assumeIsolated().whenComplete { _ in
            guard linger else {
                channel.close(promise: nil)
                return
            }
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .init(self.options.goAwayLingerTime)) { channel.close(promise: nil) }
        }
    }
}

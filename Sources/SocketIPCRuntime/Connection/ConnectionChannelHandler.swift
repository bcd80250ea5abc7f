import Logging
import NIOCore

/// The one handler in a framed connection's pipeline: sends the hello, decodes every frame of a read in one loop
/// and hands each straight to the user's ``ConnectionHandler`` (no per-frame pipeline traversal), and flushes what
/// the handlers answered once per read batch.
///
/// Where the connection is (opening, awaiting the peer's hello, established, failed, closed) is a
/// ``HandshakeStateMachine``; this class performs what it decides. The bytes read and not yet handed out are an
/// ``InboundBuffer``.
///
/// It also bounds what a peer can make this side hold, by holding back NIO's `read()` (with `autoRead` on, as NIO's
/// `BackPressureHandler` does) so that the kernel pushes back on the peer:
/// - on a server, while the channel is not writable (the peer does not read the answers it asked for), no more is
///   read. (Not on a client: what a client reads never makes it write, and a client that stopped reading replies
///   while its requests wait for the server could deadlock with a server that stopped reading for the same reason.)
/// - when the peer's unanswered requests reach ``ConnectionOptions/maximumConcurrentRequests``, no further request or
///   message is handed out, even from the middle of a read, until an answer makes room. Meanwhile it goes on reading
///   replies, pings,
///   pongs and call credit (a handler may be waiting for one from this same peer before it can answer, or send),
///   keeping the requests, messages, call frames and going-away frames that come with them, in order, up to
///   ``pausedReadLimit`` bytes; past that it reads nothing more.
/// - while the rest of a read waits for the event loop's next turn (``frameBudget``, or a payload in shared memory
///   handed out), nothing more is read.
/// - until the connection is set up (its peer's credentials read), nothing is read.
/// It closes a connection whose peer sent no complete hello within the handshake timeout (server side), and one that
/// stayed idle for ``ConnectionOptions/idleTimeout``.
///
/// One type for every handler (the user's handler is an existential), not a generic class: a generic class created
/// from generic code runs unspecialized, and looked up the metadata of `Optional<Handler>` in the runtime's tables on
/// every read (5 % of a typed call's client in a profile).
final class ConnectionChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The user's handler; taken out while a read hands it frames, so that it is mutated in place.
    var handler: (any ConnectionHandler)?
    /// The connection, once set up in `channelActive`.
    var connection: Connection?
    var decoder: FrameDecoder
    /// Where the connection is: decides when the handshake is reported, when it fails and what its close reports.
    ///
    /// Read before every frame a read hands out, so without the dynamic exclusivity check a class property costs:
    /// accesses cannot overlap, since the state machine's methods call nothing back and run on the event loop only.
    @exclusivity(unchecked)
    var state = HandshakeStateMachine()
    /// The bytes read and not yet handed out, and whether reading is paused or held.
    var inbound = InboundBuffer()
    /// Whether a frame is being handed to the user's handler: a close it causes is reported after it returns, so the
    /// handler is never re-entered.
    var dispatching = false
    /// How many frames one read hands out before the rest waits for the event loop's next turn, the loop's other
    /// connections served meanwhile: 16,384 messages, requests, replies or call messages on the common path, each
    /// other frame counting as ``controlFrameCost`` of them (2,048 call opens, cancels, pings and the like). NIO bounds
    /// a turn's reads (`maxMessagesPerRead`, 4) and their size (1 MiB here), not the frames in them: a megabyte of
    /// frames of a few bytes each would otherwise be handed out at once. After a yield, the reads NIO's read loop still
    /// makes in that turn only add to what is kept. A read's share in time ends it sooner (``TurnClock``).
    static var frameBudget: Int { 16_384 }
    /// What a frame off the common path costs of ``frameBudget``: call opens, cancels, credit, pings and the frames
    /// of connections that pass descriptors.
    static var controlFrameCost: Int { 8 }
    /// How many bytes a paused connection keeps (requests, messages and call frames held, and the start of the
    /// frame being read) before it stops reading: 1 MiB.
    static var pausedReadLimit: Int { 1024 * 1024 }
    /// What the bytes kept of a frame not yet whole are charged to (a server's connection only).
    var incomingBytes: IncomingBytesCharge?
    var handshakeTimer: Scheduled<Void>?
    var idleTimer: Scheduled<Void>?
    /// Checks that descriptors the peer passed do not wait forever (``ConnectionOptions/pendingDescriptorTimeout``).
    var pendingDescriptorTimer: Scheduled<Void>?
    /// Runs while the channel is not writable, to close a connection whose peer leaves this side's writes unread for
    /// ``writeTimeout``.
    var writeTimer: Scheduled<Void>?
    /// When a read last delivered bytes (or a request was last seen in flight); kept only with an idle timeout.
    var lastActivity = NIODeadline.uptimeNanoseconds(0)
    /// The connection's options, shared with its server's other connections.
    let sharedOptions: SharedConnectionOptions
    /// The connection's limits and timeouts.
    var options: ConnectionOptions { self.sharedOptions.value }
    let connectionID: UInt64
    let lifecycle: ConnectionLifecycle
    let handshakeTimeout: Duration?
    /// How long the channel may stay not writable (the peer reads nothing of this side's writes) before the
    /// connection closes; `nil`: as long as it takes (``ServerConfiguration/writeTimeout``).
    let writeTimeout: Duration?
    let pausesReadingWhileUnwritable: Bool
    let logger: Logger
    /// The socket's descriptor, where known: its peer's credentials are read from it, and the latency mode's busy
    /// polling watches it.
    let descriptor: Int32?
    /// The peer's credentials, when the server read them already at accept; else they are read from ``descriptor``.
    let knownPeer: PeerCredentials?
    /// The relay between the connection's socket and the channel, when the connection passes descriptors; the
    /// channel's ``descriptor`` is then the relay's socket pair, and ``knownPeer`` is required.
    let descriptorRelay: DescriptorRelay?

    /// Creates the handler of one connection.
    /// - Parameters:
    ///   - handshakeTimeout: How long the peer has, from when the channel is active, to send its whole hello; `nil`
    ///     (the client's case: its connect call has its own timeout) waits as long as it takes.
    ///   - writeTimeout: How long the channel may stay not writable before the connection closes; `nil` (the
    ///     client's case) waits as long as it takes.
    ///   - pausesReadingWhileUnwritable: Whether to stop reading while the channel is not writable (a server's
    ///     case: what it reads makes it write replies).
    ///   - peer: The peer's credentials as the server read them at accept (with what its policy needed), if it did.
    init(
        handler: any ConnectionHandler,
        options sharedOptions: SharedConnectionOptions,
        connectionID: UInt64,
        lifecycle: ConnectionLifecycle,
        handshakeTimeout: Duration? = nil,
        writeTimeout: Duration? = nil,
        pausesReadingWhileUnwritable: Bool = false,
        descriptor: Int32? = nil,
        peer: PeerCredentials? = nil,
        descriptorRelay: DescriptorRelay? = nil,
        logger: Logger
    ) {
        self.descriptor = descriptor
        self.knownPeer = peer
        self.descriptorRelay = descriptorRelay
        self.handler = handler
        self.sharedOptions = sharedOptions
        let options = sharedOptions.value
        self.decoder = FrameDecoder(maximumPayload: options.effectiveMaximumMessageSize, localFlags: options.helloFlags)
        self.connectionID = connectionID
        self.lifecycle = lifecycle
        self.incomingBytes = lifecycle.incomingBytes
        self.handshakeTimeout = handshakeTimeout
        self.writeTimeout = writeTimeout
        self.pausesReadingWhileUnwritable = pausesReadingWhileUnwritable
        self.logger = logger
    }

    // MARK: - Opening

    func channelActive(context: ChannelHandlerContext) {
        if let descriptor = self.descriptor {
            // The common case: read at once, so the connection is set up before this returns.
            self.setUp(peer: self.knownPeer ?? PeerCredentials.read(descriptor: descriptor), context: context)
        } else {
            // A channel without a known descriptor (such as an embedded one): nothing is read until this completes,
            // whenever it does.
            PeerCredentials.read(from: context.channel).assumeIsolated().whenComplete { result in
                self.setUp(peer: (try? result.get()) ?? nil, context: context)
            }
        }
        context.fireChannelActive()
    }

    /// Makes the connection, sends the hello, starts the timers and tells the owner and the handler; then reads
    /// what arrived meanwhile.
    private func setUp(peer: PeerCredentials?, context: ChannelHandlerContext) {
        guard case .opening = self.state.state else { return }  // closed meanwhile
        let channel = context.channel
        let connection = Connection(
            id: self.connectionID,
            channel: channel,
            descriptor: self.descriptor,
            options: self.sharedOptions,
            peer: peer,
            logger: self.logger,
            handlerTaskOwner: self.lifecycle.handlerTaskOwner,
            descriptorRelay: self.descriptorRelay,
            userCalls: self.lifecycle.userCalls
        )
        self.descriptorRelay?.attach(channel)
        // The connection exists before the hello is written: if the peer is already gone, the failed write closes
        // the channel right here, and that close must find the connection.
        self.connection = connection
        guard self.state.connectionOpened() == .sendHelloAndStartTimers else { return }
        // Any close caused below is reported once this setup is done, never in the middle of it.
        self.dispatching = true
        defer { self.dispatching = false }
        if self.logger.logLevel <= .debug { connection.logger.debug("connection opened") }
        if let descriptor = self.descriptor, let poller = connection.busyPoller { poller.add(descriptor) }
        var hello = channel.allocator.buffer(capacity: Hello.length)
        Hello.write(into: &hello, flags: self.options.helloFlags)
        connection.writeThroughChannel(CollectionOfOne(hello))
        guard self.state.mayHandleFrames else { return }
        self.startTimers(context: context)
        self.lifecycle.opened(connection)
        self.handler!.connectionDidOpen(connection)
        guard self.state.mayHandleFrames else { return }
        // Bytes that arrived before the connection was set up.
        self.handOutKept(context: context, connection: connection)
        self.readIfHeld(context: context)
    }

    // MARK: - Reading

    func read(context: ChannelHandlerContext) {
        if self.mustHoldReads(context: context) {
            self.inbound.readHeld = true
            return
        }
        context.read()
    }

    @inline(__always)
    private func mustHoldReads(context: ChannelHandlerContext) -> Bool {
        self.inbound.isYielding
            || (self.inbound.isPaused && self.inbound.bytesKept >= Self.pausedReadLimit)
            || (self.pausesReadingWhileUnwritable && !context.channel.isWritable)
            || self.connection == nil
    }

    /// Passes on a held `read()` once nothing holds reads any more.
    func readIfHeld(context: ChannelHandlerContext) {
        guard self.inbound.readHeld, !self.mustHoldReads(context: context) else { return }
        self.inbound.readHeld = false
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = Self.unwrapInboundIn(data)
        guard let connection = self.connection, self.state.mayHandleFrames else {
            // Bytes already on their way before the connection was set up are kept for it; after a failure or the
            // close, nothing more is handed out.
            if case .opening = self.state.state { self.inbound.append(incoming) }
            return
        }
        if self.options.idleTimeout != nil { self.lastActivity = .now() }
        connection.readBatchStarted()
        if self.inbound.isYielding {
            // The rest of an earlier read waits for the loop's next poll: this read waits behind it.
            self.inbound.append(incoming)
        } else if self.inbound.isPaused {
            self.inbound.append(incoming)
            self.handOutRepliesWhilePaused(context: context, connection: connection)
        } else {
            self.decode(&incoming, context: context, connection: connection)
        }
        if self.incomingBytes != nil { self.chargeKeptBytes(context: context) }
    }

    /// Charges the bytes kept of frames not yet whole to the peer's user, as they are after a read
    /// (``ServerConfiguration/maximumIncomingBytesPerUser``); closes the connection with `resourceExhausted` when
    /// its user's account cannot take them.
    func chargeKeptBytes(context: ChannelHandlerContext) {
        guard var charge = self.incomingBytes else { return }
        let kept = self.inbound.memoryKept
        if kept <= IncomingBytesCharge.threshold && charge.charged == 0 { return }
        let fits = charge.keep(kept)
        guard !fits, self.state.mayHandleFrames else {
            self.incomingBytes = charge
            return
        }
        let error = charge.accounts.refusal(of: kept, user: charge.user)
        // Given back now, not at the close: what this connection kept is dropped as it fails, and the user's other
        // connections must not be refused meanwhile.
        charge.release()
        self.incomingBytes = charge
        self.fail(error, context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection?.readBatchEnded()
        context.fireChannelReadComplete()
    }

    // MARK: - Other events

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let isWritable = context.channel.isWritable
        self.connection?.writabilityChanged(isWritable)
        self.watchWrites(isWritable: isWritable, context: context)
        if isWritable, self.inbound.yieldWaitsForWritability { self.resumeAfterYield(context: context) }
        if isWritable { self.readIfHeld(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ReadingMayResume {
            self.resumeAfterPause(context: context)
        } else if event is YieldedTurnEnded {
            self.resumeAfterYield(context: context)
        } else if let violation = event as? RelayViolation {
            self.fail(violation.error, reason: violation.reason, context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A SocketIPCError fired into the pipeline (the keepalive's `peerNotResponding`) is the close's reason as it is.
        let failure =
            error as? SocketIPCError
            ?? SocketIPCError(.connectionClosed, "the connection failed: \(errorText(error))", cause: error)
        if self.state.failure == nil { self.logger.debug("connection error", metadata: ["error": "\(errorText(error))"]) }
        _ = self.state.channelFailed(failure)
        context.close(promise: nil)
    }

    // MARK: - Closing

    func channelInactive(context: ChannelHandlerContext) {
        if self.inbound.isYielding {
            // Frames read before the peer closed are handed out now, at once, as a read would have handed them out
            // (found by a review: the frames after a shared payload were lost when the peer closed right after it).
            // What is kept is bounded: nothing is read while yielding beyond NIO's read loop under way, and the relay
            // takes at most its in-flight limit of descriptors, so at most that many shared payloads.
            self.inbound.isYielding = false
            if let connection = self.connection, self.state.mayHandleFrames {
                self.inbound.closing = true
                if self.inbound.isPaused {
                    // Paused for requests as well: what may pass a pause, as a read would have handed it out.
                    connection.readBatchStarted()
                    self.handOutRepliesWhilePaused(context: context, connection: connection)
                    connection.readBatchEnded()
                } else {
                    self.handOutKept(context: context, connection: connection)
                }
                self.inbound.closing = false
            }
        }
        self.handshakeTimer.take()?.cancel()
        self.idleTimer.take()?.cancel()
        self.pendingDescriptorTimer.take()?.cancel()
        self.writeTimer.take()?.cancel()
        self.inbound = InboundBuffer()
        self.incomingBytes?.release()
        self.connection?.socketClosed()
        self.connection?.stopKeepalive()
        if let descriptor = self.descriptor, let poller = self.connection?.busyPoller { poller.remove(descriptor) }
        if let relay = self.descriptorRelay {
            self.connection?.descriptorPassing?.closeAnnounced()
            relay.channelClosed(eventLoop: context.eventLoop, timeout: self.options.closeTimeout)
        }
        if case .reportClosed(let failure) = self.state.channelClosed() {
            if self.dispatching {
                // Closed from inside the user's handler: report it once that call has returned.
                context.eventLoop.assumeIsolated().execute { self.reportClosed(failure: failure) }
            } else {
                self.reportClosed(failure: failure)
            }
        }
        context.fireChannelInactive()
    }

    private func reportClosed(failure: SocketIPCError?) {
        guard let connection = self.connection else { return }
        connection.closed(error: failure ?? connection.orderlyCloseError)
        let error = connection.closeError.flatMap { $0.code == .connectionClosed && failure == nil ? nil : $0 }
        connection.callsClosed(error: connection.closeError ?? .closed)
        if self.logger.logLevel <= .debug {
            connection.logger.debug("connection closed", metadata: error.map { ["error": "\($0)"] } ?? [:])
        }
        // A client is told why its server went (PROTOCOL.md: a server always says going-away before it closes, so a
        // close without one is a crash); a server keeps `nil` for a client that simply closed.
        self.handler!.connectionDidClose(connection, error: connection.isInitiator ? connection.closeReason : error)
        self.lifecycle.closed(connection, error)
        // The async work of its replies still running is cancelled; work that comes later runs cancelled.
        connection.handlerTasks.close()
    }
}

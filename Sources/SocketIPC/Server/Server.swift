import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A server on a Unix domain socket file: it owns the path safely, accepts connections in a loop and serves each
/// concurrently, and removes the file when it stops.
///
/// Make one with ``framed(configuration:logger:onServerRunning:makeHandler:)`` (many messages per connection,
/// requests and replies) or ``eof(configuration:logger:onServerRunning:handler:)`` (one message per connection, ended
/// by the client's half-close, as `socat` and `nc -U` send it). Then call ``run()``, directly or through
/// swift-service-lifecycle's `ServiceGroup`: the server is a `Service`.
///
/// ```swift
/// let server = Server.framed(configuration: .init(path: "/tmp/app.sock")) {
///     AsyncRequestHandler { request, _ in request }  // echo
/// }
/// try await server.run()
/// ```
///
/// A graceful shutdown (``shutdownGracefully()`` or the service group's) stops accepting, tells every framed client it
/// is going away, lets requests in flight finish within ``ServerConfiguration/shutdownGracePeriod``, closes what is
/// left and removes the socket file. Cancelling the task that runs ``run()`` does the same without the grace period.
public final class Server: Service, Sendable {
    /// The configuration the server was made with.
    public let configuration: ServerConfiguration
    private let logger: Logger
    private let onServerRunning: @Sendable (SocketPath) async -> Void
    private let initializeChild: @Sendable (any Channel, UInt64, Int32, ByteBuffer?, ConnectionLifecycle, Logger) throws -> Void
    private let halfClosure: Bool
    /// Serves an accepted socket on the accepting thread when it can (EOF style with an event-loop handler).
    private let serveInline: (@Sendable (Int32, UInt64, Logger) -> EOFInlineServer.Outcome)?
    private let state: Mutex<State>
    private let metrics: ServerMetrics
    /// Logs refusals, which a hostile peer can cause at any rate.
    private let refusalLogger: RateLimitedLogger

    private enum Phase { case idle, running, shuttingDown, finished }

    private struct State {
        var phase = Phase.idle
        var acceptor: Acceptor?
        var channels: [UInt64: any Channel] = [:]
        /// Connections accepted and not yet closed, by user, including those whose channel is still being set up
        /// and those parked.
        var admissions: ConnectionAdmissions
        var connections: [UInt64: Connection] = [:]
        var drained: EventLoopPromise<Void>?
        var deadline: Scheduled<Void>?
    }

    private init(
        configuration: ServerConfiguration,
        metrics: ServerMetrics,
        logger: Logger,
        halfClosure: Bool,
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void,
        serveInline: (@Sendable (Int32, UInt64, Logger) -> EOFInlineServer.Outcome)? = nil,
        initializeChild: @escaping @Sendable (any Channel, UInt64, Int32, ByteBuffer?, ConnectionLifecycle, Logger) throws -> Void
    ) {
        self.serveInline = serveInline
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.refusalLogger = RateLimitedLogger(logger)
        self.state = Mutex(
            State(
                admissions: ConnectionAdmissions(
                    maximumConnections: configuration.maximumConnections,
                    maximumConnectionsPerUser: configuration.maximumConnectionsPerUser,
                    maximumPendingHandshakesPerUser: configuration.maximumPendingHandshakesPerUser
                )
            )
        )
        self.halfClosure = halfClosure
        self.onServerRunning = onServerRunning
        self.initializeChild = initializeChild
    }

    /// A server for framed connections: each connection gets its own handler from `makeHandler`.
    /// - Parameters:
    ///   - configuration: Where and how to listen.
    ///   - logger: Where the server and its connections log; default `socketipc.server`.
    ///   - onServerRunning: Called once the socket accepts connections, with its path.
    ///   - makeHandler: Makes the handler of one connection, on that connection's event loop; the handler gets
    ///     the ``Connection`` in ``ConnectionHandler/connectionDidOpen(_:)``.
    public static func framed<Handler: ConnectionHandler & SendableMetatype>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "socketipc.server"),
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void = { _ in },
        makeHandler: @escaping @Sendable () -> Handler
    ) -> Server {
        let options = configuration.connection
        let metrics = ServerMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory)
        return Server(
            configuration: configuration,
            metrics: metrics,
            logger: logger,
            halfClosure: false,
            onServerRunning: onServerRunning
        ) { channel, id, descriptor, _, lifecycle, logger in
            try options.applySocketOptions(to: channel)
            let handler = ConnectionChannelHandler(
                handler: makeHandler(),
                options: options,
                connectionID: id,
                lifecycle: lifecycle,
                handshakeTimeout: configuration.handshakeTimeout,
                pausesReadingWhileUnwritable: true,
                descriptor: descriptor,
                logger: logger
            )
            try channel.pipeline.syncOperations.addHandler(handler)
        }
    }

    /// A server for EOF-style connections: each connection carries one message, ended when the client half-closes,
    /// and the handler may answer it with an acknowledgement before the server closes the connection.
    /// - Parameters:
    ///   - configuration: Where and how to listen.
    ///   - logger: Where the server and its connections log; default `socketipc.server`.
    ///   - onServerRunning: Called once the socket accepts connections, with its path.
    ///   - handler: What to do with each message.
    public static func eof(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "socketipc.server"),
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void = { _ in },
        handler: EOFMessageHandler
    ) -> Server {
        let metrics = ServerMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory)
        let failureLog = ConnectionFailureLog(metrics: metrics, logger: logger)
        // For the EOF style the handshake is the whole message: the client must half-close within this limit.
        let timeLimit = configuration.handshakeTimeout
        var serveInline: (@Sendable (Int32, UInt64, Logger) -> EOFInlineServer.Outcome)?
        if case .eventLoop(let maximumSize, let body) = handler.kind {
            serveInline = { descriptor, id, logger in
                EOFInlineServer.serve(
                    descriptor,
                    maximumSize: maximumSize,
                    body: body,
                    connectionID: id,
                    logger: logger,
                    timeLimit: timeLimit,
                    reportFailure: { failureLog.failed($0) }
                )
            }
        }
        return Server(
            configuration: configuration,
            metrics: metrics,
            logger: logger,
            halfClosure: true,
            onServerRunning: onServerRunning,
            serveInline: serveInline
        ) { channel, id, descriptor, initialBytes, lifecycle, logger in
            // What is left of the time limit, which counts from when the server accepted the connection.
            let left = lifecycle.handshakeDeadline.map { Duration.nanoseconds(max(0, ($0 - .now()).nanoseconds)) }
            try handler.install(
                on: channel,
                connectionID: id,
                initialBytes: initialBytes,
                logger: logger,
                timeLimit: min(timeLimit, left ?? timeLimit),
                descriptor: descriptor,
                reportFailure: { failureLog.failed($0) }
            )
        }
    }

    /// Serves until shut down: claims the socket path, accepts connections, and on shutdown closes them and
    /// removes the socket file.
    /// - Throws: ``SocketIPCError`` when the path cannot be claimed: `invalidPath`, `parentDirectoryMissing`,
    ///   `insecureDirectory`, `addressInUse`, `pathOccupied`, `systemCall`; or `invalidState` when called a second
    ///   time.
    public func run() async throws {
        let path = try SocketPath(self.configuration.path)
        try self.state.withLock { state in
            guard state.phase == .idle else {
                throw SocketIPCError(.invalidState, "Server.run() may be called only once", path: path.path)
            }
            state.phase = .running
        }
        self.fitLimitsToDescriptors()
        let claim: SocketFileOwner.Claim
        do {
            claim = try SocketFileOwner.claim(
                path,
                mode: self.configuration.mode,
                createParentDirectory: self.configuration.createParentDirectory,
                requiresSecureParentDirectory: self.configuration.requiresSecureParentDirectory,
                backlog: self.configuration.backlog
            )
        } catch {
            self.state.withLock { $0.phase = .finished }
            throw error
        }
        defer { claim.owner.release() }

        let group = MultiThreadedEventLoopGroup.singleton
        let drained = group.any().makePromise(of: Void.self)
        let acceptor = Acceptor(
            descriptor: claim.listeningDescriptor,
            eventLoop: group.any(),
            logger: self.logger,
            onAccept: { descriptor in self.accept(descriptor, group: group) },
            onError: { error in self.logger.error("accepting connections failed", metadata: ["error": "\(error)"]) }
        )
        let shutDownAlready = self.state.withLock { state -> Bool in
            state.acceptor = acceptor
            state.drained = drained
            return state.phase != .running
        }
        acceptor.start()
        if shutDownAlready { self.beginShutdown(graceful: false) }
        self.logger.info("listening", metadata: ["socketipc.path": "\(path)"])

        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await self.onServerRunning(path)
                try? await drained.futureResult.get()
            } onCancel: {
                self.beginShutdown(graceful: false)
            }
        } onGracefulShutdown: {
            self.beginShutdown(graceful: true)
        }
        try? await acceptor.finishedFuture.get()
        self.state.withLock { $0.phase = .finished }
        self.logger.info("stopped", metadata: ["socketipc.path": "\(path)"])
    }

    /// Raises the descriptor limit as far as the connection limits need, and lowers the connection limits to what
    /// it can hold, saying so.
    private func fitLimitsToDescriptors() {
        let limit = DescriptorLimit.raise(toFit: self.configuration.maximumConnections)
        if limit.soft > limit.previousSoft {
            self.logger.info(
                "raised the open file limit (RLIMIT_NOFILE) for maximumConnections",
                metadata: ["from": "\(limit.previousSoft)", "to": "\(limit.soft)"]
            )
        }
        let (lowered, total, perUser) = self.state.withLock { state in
            (state.admissions.fit(descriptorsForConnections: limit.connections), state.admissions.maximumConnections, state.admissions.maximumConnectionsPerUser)
        }
        guard lowered else { return }
        self.logger.warning(
            """
            the open file limit (RLIMIT_NOFILE) is too low for the connection limits: serving at most \(total) \
            connections, \(perUser) per user; raise the limit (ulimit -n, LimitNOFILE=) to serve more
            """,
            metadata: ["limit": "\(limit.soft)"]
        )
    }

    /// Starts a graceful shutdown: stop accepting, tell clients, let requests in flight finish within the grace
    /// period, close, and remove the socket file; ``run()`` returns when that is done.
    public func shutdownGracefully() {
        self.beginShutdown(graceful: true)
    }

    // MARK: - Connections

    /// Admits an accepted socket and serves it, parks it, or refuses it at once: while shutting down, at a
    /// connection limit, or when the authorization policy refuses the peer. Runs on the accept thread.
    private func accept(_ descriptor: Int32, group: MultiThreadedEventLoopGroup) {
        let id = ConnectionIDs.next()
        let policy = self.configuration.authorization
        let peer = PeerCredentials.read(descriptor: descriptor, includingGroups: policy.needsSupplementaryGroups)
        let decision = policy.evaluate(peer)
        if !decision.isAllowed {
            self.metrics.unauthorized.increment()
            var metadata = Self.metadata(id, peer)
            metadata["socketipc.reason"] = "\(decision.reason)"
            self.refusalLogger.log(level: .notice, "refusing connection: authorization policy", metadata: metadata)
        }
        // A refused framed peer is told why on a channel that lingers for a moment: it counts against the limits
        // like any connection, but never as a pending handshake.
        // The handshake time counts from now, also for a connection that first waits for a handshake slot.
        let handshakeDeadline = NIODeadline.now() + .init(self.configuration.handshakeTimeout)
        let admission = self.state.withLock { state -> ConnectionAdmissions.Decision? in
            guard state.phase == .running else { return nil }
            return state.admissions.admit(
                id,
                descriptor: descriptor,
                peer: peer,
                handshaking: decision.isAllowed,
                handshakeDeadline: handshakeDeadline
            )
        }
        switch admission {
        case .admitted:
            self.metrics.accepted.increment()
            self.metrics.active.increment()
            if decision.isAllowed {
                self.serve(descriptor, id: id, group: group, handshakeDeadline: handshakeDeadline)
            } else {
                self.refuseUnauthorized(descriptor, id: id, peer: peer, group: group)
            }
        case .parked:
            self.metrics.accepted.increment()
            self.metrics.active.increment()
            // A connection still parked when its handshake time is up is closed unserved.
            group.any().scheduleTask(deadline: handshakeDeadline) { self.parkedHandshakeTimedOut(id) }
        case .refused(let refusal):
            self.refuse(descriptor, id: id, peer: peer, reason: "\(refusal)")
        case nil:
            self.refuse(descriptor, id: id, peer: peer, reason: "the server is shutting down")
        }
    }

    private func refuse(_ descriptor: Int32, id: UInt64, peer: PeerCredentials?, reason: String) {
        self.metrics.refused.increment()
        self.refusalLogger.log(level: .notice, "refusing connection: \(reason)", metadata: Self.metadata(id, peer))
        close(descriptor)
    }

    /// Serves an admitted connection: on this thread if the EOF-style inline server can, else on a channel.
    private func serve(
        _ descriptor: Int32,
        id: UInt64,
        group: MultiThreadedEventLoopGroup,
        handshakeDeadline: NIODeadline
    ) {
        var initialBytes: ByteBuffer?
        if let serveInline = self.serveInline {
            switch serveInline(descriptor, id, self.logger) {
            case .served:
                self.channelClosed(id)
                return
            case .handOff(let bytes):
                initialBytes = bytes.readableBytes > 0 ? bytes : nil
            }
        }
        let handedOffBytes = initialBytes
        let lifecycle = ConnectionLifecycle(
            handshakeDeadline: handshakeDeadline,
            handshakeCompleted: { _ in self.handshakeCompleted(id) },
            opened: { connection in
                let goAwayNow = self.state.withLock { state -> Bool in
                    state.connections[id] = connection
                    return state.phase != .running
                }
                if goAwayNow { connection.goAway(.normal, message: "the server is shutting down") }
            },
            closed: { connection, error in
                if let error { self.connectionFailed(error, id: id, peer: connection.peer) }
            }
        )
        ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: self.halfClosure)
            .channelOption(.recvAllocator, value: ConnectionOptions.receiveAllocator)
            .channelOption(.writeBufferWaterMark, value: ConnectionOptions.channelWriteWatermark)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    self.state.withLock { $0.channels[id] = channel }
                    channel.closeFuture.whenComplete { _ in self.channelClosed(id) }
                    try self.initializeChild(channel, id, descriptor, handedOffBytes, lifecycle, self.logger)
                }
            }
            .withConnectedSocket(descriptor)
            .whenFailure { error in
                self.logger.error("could not set up an accepted connection", metadata: ["error": "\(error)"])
                self.channelClosed(id)
            }
    }

    /// A framed connection's peer sent its hello: it no longer counts as a pending handshake, and a parked
    /// connection of the same user may be served. (An EOF-style connection counts as one until it closes, which it
    /// does once its message is handled.)
    private func handshakeCompleted(_ id: UInt64) {
        let next = self.state.withLock { $0.admissions.handshakeEnded(id) }
        if let next { self.serveParked(next) }
    }

    /// Closes a connection that is still parked when its handshake time is up.
    /// Counts a connection closed by an error, and logs it at `notice`, at a bounded rate.
    private func connectionFailed(_ error: SocketIPCError, id: UInt64, peer: PeerCredentials?) {
        self.metrics.connectionFailed(error)
        var metadata = Self.metadata(id, peer)
        metadata["error"] = "\(error)"
        self.refusalLogger.log(level: .notice, "closing connection: \(error.code)", metadata: metadata)
    }

    private func parkedHandshakeTimedOut(_ id: UInt64) {
        guard let parked = self.state.withLock({ $0.admissions.expireParked(id) }) else { return }
        self.closeUnserved(parked)
        self.metrics.active.decrement()
    }

    /// Serves a connection that waited for a handshake slot; one whose handshake time ran out meanwhile is closed
    /// instead, and its slot goes to the next.
    private func serveParked(_ parked: ConnectionAdmissions.Parked) {
        guard parked.handshakeDeadline <= .now() else {
            let group = MultiThreadedEventLoopGroup.singleton
            self.serve(parked.descriptor, id: parked.id, group: group, handshakeDeadline: parked.handshakeDeadline)
            return
        }
        self.closeUnserved(parked)
        self.channelClosed(parked.id)  // forgets it, and serves the next parked connection of its user, if any
    }

    /// Closes a parked connection whose handshake time is up, unserved.
    private func closeUnserved(_ parked: ConnectionAdmissions.Parked) {
        close(parked.descriptor)
        self.connectionFailed(
            SocketIPCError(.timedOut, "the connection's handshake time ran out while it waited for a handshake slot"),
            id: parked.id,
            peer: parked.peer
        )
    }

    /// Refuses a peer the authorization policy refused: an EOF-style one is closed before anything is read; a
    /// framed one is told why (hello and going-away `unauthorized`) on an event loop, and then closed.
    private func refuseUnauthorized(_ descriptor: Int32, id: UInt64, peer: PeerCredentials?, group: MultiThreadedEventLoopGroup) {
        guard !self.halfClosure else {
            close(descriptor)
            self.channelClosed(id)
            return
        }
        let text = "the server's authorization policy refused this peer (\(peer.map { "\($0)" } ?? "credentials unknown"))"
        ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    channel.closeFuture.whenComplete { _ in self.channelClosed(id) }
                    try channel.pipeline.syncOperations.addHandler(RefusalChannelHandler(text: text, lingerTime: self.configuration.connection.goAwayLingerTime))
                }
            }
            .withConnectedSocket(descriptor)
            .whenFailure { _ in self.channelClosed(id) }
    }

    private static func metadata(_ id: UInt64, _ peer: PeerCredentials?) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["socketipc.connection": "\(id)"]
        if let peer {
            metadata["socketipc.peer.uid"] = "\(peer.userID)"
            metadata["socketipc.peer.pid"] = "\(peer.processID)"
        } else {
            metadata["socketipc.peer"] = "unknown"
        }
        return metadata
    }

    /// Forgets a closed connection (once: later calls for the same id do nothing), serves a parked connection of
    /// the same user if one waits for its slot, and completes the drain of a shutdown when it was the last one.
    private func channelClosed(_ id: UInt64) {
        let (drained, wasCounted, next) = self.state.withLock {
            state -> (EventLoopPromise<Void>?, Bool, ConnectionAdmissions.Parked?) in
            state.channels[id] = nil
            state.connections[id] = nil
            let (wasCounted, next) = state.admissions.closed(id)
            guard wasCounted else { return (nil, false, nil) }
            guard state.phase == .shuttingDown, state.admissions.count == 0 else { return (nil, true, next) }
            state.deadline?.cancel()
            defer { state.drained = nil }
            return (state.drained, true, next)
        }
        if wasCounted { self.metrics.active.decrement() }
        if let next { self.serveParked(next) }
        drained?.succeed()
    }

    /// What a shutdown does once the state says so.
    private struct ShutdownAction {
        var acceptor: Acceptor?
        /// Framed connections to tell that the server is going away (graceful).
        var connections: [Connection]
        /// Channels to close now (not graceful).
        var channels: [any Channel]
        /// Connections parked for a handshake slot: closed unserved.
        var parked: [ConnectionAdmissions.Parked]
        /// The drain to complete now: nothing was left to close.
        var drained: EventLoopPromise<Void>?
    }

    private func beginShutdown(graceful: Bool) {
        let action = self.state.withLock { state -> ShutdownAction? in
            switch state.phase {
            case .idle:
                state.phase = .finished
                return nil
            case .running:
                state.phase = .shuttingDown
            case .shuttingDown:
                if graceful { return nil }
            case .finished:
                return nil
            }
            guard let acceptor = state.acceptor else { return nil }  // run() shuts down once the acceptor exists
            let drained = state.admissions.count == 0 ? state.drained : nil
            if drained != nil { state.drained = nil }
            return ShutdownAction(
                acceptor: acceptor,
                connections: graceful ? Array(state.connections.values) : [],
                channels: graceful ? [] : Array(state.channels.values),
                parked: state.admissions.takeAllParked(),
                drained: drained
            )
        }
        guard let action else { return }
        self.logger.info("shutting down", metadata: ["graceful": "\(graceful)"])
        action.acceptor?.stop()
        for parked in action.parked {
            close(parked.descriptor)
            self.channelClosed(parked.id)
        }
        for connection in action.connections {
            connection.goAway(.normal, message: "the server is shutting down")
        }
        for channel in action.channels { channel.close(promise: nil) }
        if graceful {
            let eventLoop = MultiThreadedEventLoopGroup.singleton.any()
            let deadline = eventLoop.scheduleTask(in: .init(self.configuration.shutdownGracePeriod)) {
                self.beginShutdown(graceful: false)
            }
            // Armed only while something is left to drain: the drain may have completed meanwhile.
            let drainedAlready = self.state.withLock { state -> Bool in
                guard state.drained != nil, state.admissions.count > 0 else { return true }
                state.deadline = deadline
                return false
            }
            if drainedAlready { deadline.cancel() }
        }
        action.drained?.succeed()
    }
}

/// Process-wide connection numbers, for logs.
enum ConnectionIDs {
    private static let counter = Atomic<UInt64>(0)
    static func next() -> UInt64 { self.counter.wrappingAdd(1, ordering: .relaxed).newValue }
}

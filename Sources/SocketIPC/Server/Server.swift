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
    private let state = Mutex(State())
    private let metrics: ServerMetrics

    private enum Phase { case idle, running, shuttingDown, finished }

    private struct State {
        var phase = Phase.idle
        var acceptor: Acceptor?
        var channels: [UInt64: any Channel] = [:]
        /// Connections accepted and not yet closed, including those whose channel is still being set up.
        var admitted = 0
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
        let authorization = metrics.counting(configuration.authorization)
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
                authorization: authorization,
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
        let authorization = metrics.counting(configuration.authorization)
        var serveInline: (@Sendable (Int32, UInt64, Logger) -> EOFInlineServer.Outcome)?
        if case .eventLoop(let maximumSize, let body) = handler.kind {
            serveInline = { descriptor, id, logger in
                EOFInlineServer.serve(
                    descriptor,
                    maximumSize: maximumSize,
                    body: body,
                    connectionID: id,
                    authorization: authorization,
                    logger: logger,
                    reportFailure: { metrics.connectionFailed($0) }
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
        ) { channel, id, _, initialBytes, lifecycle, logger in
            try handler.install(
                on: channel,
                connectionID: id,
                initialBytes: initialBytes,
                authorization: authorization,
                logger: logger,
                reportFailure: { metrics.connectionFailed($0) }
            )
        }
    }

    /// Serves until shut down: claims the socket path, accepts connections, and on shutdown closes them and
    /// removes the socket file.
    /// - Throws: ``SocketIPCError`` when the path cannot be claimed: `invalidPath`, `parentDirectoryMissing`,
    ///   `addressInUse`, `pathOccupied`, `systemCall`; or `invalidState` when called a second time.
    public func run() async throws {
        let path = try SocketPath(self.configuration.path)
        try self.state.withLock { state in
            guard state.phase == .idle else {
                throw SocketIPCError(.invalidState, "Server.run() may be called only once", path: path.path)
            }
            state.phase = .running
        }
        let claim: SocketFileOwner.Claim
        do {
            claim = try SocketFileOwner.claim(
                path,
                mode: self.configuration.mode,
                createParentDirectory: self.configuration.createParentDirectory,
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

    /// Starts a graceful shutdown: stop accepting, tell clients, let requests in flight finish within the grace
    /// period, close, and remove the socket file; ``run()`` returns when that is done.
    public func shutdownGracefully() {
        self.beginShutdown(graceful: true)
    }

    // MARK: - Connections

    /// Wraps an accepted socket in a channel, unless the server is shutting down or full. Runs on the accept thread.
    private func accept(_ descriptor: Int32, group: MultiThreadedEventLoopGroup) {
        let id = ConnectionIDs.next()
        let admitted = self.state.withLock { state -> Bool in
            guard state.phase == .running, state.admitted < self.configuration.maximumConnections else { return false }
            state.admitted += 1
            return true
        }
        guard admitted else {
            self.metrics.refused.increment()
            self.logger.notice("refusing connection: shutting down or at maximumConnections", metadata: ["socketipc.connection": "\(id)"])
            close(descriptor)
            return
        }
        self.metrics.accepted.increment()
        self.metrics.active.increment()
        var initialBytes: ByteBuffer?
        if let serveInline = self.serveInline {
            switch serveInline(descriptor, id, self.logger) {
            case .served:
                self.channelClosed(id, admittedOnly: true)
                return
            case .handOff(let bytes):
                initialBytes = bytes.readableBytes > 0 ? bytes : nil
            }
        }
        let handedOffBytes = initialBytes
        let lifecycle = ConnectionLifecycle(
            opened: { connection in
                let goAwayNow = self.state.withLock { state -> Bool in
                    state.connections[id] = connection
                    return state.phase != .running
                }
                if goAwayNow { connection.goAway(.normal, message: "the server is shutting down") }
            },
            closed: { _, error in
                if let error { self.metrics.connectionFailed(error) }
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
                self.channelClosed(id, admittedOnly: true)
            }
    }

    private func channelClosed(_ id: UInt64, admittedOnly: Bool = false) {
        let (drained, wasAdmitted) = self.state.withLock { state -> (EventLoopPromise<Void>?, Bool) in
            let wasAdmitted = admittedOnly || state.channels.removeValue(forKey: id) != nil
            if wasAdmitted { state.admitted -= 1 }
            state.connections[id] = nil
            guard state.phase == .shuttingDown, state.admitted == 0 else { return (nil, wasAdmitted) }
            state.deadline?.cancel()
            defer { state.drained = nil }
            return (state.drained, wasAdmitted)
        }
        if wasAdmitted { self.metrics.active.decrement() }
        drained?.succeed()
    }

    private func beginShutdown(graceful: Bool) {
        let action = self.state.withLock {
            state -> (server: Acceptor?, connections: [Connection], channels: [any Channel], drained: EventLoopPromise<Void>?)? in
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
            let server = state.acceptor
            guard server != nil else { return nil }  // run() shuts down once the acceptor exists
            let drained = state.admitted == 0 ? state.drained : nil
            if drained != nil { state.drained = nil }
            return (
                server,
                graceful ? Array(state.connections.values) : [],
                graceful ? [] : Array(state.channels.values),
                drained
            )
        }
        guard let action else { return }
        self.logger.info("shutting down", metadata: ["graceful": "\(graceful)"])
        action.server?.stop()
        for connection in action.connections {
            connection.goAway(.normal, message: "the server is shutting down")
        }
        for channel in action.channels { channel.close(promise: nil) }
        if graceful {
            let eventLoop = MultiThreadedEventLoopGroup.singleton.any()
            let deadline = eventLoop.scheduleTask(in: .init(self.configuration.shutdownGracePeriod)) {
                self.beginShutdown(graceful: false)
            }
            self.state.withLock { $0.deadline = deadline }
        }
        action.drained?.succeed()
    }
}

/// Process-wide connection numbers, for logs.
enum ConnectionIDs {
    private static let counter = Atomic<UInt64>(0)
    static func next() -> UInt64 { self.counter.wrappingAdd(1, ordering: .relaxed).newValue }
}

import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// A server on a Unix domain socket file: it owns the path safely, accepts connections in a loop and serves each
/// concurrently, and removes the file when it stops.
///
/// Make one with ``framed(configuration:logger:onServerRunning:makeHandler:)`` (many messages per connection,
/// requests and replies) or ``eof(configuration:logger:onServerRunning:handler:)`` (one message per connection, ended
/// by the client's half-close, as `socat` and `nc -U` send it). Then call ``run()``, directly or through
/// swift-service-lifecycle's `ServiceGroup`: the server is a `Service`.
///
/// ```swift
/// let server = Server.framed(configuration: .init(path: "/tmp/app.sock")) { _ in
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
    private let initializeChild: @Sendable (any Channel, UInt64, ConnectionLifecycle, Logger) throws -> Void
    private let halfClosure: Bool
    private let state = Mutex(State())
    private let acceptedCounter = Counter(label: "socketipc_connections_accepted_total")
    private let refusedCounter = Counter(label: "socketipc_connections_refused_total")

    private enum Phase { case idle, running, shuttingDown, finished }

    private struct State {
        var phase = Phase.idle
        var serverChannel: (any Channel)?
        var channels: [UInt64: any Channel] = [:]
        var connections: [UInt64: Connection] = [:]
        var drained: EventLoopPromise<Void>?
        var deadline: Scheduled<Void>?
    }

    private init(
        configuration: ServerConfiguration,
        logger: Logger,
        halfClosure: Bool,
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void,
        initializeChild: @escaping @Sendable (any Channel, UInt64, ConnectionLifecycle, Logger) throws -> Void
    ) {
        self.configuration = configuration
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
    ///   - makeHandler: Makes the handler of one connection, on that connection's event loop.
    public static func framed<Handler: ConnectionHandler & SendableMetatype>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "socketipc.server"),
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void = { _ in },
        makeHandler: @escaping @Sendable (any Channel) -> Handler
    ) -> Server {
        let options = configuration.connection
        let authorization = configuration.authorization
        return Server(
            configuration: configuration,
            logger: logger,
            halfClosure: false,
            onServerRunning: onServerRunning
        ) { channel, id, lifecycle, logger in
            let handler = ConnectionChannelHandler(
                handler: makeHandler(channel),
                options: options,
                connectionID: id,
                lifecycle: lifecycle,
                authorization: authorization,
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
        let authorization = configuration.authorization
        return Server(
            configuration: configuration,
            logger: logger,
            halfClosure: true,
            onServerRunning: onServerRunning
        ) { channel, id, lifecycle, logger in
            try handler.install(on: channel, connectionID: id, authorization: authorization, logger: logger)
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
        let serverChannel: any Channel
        do {
            serverChannel = try await ServerBootstrap(group: group)
                .childChannelOption(.allowRemoteHalfClosure, value: self.halfClosure)
                .childChannelOption(.recvAllocator, value: ConnectionOptions.receiveAllocator)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try self.accept(channel) }
                }
                .withBoundSocket(claim.listeningDescriptor)
                .get()
        } catch {
            drained.succeed()
            self.state.withLock { $0.phase = .finished }
            throw SocketIPCError(.systemCall, "could not start serving on \(path): \(error)", path: path.path)
        }
        let shutDownAlready = self.state.withLock { state -> Bool in
            state.serverChannel = serverChannel
            state.drained = drained
            return state.phase != .running
        }
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
        self.state.withLock { $0.phase = .finished }
        self.logger.info("stopped", metadata: ["socketipc.path": "\(path)"])
    }

    /// Starts a graceful shutdown: stop accepting, tell clients, let requests in flight finish within the grace
    /// period, close, and remove the socket file; ``run()`` returns when that is done.
    public func shutdownGracefully() {
        self.beginShutdown(graceful: true)
    }

    // MARK: - Connections

    private func accept(_ channel: any Channel) throws {
        let id = ConnectionIDs.next()
        let admitted = self.state.withLock { state -> Bool in
            guard state.phase == .running, state.channels.count < self.configuration.maximumConnections else {
                return false
            }
            state.channels[id] = channel
            return true
        }
        guard admitted else {
            self.refusedCounter.increment()
            self.logger.notice("refusing connection", metadata: ["socketipc.connection": "\(id)"])
            // Failing the initializer makes NIO close the accepted socket at once.
            throw SocketIPCError(.invalidState, "the server is shutting down or serves its maximum of connections")
        }
        self.acceptedCounter.increment()
        channel.closeFuture.whenComplete { _ in self.channelClosed(id) }
        let lifecycle = ConnectionLifecycle(
            opened: { connection in
                let goAwayNow = self.state.withLock { state -> Bool in
                    state.connections[id] = connection
                    return state.phase != .running
                }
                if goAwayNow { connection.goAway(.normal, message: "the server is shutting down") }
            }
        )
        try self.initializeChild(channel, id, lifecycle, self.logger)
    }

    private func channelClosed(_ id: UInt64) {
        let drained = self.state.withLock { state -> EventLoopPromise<Void>? in
            state.channels[id] = nil
            state.connections[id] = nil
            guard state.phase == .shuttingDown, state.channels.isEmpty else { return nil }
            state.deadline?.cancel()
            defer { state.drained = nil }
            return state.drained
        }
        drained?.succeed()
    }

    private func beginShutdown(graceful: Bool) {
        let action = self.state.withLock {
            state -> (server: (any Channel)?, connections: [Connection], channels: [any Channel], drained: EventLoopPromise<Void>?)? in
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
            let server = state.serverChannel
            guard server != nil else { return nil }  // run() shuts down once the channel exists
            let drained = state.channels.isEmpty ? state.drained : nil
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
        action.server?.close(promise: nil)
        for connection in action.connections {
            connection.goAway(.normal, message: "the server is shutting down")
        }
        for channel in action.channels { channel.close(promise: nil) }
        if graceful, let server = action.server {
            let deadline = server.eventLoop.scheduleTask(in: .init(self.configuration.shutdownGracePeriod)) {
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

import Logging
import Metrics

extension Server {
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
        Server(
            configuration: configuration,
            metrics: ServerMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory),
            logger: logger,
            onServerRunning: onServerRunning,
            initializer: FramedConnectionInitializer(
                makeHandler: makeHandler,
                sharedOptions: SharedConnectionOptions(configuration.connection),
                handshakeTimeout: configuration.handshakeTimeout,
                writeTimeout: configuration.writeTimeout
            )
        )
    }
}

/// Serves a framed connection: a ``ConnectionChannelHandler`` with a handler of its own from `makeHandler`.
struct FramedConnectionInitializer<Handler: ConnectionHandler & SendableMetatype>: ConnectionInitializer {
    /// Makes the handler of one connection, on that connection's event loop.
    let makeHandler: @Sendable () -> Handler
    /// Limits and timeouts of each connection, one copy for all of them.
    let sharedOptions: SharedConnectionOptions
    /// Limits and timeouts of each connection.
    var options: ConnectionOptions { self.sharedOptions.value }
    /// How long the peer has to send its hello, counted from the accept.
    let handshakeTimeout: Duration
    /// How long the peer may leave the server's writes unread.
    let writeTimeout: Duration?

    /// Descriptors travel when the options allow them.
    var maximumDescriptorsPerMessage: Int { self.options.effectiveMaximumDescriptors }

    /// A framed connection closes when its peer half-closes.
    var allowsRemoteHalfClosure: Bool { false }

    /// A refused framed peer gets a hello and a going-away frame that says why.
    var explainsRefusals: Bool { true }

    func initialize(_ connection: AcceptedConnection) throws {
        try self.options.applySocketOptions(to: connection.channel)
        let handler = ConnectionChannelHandler(
            handler: self.makeHandler(),
            options: self.sharedOptions,
            connectionID: connection.id,
            lifecycle: connection.lifecycle,
            handshakeTimeout: self.handshakeTimeout,
            writeTimeout: self.writeTimeout,
            pausesReadingWhileUnwritable: true,
            descriptor: connection.descriptor,
            peer: connection.peer,
            descriptorRelay: connection.descriptorRelay,
            logger: connection.logger
        )
        try connection.channel.pipeline.syncOperations.addHandler(handler)
    }
}

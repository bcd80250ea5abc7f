import Logging
import Metrics
import NIOCore

extension Server {
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
        return Server(
            configuration: configuration,
            metrics: metrics,
            logger: logger,
            onServerRunning: onServerRunning,
            initializer: EOFConnectionInitializer(
                handler: handler,
                timeLimit: configuration.handshakeTimeout,
                failureLog: ConnectionFailureLog(metrics: metrics, logger: logger)
            )
        )
    }
}

/// Serves an EOF-style connection: on the accepting thread when an ``EOFMessageHandler/onEventLoop(maximumSize:_:)``
/// handler can (``EOFInlineServer``), otherwise with the handler's channel handler.
struct EOFConnectionInitializer: ConnectionInitializer {
    /// What to do with each message.
    let handler: EOFMessageHandler
    /// How long the client has, from the accept, to send its whole message: for the EOF style the handshake is the
    /// whole message.
    let timeLimit: Duration
    /// Counts and logs the connections an error closed.
    let failureLog: ConnectionFailureLog

    /// The client half-closes to end its message, and then reads the acknowledgement.
    var allowsRemoteHalfClosure: Bool { true }

    /// A refused EOF-style peer is closed before anything is read: the style has no frame to say why.
    var explainsRefusals: Bool { false }

    func serveOnAcceptingThread(
        _ descriptor: Int32, id: UInt64, peer: PeerCredentials?, logger: Logger
    ) -> EOFInlineServer.Outcome? {
        guard case .eventLoop(let maximumSize, let body) = self.handler.kind else { return nil }
        let failureLog = self.failureLog
        return EOFInlineServer.serve(
            descriptor,
            peer: peer,
            maximumSize: maximumSize,
            body: body,
            connectionID: id,
            logger: logger,
            timeLimit: self.timeLimit,
            reportFailure: { failureLog.failed($0) }
        )
    }

    func initialize(_ connection: AcceptedConnection) throws {
        // What is left of the time limit, which counts from when the server accepted the connection.
        let left = connection.lifecycle.handshakeDeadline.map {
            Duration.nanoseconds(max(0, ($0 - .now()).nanoseconds))
        }
        let failureLog = self.failureLog
        try self.handler.install(
            on: connection.channel,
            connectionID: connection.id,
            initialBytes: connection.initialBytes,
            logger: connection.logger,
            timeLimit: min(self.timeLimit, left ?? self.timeLimit),
            descriptor: connection.descriptor,
            taskOwner: connection.lifecycle.handlerTaskOwner,
            slot: connection.lifecycle.slot,
            incomingBytes: connection.lifecycle.incomingBytes,
            peer: connection.peer,
            reportFailure: { failureLog.failed($0) }
        )
    }
}

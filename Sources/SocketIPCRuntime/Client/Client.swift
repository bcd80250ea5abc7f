import Logging
import NIOCore
import NIOPosix

/// Connects to a SocketIPC server: framed connections with ``connect(to:configuration:handler:logger:)`` and
/// ``withConnection(to:configuration:handler:logger:_:)``, EOF-style messages with
/// ``sendMessage(_:to:maximumAcknowledgementSize:connectTimeout:timeout:trustedServerUserIDs:)``.
///
/// ```swift
/// try await Client.withConnection(to: "/tmp/app.sock") { connection in
///     let reply = try await connection.request(ByteBuffer(string: "ping"))
///     print(String(buffer: reply))
/// }
/// ```
public enum Client {
    /// Opens a framed connection and exchanges hellos; close it with ``Connection/close()`` when done.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - configuration: Limits and timeouts.
    ///   - handler: What to do with messages and requests the server sends; by default they are dropped and
    ///     refused.
    ///   - logger: Where the connection logs.
    /// - Returns: The open connection.
    /// - Throws: `SocketIPCError` with code `invalidPath`, `connectionRefused`, `notSocketIPCPeer`,
    ///   `unsupportedVersion`, `unauthorized`, `timedOut` or `systemCall`; `CancellationError` when the task is cancelled
    ///   while it waits for the server's hello.
    public static func connect<Handler: ConnectionHandler & Sendable>(
        to path: String,
        configuration: ClientConfiguration = .init(),
        handler: Handler,
        logger: Logger = Logger(label: "socketipc.client")
    ) async throws -> Connection {
        let socketPath = try SocketPath(path)
        let group = MultiThreadedEventLoopGroup.singleton
        let descriptor = try await SocketConnector.connect(
            to: socketPath,
            timeout: configuration.connectTimeout,
            trustedServerUserIDs: configuration.trustedServerUserIDs
        )
        let eventLoop = group.any()
        let handshake = eventLoop.makePromise(of: Connection.self)
        // Set on the event loop once the connection is handed over: the connect timeout then leaves it alone.
        let handedOver = NIOLoopBoundBox.makeBoxSendingValue(false, eventLoop: eventLoop)
        let lifecycle = ConnectionLifecycle(
            handshakeCompleted: { connection in
                // A server that refuses this peer sends its going-away frame right after its hello.
                if let refusal = connection.peerGoingAwayError, refusal.code == .unauthorized {
                    handshake.fail(refusal)
                } else {
                    handedOver.value = true
                    handshake.succeed(connection)
                }
            },
            closed: { connection, error in
                // A completed handshake ignores this; a close before the server's hello says little by itself.
                let reason = error ?? connection.closeError
                if reason == nil || reason?.code == .connectionClosed {
                    handshake.fail(
                        SocketIPCError(
                            .connectionClosed,
                            "the server at \(socketPath) closed the connection before its hello: it is at a connection "
                                + "limit, shutting down, or refused this process; or it is an EOF-style server, which "
                                + "closes a connection whose message does not end in time (send it an EOF-style "
                                + "message instead: socket-ipc send --eof)",
                            path: path
                        )
                    )
                } else {
                    handshake.fail(reason!)
                }
            }
        )
        let options = configuration.connection
        let id = ConnectionIDs.next()
        // A connection that passes descriptors goes through a relay; the server's credentials are read from the
        // connection's own socket first, since the channel's is the relay's socket pair.
        var relay: DescriptorRelay?
        var knownPeer: PeerCredentials?
        if options.effectiveMaximumDescriptors > 0 {
            knownPeer = PeerCredentials.read(descriptor: descriptor)
            options.applySocketOptions(toDescriptor: descriptor)
            relay = try DescriptorRelay(
                socket: descriptor,
                maximumPerMessage: options.effectiveMaximumDescriptors,
                passedBy: PassedDescriptorCloser.account(ofPeer: knownPeer?.userID),
                logger: logger
            )
        }
        let descriptorRelay = relay
        let peer = knownPeer
        let channelDescriptor = relay?.channelSide ?? descriptor
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .channelOption(.recvAllocator, value: ConnectionOptions.receiveAllocator)
                .channelOption(.writeBufferWaterMark, value: ConnectionOptions.channelWriteWatermark)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try options.applySocketOptions(to: channel)
                        try channel.pipeline.syncOperations.addHandler(
                            ConnectionChannelHandler(
                                handler: handler,
                                options: SharedConnectionOptions(options),
                                connectionID: id,
                                lifecycle: lifecycle,
                                descriptor: channelDescriptor,
                                peer: peer,
                                descriptorRelay: descriptorRelay,
                                logger: logger
                            )
                        )
                    }
                }
                .withConnectedSocket(channelDescriptor)
                .get()
        } catch {
            descriptorRelay?.abort()
            handshake.fail(error)
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(errorText(error))", path: path, cause: error)
        }
        let timeout = eventLoop.scheduleTask(in: .init(configuration.connectTimeout)) {
            // The hello came first, and the caller has (or is about to have) the connection, though this timer
            // fired before the caller's task resumed to cancel it: closing it here would close the caller's
            // connection under it (found by a review: `call --timeout=0.0001` then failed with connectionClosed).
            guard !handedOver.value else { return }
            handshake.fail(
                SocketIPCError(
                    .timedOut,
                    "the server at \(socketPath) sent no hello within \(configuration.connectTimeout): it is busy, or it "
                        + "is not a framed SocketIPC server (an EOF-style server answers only after the client's "
                        + "half-close; send it an EOF-style message instead)",
                    path: path,
                    cause: ConnectionNotMade.noHello
                )
            )
            channel.close(promise: nil)
        }
        defer { timeout.cancel() }
        do {
            // A cancelled task stops waiting for the hello at once (a deadline around the call, say), rather than
            // when the connect timeout passes.
            return try await withTaskCancellationHandler {
                try await handshake.futureResult.get()
            } onCancel: {
                handshake.fail(CancellationError())
            }
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// Opens a framed connection whose incoming one-way messages (server pushes) go to `onMessage`.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - configuration: Limits and timeouts.
    ///   - onMessage: Called on the connection's event loop for each message the server sends; must not block.
    ///   - logger: Where the connection logs.
    /// - Returns: The open connection.
    public static func connect(
        to path: String,
        configuration: ClientConfiguration = .init(),
        onMessage: @escaping @Sendable (ByteBuffer) -> Void = { _ in },
        logger: Logger = Logger(label: "socketipc.client")
    ) async throws -> Connection {
        try await Self.connect(
            to: path,
            configuration: configuration,
            handler: MessageCallbackHandler(onMessage: onMessage),
            logger: logger
        )
    }

    /// Opens a framed connection, runs `body` with it, and closes it, also when `body` throws; returns once
    /// everything `body` sent has been written and the connection is closed. When `body` throws because its task was
    /// cancelled, or with `CancellationError`, `timedOut`, `deadlineExceeded` (a call's) or `peerNotResponding`,
    /// what is still queued is dropped instead (the server is not reading it, and the caller has stopped waiting),
    /// so that the call returns at once rather than after ``ConnectionOptions/closeTimeout``.
    ///
    /// With ``ClientConfiguration/runsBodyOnEventLoop`` (the default), `body` runs on the connection's event loop.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - configuration: Limits and timeouts.
    ///   - handler: What to do with messages and requests the server sends.
    ///   - logger: Where the connection logs.
    ///   - body: Uses the connection.
    /// - Returns: What `body` returns.
    public static func withConnection<Handler: ConnectionHandler & Sendable, Result: Sendable>(
        to path: String,
        configuration: ClientConfiguration = .init(),
        handler: Handler,
        logger: Logger = Logger(label: "socketipc.client"),
        _ body: (Connection) async throws -> Result
    ) async throws -> Result {
        let connection = try await Self.connect(to: path, configuration: configuration, handler: handler, logger: logger)
        let result: Result
        do {
            if configuration.runsBodyOnEventLoop {
                result = try await withTaskExecutorPreference(connection.taskExecutor) {
                    try await body(connection)
                }
            } else {
                result = try await body(connection)
            }
        } catch {
            let code = (error as? SocketIPCError)?.code
            if Task.isCancelled || error is CancellationError || code == .timedOut || code == .deadlineExceeded
                || code == .peerNotResponding
            {
                // Cancelled, a deadline passed (the connection's, or a call's), or the server did not answer in
                // time: what is still queued is dropped rather than waited for, for up to the close timeout, after
                // the caller has stopped waiting.
                connection.abort()
            } else {
                connection.close()
            }
            await connection.waitUntilClosed()
            throw error
        }
        // Returning only once the connection is closed means everything sent has been written to the socket.
        connection.close()
        await connection.waitUntilClosed()
        return result
    }

    /// Opens a framed connection whose server pushes go to `onMessage`, runs `body` with it, and closes it, as
    /// ``withConnection(to:configuration:handler:logger:_:)`` does; `logger` is where the connection logs.
    public static func withConnection<Result: Sendable>(
        to path: String,
        configuration: ClientConfiguration = .init(),
        onMessage: @escaping @Sendable (ByteBuffer) -> Void = { _ in },
        logger: Logger = Logger(label: "socketipc.client"),
        _ body: (Connection) async throws -> Result
    ) async throws -> Result {
        try await Self.withConnection(
            to: path,
            configuration: configuration,
            handler: MessageCallbackHandler(onMessage: onMessage),
            logger: logger,
            body
        )
    }
}

/// The handler of ``Client/connect(to:configuration:onMessage:logger:)``: passes messages on, refuses requests.
struct MessageCallbackHandler: ConnectionHandler, Sendable {
    let onMessage: @Sendable (ByteBuffer) -> Void

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.onMessage(message)
    }
}

import Logging
import NIOCore

/// What an EOF-style ``Server`` does with each message: a connection carries one message, which ends when the
/// client half-closes its side (`shutdown(SHUT_WR)`, or EOF on `socat`'s or `nc -U`'s standard input). The
/// handler may return an acknowledgement, which the server writes before it closes the connection.
///
/// Three forms:
/// - ``onEventLoop(maximumSize:_:)``: the whole message, handled synchronously on the event loop; the fastest.
/// - ``collecting(maximumSize:_:)``: the whole message, handled in a task.
/// - ``streaming(_:)``: the message as an ``EOFMessageBody``, an async sequence of chunks read only as fast as the
///   handler consumes them, so a message of any size passes through in bounded memory.
///
/// A message larger than `maximumSize` closes its connection without an acknowledgement (and is logged); the server
/// goes on serving others. A handler that throws does the same. So does a message that does not end within the
/// server's ``ServerConfiguration/handshakeTimeout`` (default 10 s) from the connection's accept; for a
/// ``streaming(_:)`` handler that limit applies instead to each wait for more bytes while the handler wants them.
public struct EOFMessageHandler: Sendable {
    enum Kind: Sendable {
        case eventLoop(maximumSize: Int, @Sendable (ByteBuffer, EOFMessageContext) throws -> ByteBuffer?)
        case collecting(maximumSize: Int, @Sendable (ByteBuffer, EOFMessageContext) async throws -> ByteBuffer?)
        case streaming(@Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?)
    }

    let kind: Kind

    /// Handles the whole message synchronously; `body` must not block.
    ///
    /// `body` runs on the connection's event loop or, when the whole message has already arrived by the time the
    /// server accepts the connection (the usual case for small messages), right on the server's accepting thread,
    /// which then needs no event loop for the connection at all.
    /// - Parameters:
    ///   - maximumSize: The largest message accepted, in bytes; default 16 MiB.
    ///   - body: Returns the acknowledgement to send, or `nil` for none.
    public static func onEventLoop(
        maximumSize: Int = 16 * 1024 * 1024,
        _ body: @escaping @Sendable (ByteBuffer, EOFMessageContext) throws -> ByteBuffer?
    ) -> EOFMessageHandler {
        EOFMessageHandler(kind: .eventLoop(maximumSize: maximumSize, body))
    }

    /// Handles the whole message in a task of its own: a child of the task that runs the server, cancelled when the
    /// connection closes or the server's shutdown ends its grace period.
    /// - Parameters:
    ///   - maximumSize: The largest message accepted, in bytes; default 16 MiB.
    ///   - body: Returns the acknowledgement to send, or `nil` for none.
    public static func collecting(
        maximumSize: Int = 16 * 1024 * 1024,
        _ body: @escaping @Sendable (ByteBuffer, EOFMessageContext) async throws -> ByteBuffer?
    ) -> EOFMessageHandler {
        EOFMessageHandler(kind: .collecting(maximumSize: maximumSize, body))
    }

    /// Handles the message as a stream of chunks, in a task of its own, with backpressure: a child of the task that
    /// runs the server, cancelled when the connection closes or the server's shutdown ends its grace period.
    /// - Parameter body: Consumes the chunks; returns the acknowledgement to send, or `nil` for none.
    public static func streaming(
        _ body: @escaping @Sendable (EOFMessageBody, EOFMessageContext) async throws -> ByteBuffer?
    ) -> EOFMessageHandler {
        EOFMessageHandler(kind: .streaming(body))
    }

    func install(
        on channel: any Channel,
        connectionID: UInt64,
        initialBytes: ByteBuffer? = nil,
        logger: Logger,
        timeLimit: Duration = .seconds(10),
        descriptor: Int32? = nil,
        taskOwner: ConnectionTasks.Owner,
        slot: ConnectionSlot? = nil,
        incomingBytes: IncomingBytesCharge? = nil,
        peer: PeerCredentials? = nil,
        reportFailure: @escaping @Sendable (SocketIPCError) -> Void = { _ in }
    ) throws {
        var logger = logger
        logger[metadataKey: "socketipc.connection"] = "\(connectionID)"
        // A peer the server read at the accept is not read again; without one, the channel reads it once active.
        var context = EOFMessageContext(connectionID: connectionID, peer: peer, logger: logger)
        context.reportFailure = reportFailure
        context.closed = channel.closeFuture
        switch self.kind {
        case .eventLoop, .collecting:
            try channel.pipeline.syncOperations.addHandler(
                EOFCollectingChannelHandler(
                    kind: self.kind,
                    context: context,
                    initialBytes: initialBytes,
                    timeLimit: timeLimit,
                    descriptor: descriptor,
                    taskOwner: taskOwner,
                    slot: slot,
                    incomingBytes: incomingBytes
                )
            )
        case .streaming(let body):
            try channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
            try channel.pipeline.syncOperations.addHandler(
                EOFStreamingChannelHandler(
                    body: body,
                    context: context,
                    timeLimit: timeLimit,
                    taskOwner: taskOwner,
                    incomingBytes: incomingBytes
                )
            )
        }
    }
}

/// What an EOF-style handler knows about the connection its message came on.
public struct EOFMessageContext: Sendable {
    /// The connection's number in logs.
    public let connectionID: UInt64
    /// The sending process's credentials, where the platform tells them.
    public internal(set) var peer: PeerCredentials?
    /// A logger with the connection's metadata.
    public let logger: Logger
    /// Completed once the connection has closed, its acknowledgement written or given up; `nil` where the handler
    /// runs inline. What a handler charges for its acknowledgement is held until then.
    package var closed: EventLoopFuture<Void>? = nil
    /// Told when the connection ends without its message handled (the server counts these in its metrics).
    var reportFailure: @Sendable (SocketIPCError) -> Void = { _ in }

    /// Logs that the handler failed with `error` and reports it, unless the handler only gave up because its task
    /// was cancelled (the connection closed, or the server's grace period ended): that is no failure of its own.
    func handlerFailed(_ error: any Error) {
        if !(error is SocketIPCError), Task.isCancelled {
            self.logger.debug("message handler cancelled", metadata: ["error": "\(error)"])
            return
        }
        self.logger.debug("message handler failed", metadata: ["error": "\(error)"])
        self.reportFailure(
            error as? SocketIPCError ?? SocketIPCError(.remoteError, "the message handler failed: \(error)", cause: error)
        )
    }
}

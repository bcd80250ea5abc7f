/// Runs the server that `makeServer` makes on a socket in a new temporary directory for the length of `body`, and
/// cleans up after it, also when `body` throws: the server is shut down gracefully, `Server.run()` has returned and
/// the directory is removed before this function returns.
///
/// ``withFramedTestServer(socketName:configure:logger:makeHandler:isolation:_:)`` and
/// ``withEOFTestServer(handler:socketName:configure:logger:isolation:_:)`` are this function for the two kinds of
/// server; use it directly for a server made in another way.
///
/// ```swift
/// try await withTestServer(makeServer: { configuration, onServerRunning in
///     Server.framed(configuration: configuration, logger: myLogger, onServerRunning: onServerRunning) { MyHandler() }
/// }) { server, path in
///     // ...
/// }
/// ```
///
/// See ``withTemporarySocketDirectory(isolation:_:)`` for the directory and ``withRunningServer(_:isolation:_:)``
/// for how the server is started and stopped.
/// - Parameters:
///   - socketName: The socket file's name in the temporary directory.
///   - configure: Changes the server's configuration, made for the socket's path, before the server is made.
///   - makeServer: Makes the server with the configuration, passing `onServerRunning` on.
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the running server and its socket path (`ServerConfiguration.path`).
/// - Returns: What `body` returns.
/// - Throws: What `makeServer` or `body` throws, and the `SocketIPCError` of a server that failed to start or to
///   run.
@discardableResult
public func withTestServer<Value>(
    socketName: String = "test.sock",
    configure: (inout ServerConfiguration) -> Void = { _ in },
    makeServer: (
        _ configuration: ServerConfiguration,
        _ onServerRunning: @escaping @Sendable (SocketPath) async -> Void
    ) throws -> Server,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ server: Server, _ path: String) async throws -> Value
) async throws -> Value {
    try await withTemporarySocketDirectory { directory in
        var configuration = ServerConfiguration(path: directory + "/" + socketName)
        configure(&configuration)
        return try await withRunningServer({ try makeServer(configuration, $0) }) { server in
            try await body(server, configuration.path)
        }
    }
}

/// Runs a framed server on a socket in a new temporary directory for the length of `body`, and cleans up after it,
/// also when `body` throws: the server is shut down gracefully, `Server.run()` has returned and the directory is
/// removed before this function returns.
///
/// ```swift
/// @Test func echo() async throws {
///     try await withFramedTestServer(makeHandler: { AsyncRequestHandler { request, _ in request } }) { _, path in
///         let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "ping")) }
///         #expect(String(buffer: reply) == "ping")
///     }
/// }
/// ```
///
/// The server is made with `Server.framed(configuration:logger:onServerRunning:makeHandler:)` by
/// ``withTestServer(socketName:configure:makeServer:isolation:_:)``.
/// - Parameters:
///   - socketName: The socket file's name in the temporary directory.
///   - configure: Changes the server's configuration, made for the socket's path, before the server is made.
///   - logger: Where the server logs; by default a logger labelled `socketipc.testing` that logs only critical
///     messages, so that a passing test prints nothing.
///   - makeHandler: Makes the handler of each connection, as for
///     `Server.framed(configuration:logger:onServerRunning:makeHandler:)`.
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the running server and its socket path (`ServerConfiguration.path`).
/// - Returns: What `body` returns.
/// - Throws: What `body` throws, and the `SocketIPCError` of a server that failed to start or to run.
@discardableResult
public func withFramedTestServer<Handler: ConnectionHandler & SendableMetatype, Value>(
    socketName: String = "test.sock",
    configure: (inout ServerConfiguration) -> Void = { _ in },
    logger: Logger? = nil,
    makeHandler: @escaping @Sendable () -> Handler,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ server: Server, _ path: String) async throws -> Value
) async throws -> Value {
    let logger = logger ?? quietLogger
    return try await withTestServer(socketName: socketName, configure: configure, makeServer: {
        Server.framed(configuration: $0, logger: logger, onServerRunning: $1, makeHandler: makeHandler)
    }, body)
}

/// Runs a server of `router`'s methods (`Server.service(configuration:router:logger:onServerRunning:)`) on a socket
/// in a new temporary directory for the length of `body`, and cleans up after it as
/// ``withFramedTestServer(socketName:configure:logger:makeHandler:isolation:_:)`` does.
///
/// ```swift
/// @Test func get() async throws {
///     var router = ServiceRouter()
///     router.register(Get.self) { key, _ in key == "colour" ? "blue" : nil }
///     try await withServiceTestServer(router: router) { _, path in
///         let value = try await Client.withConnection(to: path) { try await $0.call(Get.self, "colour") }
///         #expect(value == "blue")
///     }
/// }
/// ```
/// - Parameters:
///   - router: The methods served.
///   - socketName: The socket file's name in the temporary directory.
///   - configure: Changes the server's configuration, made for the socket's path, before the server is made.
///   - logger: Where the server logs; by default a logger that logs only critical messages.
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the running server and its socket path.
/// - Returns: What `body` returns.
/// - Throws: What `body` throws, and the `SocketIPCError` of a server that failed to start or to run.
@discardableResult
public func withServiceTestServer<Value>(
    router: ServiceRouter,
    socketName: String = "test.sock",
    configure: (inout ServerConfiguration) -> Void = { _ in },
    logger: Logger? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ server: Server, _ path: String) async throws -> Value
) async throws -> Value {
    try await withFramedTestServer(
        socketName: socketName,
        configure: configure,
        logger: logger,
        makeHandler: { ServiceConnectionHandler(router: router) },
        body
    )
}

/// Runs an EOF-style server on a socket in a new temporary directory for the length of `body`, and cleans up after
/// it, also when `body` throws: the server is shut down gracefully, `Server.run()` has returned and the directory
/// is removed before this function returns.
///
/// ```swift
/// @Test func acknowledges() async throws {
///     let handler = EOFMessageHandler.onEventLoop { message, _ in ByteBuffer(string: "got \(message.readableBytes)") }
///     try await withEOFTestServer(handler: handler) { _, path in
///         let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
///         #expect(String(buffer: acknowledgement) == "got 5")
///     }
/// }
/// ```
///
/// The server is made with `Server.eof(configuration:logger:onServerRunning:handler:)` by
/// ``withTestServer(socketName:configure:makeServer:isolation:_:)``.
/// - Parameters:
///   - handler: What the server does with each message.
///   - socketName: The socket file's name in the temporary directory.
///   - configure: Changes the server's configuration, made for the socket's path, before the server is made.
///   - logger: Where the server logs; by default a logger labelled `socketipc.testing` that logs only critical
///     messages, so that a passing test prints nothing.
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the running server and its socket path (`ServerConfiguration.path`).
/// - Returns: What `body` returns.
/// - Throws: What `body` throws, and the `SocketIPCError` of a server that failed to start or to run.
@discardableResult
public func withEOFTestServer<Value>(
    handler: EOFMessageHandler,
    socketName: String = "test.sock",
    configure: (inout ServerConfiguration) -> Void = { _ in },
    logger: Logger? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ server: Server, _ path: String) async throws -> Value
) async throws -> Value {
    let logger = logger ?? quietLogger
    return try await withTestServer(socketName: socketName, configure: configure, makeServer: {
        Server.eof(configuration: $0, logger: logger, onServerRunning: $1, handler: handler)
    }, body)
}

/// The servers' logger when the test names none: only critical messages, so that a passing test prints nothing.
private let quietLogger: Logger = {
    var logger = Logger(label: "socketipc.testing")
    logger.logLevel = .critical
    return logger
}()

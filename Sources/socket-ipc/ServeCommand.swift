import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import SocketIPC
import UnixSignals

/// `socket-ipc serve`: a server on a socket file until SIGINT or SIGTERM.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve on a socket file until interrupted.",
        discussion: """
            framed: echoes every request (the reply is the request's payload) and prints every one-way message as \
            `message N bytes: TEXT-OR-HEX`. eof: prints `received N bytes` for each message and acknowledges it \
            with the 4-byte big-endian count of bytes received.

            A framed server also serves a small typed service, for `socket-ipc call` and `socket-ipc watch` to \
            try: \(DemoService.summary)

            Prints `listening on PATH` once the socket accepts connections. SIGINT or SIGTERM shut the server down \
            gracefully: requests in flight finish, clients are told, and the socket file is removed. A stale \
            socket file (its server was killed) is replaced; a live server's is never touched.
            """
    )

    /// The two kinds of server.
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        /// SocketIPC's framed protocol: messages and requests, many per connection.
        case framed
        /// One message per connection, ended by the client's half-close.
        case eof
    }

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: "framed (requests and messages) or eof (one message per connection).")
    var mode: Mode = .framed

    @Option(
        name: .long,
        help: ArgumentHelp("The socket file's permissions, in octal, whatever the umask.", valueName: "mode"))
    var permissions: String = "0600"

    @Flag(name: .long, help: "Create the socket file's parent directory (mode 0700) if it is missing.")
    var createParent = false

    @Option(name: .long, help: ArgumentHelp("The largest message accepted, in bytes.", valueName: "bytes"))
    var maxMessageSize: Int = 16 * 1024 * 1024

    @OptionGroup(title: "Who may connect")
    var access: AccessOptions

    @OptionGroup(title: "Limits")
    var limits: LimitOptions

    @Option(
        name: .long,
        help: ArgumentHelp("What to log on standard error: trace, debug, info, notice, warning, error or critical.")
    )
    var logLevel: Logger.Level = .notice

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        _ = try parsePermissions(self.permissions)
        guard self.maxMessageSize >= 1 else { throw ValidationError("--max-message-size must be at least 1") }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: true)
        var configuration = ServerConfiguration(path: path)
        configuration.mode = try parsePermissions(self.permissions)
        configuration.createParentDirectory = self.createParent
        configuration.connection.maximumMessageSize = self.maxMessageSize
        configuration.authorization = self.access.policy
        configuration.requiresSecureParentDirectory = !self.access.allowInsecureDirectory
        self.limits.apply(to: &configuration)
        var logger = Logger(label: "socket-ipc")
        logger.logLevel = self.logLevel
        let server = Self.makeServer(configuration: configuration, mode: self.mode, logger: logger)
        let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }

    /// The server `serve` runs: it prints `listening on PATH` once it accepts connections.
    static func makeServer(configuration: ServerConfiguration, mode: Mode, logger: Logger) -> Server {
        let onRunning: @Sendable (SocketPath) async -> Void = { Output.line("listening on \($0)") }
        switch mode {
        case .framed:
            let router = DemoService.router()
            return Server.framed(configuration: configuration, logger: logger, onServerRunning: onRunning) {
                PrintingEchoHandler(router: router)
            }
        case .eof:
            return Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onRunning,
                handler: .onEventLoop(maximumSize: configuration.connection.maximumMessageSize) { message, _ in
                    Output.line("received \(message.readableBytes) bytes")
                    return countAcknowledgement(message.readableBytes)
                }
            )
        }
    }
}

/// The acknowledgement of an EOF-style message: the 4-byte big-endian count of bytes received.
///
/// ```
/// +--------+--------+--------+--------+
/// |   count of message bytes (UInt32) |
/// +--------+--------+--------+--------+
/// ```
func countAcknowledgement(_ count: Int) -> ByteBuffer {
    var acknowledgement = ByteBuffer()
    acknowledgement.writeInteger(UInt32(truncatingIfNeeded: count))
    return acknowledgement
}

/// The handler of `serve --mode framed`: prints one-way messages, echoes requests, and serves `router`'s methods.
struct PrintingEchoHandler: ConnectionHandler {
    /// The methods served besides the echo (a ``ServiceConnectionHandler`` would refuse raw requests).
    let router: ServiceRouter

    func connectionDidOpen(_ connection: Connection) {
        ServiceConnectionHandler(router: self.router).connectionDidOpen(connection)
    }

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("message \(message.readableBytes) bytes: \(describe(message))")
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

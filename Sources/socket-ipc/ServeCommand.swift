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
            framed: echoes every request and prints every one-way message. eof: prints each message's size and \
            acknowledges it with the 4-byte big-endian count of bytes received. Prints `listening on PATH` once \
            connections are accepted; SIGINT or SIGTERM shut down gracefully and remove the socket file.
            """
    )

    /// The two kinds of server.
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case framed, eof
    }

    @Option(name: .long, help: "The socket file's path.")
    var socket: String

    @Option(name: .long, help: "framed (requests and messages) or eof (one message per connection).")
    var mode: Mode = .framed

    @Option(name: .long, help: "The socket file's permissions, in octal.")
    var permissions: String = "0600"

    @Flag(name: .long, help: "Create a missing parent directory (mode 0700).")
    var createParent = false

    @Option(name: .long, help: "The largest message accepted, in bytes.")
    var maxMessageSize: Int = 16 * 1024 * 1024

    func run() async throws {
        var configuration = ServerConfiguration(path: self.socket)
        configuration.mode = try parsePermissions(self.permissions)
        configuration.createParentDirectory = self.createParent
        configuration.connection.maximumMessageSize = self.maxMessageSize
        var logger = Logger(label: "socket-ipc")
        logger.logLevel = .warning
        let server = Self.makeServer(configuration: configuration, mode: self.mode, logger: logger)
        let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await reportingErrors { try await group.run() }
    }

    static func makeServer(configuration: ServerConfiguration, mode: Mode, logger: Logger) -> Server {
        let onRunning: @Sendable (SocketPath) async -> Void = { Output.line("listening on \($0)") }
        switch mode {
        case .framed:
            return Server.framed(configuration: configuration, logger: logger, onServerRunning: onRunning) {
                PrintingEchoHandler()
            }
        case .eof:
            let maximum = configuration.connection.maximumMessageSize
            return Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onRunning,
                handler: .onEventLoop(maximumSize: maximum) { message, _ in
                    Output.line("received \(message.readableBytes) bytes")
                    var acknowledgement = ByteBuffer()
                    acknowledgement.writeInteger(UInt32(truncatingIfNeeded: message.readableBytes))
                    return acknowledgement
                }
            )
        }
    }
}

/// Prints one-way messages and echoes requests.
struct PrintingEchoHandler: ConnectionHandler {
    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("message \(message.readableBytes) bytes: \(describe(message))")
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import SocketIPC
import UnixSignals

/// `socket-ipc listen`: a server that prints every message it receives, or with `--connect` a client that prints
/// every message its server pushes.
struct ListenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "listen",
        abstract: "Print every message that arrives: as a server, or with --connect as a client of one.",
        discussion: """
            Serves on PATH (framed by default, --mode eof for one message per connection) and prints each message \
            on standard output: a line of metadata (the time in UTC, the kind: message, request or eof, the size, \
            the sender's uid, gid and pid, the connection's number), then the payload, each of its lines indented by \
            two spaces (so that no payload can pass for a metadata line). Framed requests get an empty \
            reply, so that a requester never waits; EOF-style messages are acknowledged with the 4-byte big-endian \
            count of bytes received, as `serve --mode eof` does. Output is written from a queue, so a reader that \
            stops reading (a paused `| less`) never holds up the server: beyond 16 MiB waiting, lines are dropped, \
            and standard error says how many once the reader catches up; on SIGINT or SIGTERM, output that a \
            reader has left unread for 2 s is given up, and counted there too, while with --count listen waits for \
            its reader as long as it takes. (With --connect, a reader that stops reading holds up the connection \
            instead.)

            --format text (the default) prints printable UTF-8 as it is and escapes everything else (ESC is \
            \\x1b, a backslash is doubled), and a payload that is not UTF-8 as a hex dump: no payload can act on \
            your terminal. --format hex prints an xxd-style dump. --format json prints one object per message on \
            one line (time, kind, size, connection, peer {pid, uid, gid}, payload, encoding: utf8, or base64 for a \
            payload that is not printable UTF-8) and no metadata line.

            Notes go to standard error: `listening on PATH`, and each connection opened and closed with the peer's \
            uid and pid. --count N exits 0 after N messages. SIGINT, SIGTERM or SIGHUP (unless ignored) shut the server down gracefully and \
            remove the socket file (exit 0); a second one stops it at once.

            With --connect, connects to the framed server on PATH and prints every message it pushes (and every \
            request it sends, answered with an empty reply), until the server closes the connection (exit 0 when it \
            went away gracefully, 3 when the connection was lost), --count N messages, or SIGINT or SIGTERM (exit \
            0). The server options (permissions, access, limits but --max-message-size) do not apply then.

            Examples:
              socket-ipc listen ./app.sock &
              socket-ipc send ./app.sock hello
              socket-ipc listen --mode eof --format hex ./log.sock &
              printf hi | nc -N -U ./log.sock
              socket-ipc listen --format json --count 1 ./app.sock | jq .payload
              socket-ipc listen --connect ./daemon.sock    # what the daemon pushes

            \(ExitStatus.help)
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: "framed (messages and requests) or eof (one message per connection).")
    var mode: ServeCommand.Mode = .framed

    @Option(name: .long, help: "How to print each message: text, hex or json.")
    var format: MessageFormat = .text

    @Option(name: .long, help: ArgumentHelp("Exit after this many messages.", valueName: "n"))
    var count: Int?

    @Flag(name: .long, help: "Connect to a framed server on PATH and print what it pushes, instead of serving.")
    var connect = false

    @OptionGroup
    var server: ServerOptions

    @OptionGroup(title: "Server's user")
    var trust: ServerTrustOptions

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        if let count = self.count, count < 1 { throw ValidationError("--count must be at least 1") }
        if self.connect && self.mode == .eof {
            throw ValidationError("--connect is a framed client: an EOF-style server pushes nothing; drop --mode eof")
        }
    }

    func run() async throws {
        self.output.apply()
        let printer = MessagePrinter(format: self.format, limit: self.count)
        let logger = self.server.logger
        if self.connect {
            let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
            var configuration = ClientConfiguration()
            configuration.trustedServerUserIDs = self.trust.trustedServerUserIDs
            if let size = self.server.limits.maxMessageSize { configuration.connection.maximumMessageSize = size }
            if let count = self.server.limits.maxDescriptors {
                configuration.connection.maximumDescriptorsPerMessage = count
            }
            // A frozen server holds no listener for ever: pinged as `call` and `watch` ping theirs, unless the
            // keepalive options say otherwise.
            configuration.connection.keepaliveInterval =
                self.server.limits.keepaliveInterval.map { duration(seconds: $0) } ?? CallArguments.keepaliveInterval
            configuration.connection.keepaliveTimeout =
                self.server.limits.keepaliveTimeout.map { duration(seconds: $0) } ?? CallArguments.keepaliveInterval
            Output.watchForReaderGone()
            try await PushListener(path: path, configuration: configuration, printer: printer, logger: logger).run()
        } else {
            // A server's event loops print: they must not wait for a reader of standard output.
            Output.writeWithoutWaiting()
            // The socket's setup and the server's start: a failure there exits 73 (EX_CANTCREAT).
            let started = ServingStarted()
            try await ServingFailure.reporting(started) {
                let path = try socketPath(fromArgument: self.socket, creatingDirectory: true)
                let configuration = try self.server.configuration(path: path)
                try await Self.serve(
                    configuration: configuration, mode: self.mode, printer: printer, started: started, logger: logger)
            }
        }
    }

    /// Serves until SIGINT or SIGTERM, or until `printer` has printed its last message; then shuts down gracefully.
    static func serve(
        configuration: ServerConfiguration,
        mode: ServeCommand.Mode,
        printer: MessagePrinter,
        started: ServingStarted = ServingStarted(),
        logger: Logger
    ) async throws {
        let (limit, limitReached) = AsyncStream.makeStream(of: Void.self)
        let onLimit: @Sendable () -> Void = { limitReached.finish() }
        let onRunning: @Sendable (SocketPath) async -> Void = {
            started.markStarted()
            Output.note("listening on \(SafeText.oneLine("\($0)"))")
        }
        let server: Server
        switch mode {
        case .framed:
            server = Server.framed(configuration: configuration, logger: logger, onServerRunning: onRunning) {
                ListeningHandler(printer: printer, limitReached: onLimit, notes: .serverConnection)
            }
        case .eof:
            server = Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onRunning,
                handler: .onEventLoop(maximumSize: configuration.connection.maximumMessageSize) { message, context in
                    ConnectionLog.opened(context.connectionID, peer: context.peer)
                    let received = ReceivedMessage(
                        message, kind: .eof, peer: context.peer, connectionID: context.connectionID)
                    // The shutdown that `onLimit` starts lets this connection write its acknowledgement first.
                    if printer.print(received) { onLimit() }
                    return countAcknowledgement(message.readableBytes)
                }
            )
        }
        // The signals are ShutdownSignals.run's: the first shuts down gracefully, the second at once.
        let group = ServiceGroup(services: [server], logger: logger)
        // Shuts the server down, as SIGTERM would, once the last message is printed; cancelled (and then harmless)
        // when the group ends otherwise.
        let stopper = Task {
            for await _ in limit {}
            await group.triggerGracefulShutdown()
        }
        defer { stopper.cancel() }
        // Standard output's reader gone (`listen | head -1`), or a write to it failed (`listen > /dev/full`): the
        // server stops at once, removing its socket file, and the command then ends as SIGPIPE would have ended it
        // (status 74 after a failed write).
        let (readerGone, readerGoneNow) = AsyncStream.makeStream(of: Void.self)
        Output.onReaderGone { readerGoneNow.finish() }
        Output.watchForReaderGone()
        do {
            try await ShutdownSignals.run(group, stoppingAtSecondOf: ShutdownSignals.server, orWhen: readerGone) { signal in
                Output.note("a second shutdown signal (\(signal)): stopping now, without the rest of the grace period")
            }
        } catch where Output.readerHasGone {
            // The server's stop failed after the reader went: the command still ends as SIGPIPE would.
        }
        if Output.readerHasGone {
            // Standard error's queued notes first (what was queued for standard output is dropped: no one reads it,
            // or it cannot be written).
            Output.finish()
            Output.endAfterStandardOutputLost()
        }
        // Not the last message printed: SIGINT, SIGTERM or SIGHUP.
        if !printer.reachedLimit { Output.stoppedBySignal() }
    }
}

import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import SocketIPC
import UnixSignals

/// `socket-ipc serve`: a server on a socket file until SIGINT, SIGTERM or SIGHUP.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve on a socket file until interrupted.",
        discussion: """
            framed: echoes every request (the reply is the request's payload) and prints every one-way message as \
            `message N bytes: TEXT-OR-HEX`; echoes of 64 KiB or more not yet read by their clients hold at most \
            64 MiB per user, and a request beyond gets an error reply. eof: prints `received N bytes` for each message and acknowledges it \
            with the 4-byte big-endian count of bytes received.

            A framed server also serves a small typed service, for `socket-ipc call` and `socket-ipc watch` to \
            try: \(DemoService.summary)

            --exec CMD: each request and each EOF-style message is piped to `/bin/sh -c CMD`, one process per \
            message, and its standard output is the reply (the acknowledgement); a non-zero exit is an error reply \
            with the first 4 KiB of its standard error as text (an EOF-style connection is closed without an \
            acknowledgement). Output over --max-message-size, or a run longer than --exec-timeout, kills the \
            command (its process group) and is an error too. One-way messages run CMD as well, in order, and its \
            output is dropped. CMD gets the peer's identity as ucspi-unix's unixserver gives it: PROTO=UNIX, \
            UNIXREMOTEPID, UNIXREMOTEEUID, UNIXREMOTEEGID, and UNIXLOCALPATH, UNIXLOCALPID, UNIXLOCALUID, \
            UNIXLOCALGID for the server; SOCKETIPC_KIND is request, message or eof. The demo service is not served.

            At most --exec-concurrency commands run at once across the server (default: twice the CPU count, at \
            least 4), and 8 descriptors for each are kept back from the connections; requests, one-way and EOF-style messages beyond it wait their turn, shared fairly between users \
            (turns go round the users who wait; each user's in the order they came), and --exec-timeout counts from \
            the start of the run. A request that waits is dropped when its connection \
            closes, and one whose user's requests waiting or running and replies its clients have not read yet \
            already hold 64 MiB (each request counted as at least 4 KiB) gets an error reply at once; an EOF-style connection is closed without an acknowledgement when its \
            user's messages waiting or running and acknowledgements not yet read already hold 64 MiB; a framed connection reads nothing more while it has --max-concurrent-requests requests \
            unanswered. A connection's one-way messages run one after another, also after it closes; a connection \
            with 16 of them queued or running that sends one more is closed (`closing connection N: ...` on \
            standard error), and so is one whose user's messages queued or running already hold 64 MiB (each counted as at least 4 KiB). On SIGINT or SIGTERM the one-way messages still queued are dropped, and the commands \
            running get the --shutdown-grace-period before their process groups are killed.

            Prints `listening on PATH` once the socket accepts connections, and notes each connection on standard \
            error: `connection from uid=U gid=G pid=P (connection N)` and `connection closed from ...` (an \
            EOF-style connection only `connection from`, once its message has arrived). SIGINT, SIGTERM or SIGHUP (unless ignored, as under nohup) shut the server down \
            gracefully: requests in flight finish, clients are told, and the socket file is removed; a second one stops \
            it at once, without the rest of the grace period. A stale \
            socket file (its server was killed) is replaced; a live server's is never touched. The socket file is \
            owned by the server's user and group: the library has no option to give it another. Output is written \
            from a queue, so a reader that stops reading (a paused `| less`) never holds up the server: beyond 16 MiB \
            waiting, lines are dropped, and standard error says how many once the reader catches up; on SIGINT or \
            SIGTERM, output that a reader has left unread for 2 s is given up, and counted there too.

            Socket activation: started by a service manager that passes a listening socket (systemd's \
            LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES), serve serves that socket, PATH is not needed, and the \
            socket file is left to the manager (not created, changed, locked or removed). Try it with \
            `systemd-socket-activate -l /tmp/app.sock socket-ipc serve`: the first client's connect starts the \
            server. @name is an address in Linux's abstract namespace: no file, so no --permissions, and any \
            process in the network namespace may connect, so --allow-anyone there means exactly that.

            Examples:
              socket-ipc serve ./app.sock
              socket-ipc serve ./app.sock --exec 'tr a-z A-Z' &
              socket-ipc request ./app.sock hi                 # reply: "HI"
              socket-ipc serve --mode eof ./log.sock \\
                  --exec 'logger -t "uid $UNIXREMOTEEUID"'
            """
    )

    /// The two kinds of server.
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        /// SocketIPC's framed protocol: messages and requests, many per connection.
        case framed
        /// One message per connection, ended by the client's half-close.
        case eof
    }

    @Argument(
        help: ArgumentHelp(
            socketArgumentHelp.abstract + " Optional under socket activation (LISTEN_FDS), which passes the socket.",
            valueName: "path"
        )
    )
    var socket: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Under socket activation, serve the inherited socket of this name (LISTEN_FDNAMES, systemd's "
                + "FileDescriptorName=) instead of the first.",
            valueName: "name"
        )
    )
    var fdName: String?

    @Option(name: .long, help: "framed (requests and messages) or eof (one message per connection).")
    var mode: Mode = .framed

    @Option(
        name: .long,
        help: ArgumentHelp("Pipe each message to `/bin/sh -c CMD`; its standard output is the reply.", valueName: "cmd")
    )
    var exec: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Kill a --exec command that runs longer than this.", valueName: "seconds")
    )
    var execTimeout: Double = 30

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most --exec commands running at once across the server; more wait their turn (default: twice the "
                + "CPU count, at least 4).",
            valueName: "n"
        )
    )
    var execConcurrency: Int?

    @OptionGroup
    var server: ServerOptions

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        guard self.execTimeout > 0 else { throw ValidationError("--exec-timeout must be a positive number of seconds") }
        if let exec = self.exec, exec.isEmpty { throw ValidationError("--exec needs a command") }
        if let limit = self.execConcurrency, limit < 1 {
            throw ValidationError("--exec-concurrency must be at least 1")
        }
    }

    func run() async throws {
        self.output.apply()
        // A server's event loops print: they must not wait for a reader of standard output.
        Output.writeWithoutWaiting()
        Output.outlivesStandardOutput()
        // The socket's setup and the server's start: a failure there exits 73 (EX_CANTCREAT).
        let started = ServingStarted()
        let oneWayRuns = OneWayRuns()
        try await ServingFailure.reporting(started) {
            let inherited = try self.inheritedSocket()
            guard inherited != nil || self.socket != nil else {
                throw UsageError(message: "give the socket's PATH (or start serve by socket activation, which passes LISTEN_FDS)")
            }
            let path =
                try inherited?.address ?? self.socket.map { try socketPath(fromArgument: $0, creatingDirectory: true) } ?? ""
            var configuration = try self.server.configuration(path: path, inheritedSocket: inherited)
            let logger = self.server.logger
            let execConcurrency = self.execConcurrency ?? ExecTurns.defaultLimit
            if self.exec != nil {
                // Each command running holds descriptors of its own: kept back from the connections, or at a low open
                // file limit the connections took them and commands failed to start (found by a review: with
                // `prlimit --nofile=64`, most of two flooding users' requests got `pipe2: Too many open files`).
                let (reserved, overflows) = ExecProcess.descriptorsPerRun.multipliedReportingOverflow(by: execConcurrency)
                configuration.reservedDescriptors = overflows ? .max : reserved
            }
            let exec = self.exec.map {
                ExecCommand(
                    command: $0,
                    timeout: duration(seconds: self.execTimeout),
                    maximumOutput: configuration.connection.maximumMessageSize,
                    socketPath: path,
                    turns: ExecTurns(limit: execConcurrency)
                )
            }
            let server = Self.makeServer(
                configuration: configuration, mode: self.mode, exec: exec, oneWayRuns: oneWayRuns, started: started,
                logger: logger)
            let gracePeriod = configuration.shutdownGracePeriod
            // Listed last, the one-way runs hear of the shutdown first: their queue is dropped while the server drains.
            let group = ServiceGroup(
                services: [server, OneWayRunsShutdown(runs: oneWayRuns, gracePeriod: gracePeriod)],
                // The signals are ShutdownSignals.run's: the first shuts down gracefully, the second at once.
                logger: logger
            )
            // The one-way runs still running when the server has drained get the rest of the grace period, and a
            // second signal meanwhile still ends them.
            try await ShutdownSignals.run(
                group,
                stoppingAtSecondOf: ShutdownSignals.server,
                afterwards: { await oneWayRuns.finish(gracePeriod: gracePeriod) }
            ) { signal in
                Output.note("a second shutdown signal (\(signal)): stopping now, without the rest of the grace period")
                oneWayRuns.stopNow()
            }
        }
        // Only SIGINT, SIGTERM or SIGHUP end a server that ran.
        Output.stoppedBySignal()
    }

    /// The listening socket passed by socket activation (`LISTEN_FDS` for this process), the one named `--fd-name` if
    /// given; `nil` without socket activation. The variables are removed, so that `--exec` commands do not see them.
    /// - Throws: `ValidationError` when `--fd-name` names no inherited socket; ``SocketIPCError`` for malformed
    ///   variables.
    private func inheritedSocket() throws -> InheritedSocket? {
        let sockets = try SocketActivation.listeningSockets()
        guard let name = self.fdName else { return sockets.first }
        guard let socket = sockets.first(where: { $0.name == name }) else {
            let names = sockets.map(\.name).joined(separator: ", ")
            throw UsageError(message: "no inherited socket is named \(name) (LISTEN_FDNAMES: \(names.isEmpty ? "none" : names))")
        }
        return socket
    }

    /// The server `serve` runs: it prints `listening on PATH` once it accepts connections.
    static func makeServer(
        configuration: ServerConfiguration,
        mode: Mode,
        exec: ExecCommand? = nil,
        oneWayRuns: OneWayRuns = OneWayRuns(),
        started: ServingStarted = ServingStarted(),
        logger: Logger
    ) -> Server {
        let onRunning: @Sendable (SocketPath) async -> Void = {
            started.markStarted()
            Output.line("listening on \(SafeText.oneLine("\($0)"))")
        }
        let maximumSize = configuration.connection.maximumMessageSize
        switch (mode, exec) {
        case (.framed, nil):
            let router = DemoService.router()
            // One budget for the server: it counts each user's echoes across all of its connections.
            let unreadReplies = UserByteBudget(limit: PrintingEchoHandler.unreadRepliesPerUser, minimum: 0)
            return Server.framed(configuration: configuration, logger: logger, onServerRunning: onRunning) {
                PrintingEchoHandler(router: router, unreadReplies: unreadReplies)
            }
        case (.framed, let exec?):
            // One budget for the server: it counts each user's requests across all of its connections.
            let requestBytes = UserByteBudget(limit: ExecHandler.requestBytesPerUser, minimum: OneWayRuns.minimumBytesPerRun)
            return Server.framed(configuration: configuration, logger: logger, onServerRunning: onRunning) {
                ExecHandler(exec: exec, oneWayRuns: oneWayRuns, requestBytes: requestBytes)
            }
        case (.eof, nil):
            return Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onRunning,
                handler: .onEventLoop(maximumSize: maximumSize) { message, context in
                    ConnectionLog.opened(context.connectionID, peer: context.peer)
                    Output.line("received \(message.readableBytes) bytes")
                    return countAcknowledgement(message.readableBytes)
                }
            )
        case (.eof, let exec?):
            let handler = EOFExecHandler(exec: exec)
            return Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onRunning,
                handler: .collecting(maximumSize: maximumSize) { try await handler.handle($0, context: $1) }
            )
        }
    }
}

import ArgumentParser
import Foundation
import NIOCore
import SocketIPC
import Synchronization

/// `socket-ipc send`: one message, EOF-style or framed one-way.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send one message, EOF-style or as a framed one-way message.",
        discussion: """
            With --eof: connects, writes MESSAGE (or standard input, streamed as it comes, when MESSAGE is \
            omitted), half-closes, and prints the server's acknowledgement: `ack: N` for a 4-byte count, the text \
            or hex of anything else, or `no acknowledgement`. It exits 3 with `error: ...` when the message was not \
            delivered (the server closed the connection before it had read all of it: the message is over its \
            maximum, its policy refused you, or it is at its connection limit or shutting down), and when the \
            server turns out to be a framed one ("this is a framed server ... drop --eof"). (An empty message has no \
            bytes left unread to tell a refusal by: it cannot be told from one delivered.) A large message shows a \
            progress bar on a terminal (never when standard error is piped, nor with --quiet).

            Without --eof: connects to a framed server, sends MESSAGE (or all of standard input) as one one-way \
            message, and prints `sent N bytes` once the server has read it (it answers a ping sent after the \
            message), or once the socket has taken it when the server cannot tell (a version-1 server without \
            pings, or one that goes away meanwhile). A message the server refuses (over its maximum size, \
            descriptors it cannot take: exit 1) is reported as such. With --fd FILE (repeatable), the \
            message carries FILE's descriptor, opened read-only (SCM_RIGHTS); the server must accept descriptors \
            (`serve` or `listen` with --max-descriptors), which print what each one is; one that takes none is a \
            refusal (exit status 4).

            With --json the result is one JSON object: {"style":"eof","sent":N,"acknowledgement":{"count":N}} (or \
            the acknowledgement's bytes as {"payload":TEXT,"encoding":"utf8"} or "base64"), or \
            {"style":"framed","sent":N}.

            Examples:

              socket-ipc send --eof /tmp/app.sock 'hello'
              socket-ipc send --eof /tmp/app.sock @big.iso          # streams the file, with a progress bar
              tar c dir | socket-ipc send --eof --quiet /tmp/app.sock
              socket-ipc send /tmp/app.sock '{"event":"reload"}'      # a framed one-way message
              socket-ipc send --json --timeout 5 /tmp/app.sock @msg.json
              socket-ipc send --fd /var/log/app.log /tmp/app.sock 'rotate'   # passes the open file

            \(ExitStatus.help)
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Flag(name: .long, help: "Send EOF-style (one message per connection, ended by a half-close) instead of framed.")
    var eof = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds the whole send may take, from connecting to the acknowledgement and printing it (default: no "
                + "limit).",
            valueName: "seconds"
        )
    )
    var timeout: Double?

    @Flag(name: .long, help: "Print the result as one JSON object.")
    var json = false

    @Option(
        name: .customLong("fd"),
        help: ArgumentHelp(
            "Pass this file's descriptor, opened read-only, with the framed message (repeatable).",
            valueName: "file"
        )
    )
    var descriptorFiles: [String] = []

    @Argument(help: "The message; @FILE reads it from a file; standard input when omitted or -.")
    var message: String?

    @OptionGroup(title: "Server's user")
    var trust: ServerTrustOptions

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        if let timeout = self.timeout, !(timeout > 0) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
        if self.eof && !self.descriptorFiles.isEmpty {
            throw ValidationError("--fd passes descriptors with a framed message; EOF-style messages carry none")
        }
        if self.descriptorFiles.count > 253 {
            throw ValidationError("at most 253 --fd files travel with one message (the kernel's SCM_MAX_FD)")
        }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let source = MessageSource(argument: self.message)
        let timeout = self.timeout.map { duration(seconds: $0) }
        // --timeout covers printing the result too, as for request, call and watch.
        let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
        let json = self.json
        if self.eof {
            let phase = ConnectionPhase()
            // Cut short once connected, the message may still reach the server: a close ends it as a half-close would.
            let what = "the message to \(path) was not acknowledged"
            let mayHaveArrived =
                " (what was written may reach the server as a whole, shorter message: an EOF-style server cannot tell a "
                + "message cut short, PROTOCOL.md)"
            let (sent, acknowledgement) = try await Self.noConnectionIfNot(phase, to: path, within: timeout, framed: false) {
                do {
                    return try await withDeadline(timeout, what, onExpiry: phase.deadlinePassed) {
                        try await Self.sendEOF(
                            from: source, to: path, connectTimeout: timeout, trusting: self.trust.trustedServerUserIDs,
                            phase: phase)
                    }
                } catch let error as SocketIPCError where error.code == .timedOut && !phase.timedOutConnecting
                    && error.message.hasPrefix(what)
                {
                    throw SocketIPCError(.timedOut, error.message + mayHaveArrived, path: path)
                }
            }
            if json {
                try Output.json(
                    ["style": "eof", "sent": sent, "acknowledgement": Self.acknowledgementJSON(acknowledgement)],
                    by: deadline)
            } else {
                try Output.line(Self.describeAcknowledgement(acknowledgement), by: deadline)
            }
        } else {
            let files = try self.descriptorFiles.map { try PassedFile(path: $0) }
            defer { for file in files { file.close() } }
            let configuration = {
                var configuration = ClientConfiguration()
                configuration.connection.maximumDescriptorsPerMessage = files.count
                configuration.trustedServerUserIDs = self.trust.trustedServerUserIDs
                // The hello may not take longer than the whole send may.
                if let timeout { configuration.connectTimeout = min(configuration.connectTimeout, timeout) }
                // A server that reads nothing and answers nothing (frozen, or silent on purpose) holds no send for
                // ever, with or without --timeout, as for call and watch (found by a review: a send of 5 MB to a
                // server that read nothing waited for good).
                configuration.connection.keepaliveInterval = CallArguments.keepaliveInterval
                configuration.connection.keepaliveTimeout = CallArguments.keepaliveInterval
                return configuration
            }()
            let phase = ConnectionPhase()
            let sent = try await Self.noConnectionIfNot(phase, to: path, within: timeout, framed: true) {
                try await withDeadline(timeout, "the message to \(path) was not sent", onExpiry: phase.deadlinePassed) {
                    let payload = try await source.readAll()
                    phase.connecting()
                    try await HelloHint.whileConnecting(to: path) { connected in
                        try await Client.withConnection(to: path, configuration: configuration) { connection in
                            connected()
                            phase.connected()
                            // Queued without waiting for room: waitUntilWritten below waits for the socket to take
                            // it, and gives up on a server that takes none of it for a close timeout, where send's
                            // wait for room had no end with a server that reads nothing and answers no ping (found
                            // by hand: a version-1 hello without the calls flag, 8 MB, waited for good).
                            if files.isEmpty {
                                _ = try connection.queueMessage(payload)
                            } else {
                                guard connection.passesDescriptors else {
                                    throw CommandFailure(
                                        message: "the server at \(path) does not accept descriptors (start it with "
                                            + "--max-descriptors \(files.count) or more)",
                                        status: ExitStatus.refused
                                    )
                                }
                                _ = try connection.queueMessage(payload, descriptors: files.map(\.descriptor))
                            }
                            // "sent" only once the socket has all of it: the close after this flushes for at most
                            // its close timeout and then drops the rest.
                            try await connection.waitUntilWritten()
                            // And once the server has read it: its pong to a ping sent after the message comes only
                            // then, and a server that refused it (over its maximum, descriptors it could not take)
                            // closes with a going-away frame that says why instead (found by a review: `sent`, exit
                            // 0, for a message the server dropped as too large). A version-1 server without pings
                            // tells nothing more, nor does one that went away meanwhile (`listen --count 1` once it
                            // has the message): the message was written, as before.
                            do {
                                _ = try await connection.waitUntilPeerHasRead()
                            } catch let error as SocketIPCError where error.code == .peerGoingAway {
                                _ = error
                            }
                        }
                    }
                    return payload.readableBytes
                }
            }
            if json {
                try Output.json(["style": "framed", "sent": sent], by: deadline)
            } else {
                try Output.line("sent \(sent) bytes", by: deadline)
            }
        }
    }

    /// How far a send got when its `--timeout` passed: reading its input, connecting (the server had not accepted,
    /// or sent no hello), or connected. The deadline notes it as it passes, so that a cancelled connect that
    /// completes afterwards does not change the answer.
    final class ConnectionPhase: Sendable {
        /// 0: before connecting; 1: connecting; 2: connected; 3: the deadline passed while connecting.
        private let state = Atomic<UInt8>(0)

        /// The connect begins.
        func connecting() { _ = self.state.compareExchange(expected: 0, desired: 1, ordering: .relaxed) }

        /// The connection is made (a framed server's hello came; an EOF-style server accepted).
        func connected() { _ = self.state.compareExchange(expected: 1, desired: 2, ordering: .relaxed) }

        /// The deadline passed: noted if it passed while connecting.
        @Sendable func deadlinePassed() { _ = self.state.compareExchange(expected: 1, desired: 3, ordering: .relaxed) }

        /// Whether the deadline passed while connecting.
        var timedOutConnecting: Bool { self.state.load(ordering: .relaxed) == 3 }
    }

    /// Runs `body`; a `--timeout` that passed while connecting (``ConnectionPhase``) becomes the no-connection error
    /// of ``Diagnosis/isNoConnection(_:)`` (exit 3), not a timeout once connected (exit 5): the library's own connect
    /// timeout, which ends at the same time, would say the same. One that passed while the input was read is a
    /// timeout (nothing was sent).
    private static func noConnectionIfNot<Result>(
        _ phase: ConnectionPhase,
        to path: String,
        within timeout: Duration?,
        framed: Bool,
        _ body: () async throws -> Result
    ) async throws -> Result {
        do {
            return try await body()
        } catch let error as SocketIPCError where error.code == .timedOut && phase.timedOutConnecting {
            guard !Diagnosis.isNoConnection(error) else { throw error }
            throw SocketIPCError(
                .timedOut,
                "the server at \(path) did not accept within \(timeout.map(formatSeconds) ?? "the time") (--timeout)"
                    + (framed ? ", or sent no hello: it is stopped or swamped, or not a framed SocketIPC server" : ": it is stopped or swamped"),
                path: path,
                cause: ConnectionNotMade.notAccepted
            )
        }
    }

    /// Streams `source` to the EOF-style server at `path`, with a progress bar on a terminal.
    /// - Returns: How many bytes were sent, and the acknowledgement.
    static func sendEOF(
        from source: MessageSource,
        to path: String,
        connectTimeout: Duration? = nil,
        trusting trustedServerUserIDs: Set<UInt32>? = nil,
        phase: ConnectionPhase? = nil
    ) async throws -> (Int, ByteBuffer) {
        try await source.withChunks { chunks, total in
            let progress = ProgressBar(total: total, label: "sending")
            defer { progress.finish() }
            var sent = 0
            phase?.connecting()
            let acknowledgement = try await Client.sendMessage(
                to: path,
                connectTimeout: connectTimeout ?? .seconds(10),
                trustedServerUserIDs: trustedServerUserIDs,
                // A server that takes none of the message for a close timeout holds no send for ever, with or without
                // --timeout, as a framed send (found by hand: an EOF-style server that accepted and read nothing
                // held send --eof for good).
                stallTimeout: ConnectionOptions().closeTimeout
            ) { writer in
                phase?.connected()
                for try await chunk in chunks {
                    try await writer.write(chunk)
                    sent += chunk.readableBytes
                    progress.advance(by: chunk.readableBytes)
                }
            }
            return (sent, acknowledgement)
        }
    }

    /// The acknowledgement as JSON: `{"count": N}` for a 4-byte big-endian count, else the payload's JSON form.
    static func acknowledgementJSON(_ acknowledgement: ByteBuffer) -> [String: Any] {
        if acknowledgement.readableBytes == 4,
            let count = acknowledgement.getInteger(at: acknowledgement.readerIndex, as: UInt32.self)
        {
            return ["count": count]
        }
        return payloadJSON(acknowledgement)
    }

    /// `ack: N` for a 4-byte big-endian count, `no acknowledgement` for none, else `ack: ` and the bytes.
    static func describeAcknowledgement(_ acknowledgement: ByteBuffer) -> String {
        if acknowledgement.readableBytes == 4,
            let count = acknowledgement.getInteger(at: acknowledgement.readerIndex, as: UInt32.self)
        {
            return "ack: \(count)"
        }
        if acknowledgement.readableBytes == 0 { return "no acknowledgement" }
        return "ack: \(describe(acknowledgement))"
    }
}


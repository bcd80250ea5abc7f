import ArgumentParser
import Foundation
import Logging
import NIOCore
import SocketIPC

/// What `call` and `watch` share: the server, the method, the request as JSON, and the call's deadline.
struct CallArguments: ParsableArguments {
    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The call's deadline in seconds, from the start (default: none), printing included. It travels with the "
                + "call: the server's handler is cancelled when it passes. Without it a call may take as long as the "
                + "server needs, but a server that answers no keepalive ping (every 10 s) within 10 s is given up "
                + "(exit 3).",
            valueName: "seconds"
        )
    )
    var timeout: Double?

    @OptionGroup(title: "Server's user")
    var trust: ServerTrustOptions

    @Argument(help: "The method's name, such as demo.echo.")
    var method: String

    @Argument(
        help: ArgumentHelp(
            "The request as JSON; @FILE reads it from a file; standard input when omitted or -.",
            valueName: "json"
        )
    )
    var request: String?

    func validate() throws {
        if let timeout = self.timeout, !(timeout > 0) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
        guard (1...255).contains(self.method.utf8.count) else {
            throw ValidationError("the method's name must be 1 to 255 bytes of UTF-8")
        }
    }

    /// The request's bytes, from the argument, the file it names or standard input, as given.
    /// - Throws: ``UsageError`` when the file cannot be read or the bytes are not JSON (a top-level string, number,
    ///   `true`, `false` or `null` is JSON too), by RFC 8259's grammar, as responses are checked (``formatJSON(_:pretty:)``).
    func loadRequest() async throws -> ByteBuffer {
        let source = MessageSource(argument: self.request)
        let request = try await source.readAll()
        let bytes = Array(request.readableBytesView)
        guard String(validating: bytes, as: UTF8.self) != nil, JSONSyntax.isValid(bytes) else {
            let shown = bytes.isEmpty ? "nothing" : describe(ByteBuffer(bytes: bytes.prefix(64)))
            throw UsageError(message: "the request in \(source.name) is not JSON: \(shown)")
        }
        return request
    }

    /// How often `call` and `watch` ping the server, and how long they wait for its pong.
    static var keepaliveInterval: Duration { .seconds(10) }

    /// Connects to the server, bounded by `--timeout`, and runs `body` with the connection and what is left of the
    /// deadline.
    func withConnection<Result: Sendable>(
        _ body: (Connection, _ timeout: Duration?) async throws -> Result
    ) async throws -> Result {
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let timeout = self.timeout.map { duration(seconds: $0) }
        let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
        var configuration = ClientConfiguration()
        configuration.trustedServerUserIDs = self.trust.trustedServerUserIDs
        if let timeout { configuration.connectTimeout = min(configuration.connectTimeout, timeout) }
        // A server that stops answering (frozen, or silent on purpose) holds no call or watch for ever, with or
        // without --timeout: a ping every 10 s that gets no pong within 10 s ends the connection (exit 3).
        configuration.connection.keepaliveInterval = Self.keepaliveInterval
        configuration.connection.keepaliveTimeout = Self.keepaliveInterval
        // The connection's own notice of a missed pong would repeat, as a log line, the error this command prints.
        var logger = Logger(label: "socket-ipc.client")
        logger.logLevel = .warning
        return try await Client.withConnection(to: path, configuration: configuration, logger: logger) { connection in
            let left = deadline.map { max($0 - ContinuousClock.now, .nanoseconds(1)) }
            return try await body(connection, left)
        }
    }
}

/// The most bytes an indented response may take: 8 times the response and 1 MiB, at most 64 MiB (a 16 MiB
/// response indented three levels deep takes about 4.5 times its size; found by a review: 4 times left ordinary
/// shallow responses on one line).
func prettyLimit(forResponseOf size: Int) -> Int {
    min(8 * size + 1024 * 1024, 64 * 1024 * 1024)
}

/// JSON as `call` and `watch` print it: `bytes` on one line as they came, or laid out on one line when they span
/// several; with `pretty`, indented (``JSONLayout``). Strings, numbers and the order of keys stay as the server sent
/// them. Characters that could act on a terminal (C1 controls, bidirectional overrides: JSON lets them stand in
/// strings) are written as JSON escapes.
///
/// Time and memory are linear in the response's size, whatever its shape: a 16 MiB response takes a few times that
/// at most, and an indented one that would take more than ``prettyLimit(forResponseOf:)`` (deep nesting) is
/// printed on one line, with a note on standard error.
/// - Throws: `SocketIPCError` with code `invalidMessage` (exit status 1) for bytes that are not JSON: printed as they
///   came they could act on the terminal (an ESC sequence), and what reads the output expects JSON.
func formatJSON(_ bytes: ByteBuffer, pretty: Bool) throws -> String {
    // RFC 8259's grammar decides, then the bytes are laid out as they are: re-serializing with JSONSerialization took
    // about 60 times a response's size and up to a minute for 16 MiB (found by a review), reordered keys and refused
    // some JSON (`1e400`).
    let raw = Array(bytes.readableBytesView)
    guard let text = String(validating: raw, as: UTF8.self), JSONSyntax.isValid(raw) else {
        // Escaped where it is printed (Output.error).
        let preview = String(decoding: raw.prefix(200), as: UTF8.self)
        throw SocketIPCError(
            .invalidMessage,
            "the response is not JSON (\(raw.count) bytes): \(preview)" + (raw.count > 200 ? "…" : "")
        )
    }
    let laidOut: [UInt8]
    if pretty, let indented = JSONLayout.indented(raw, limit: prettyLimit(forResponseOf: raw.count)) {
        laidOut = indented
    } else if pretty || text.utf8.contains(where: { $0 == 0x0A || $0 == 0x0D }) {
        if pretty {
            Output.note(
                "socket-ipc: the response is printed on one line: indented, it would take more than "
                    + "\(prettyLimit(forResponseOf: raw.count)) bytes (deep nesting)")
        }
        laidOut = JSONLayout.oneLine(raw)
    } else {
        return SafeText.json(text)
    }
    return SafeText.json(String(decoding: laidOut, as: UTF8.self))
}

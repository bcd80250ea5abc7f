import ArgumentParser
import NIOCore
import SocketIPC
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How every `socket-ipc` command ends: an exit status for each kind of failure, so that a script can tell a
/// server's answer from a missing server, a refusal or a timeout.
///
/// | status | meaning |
/// | --- | --- |
/// | 0 | done (a server stream or `listen` interrupted by SIGINT or SIGTERM is done too) |
/// | 1 | the server answered with an error: an application error (``ServiceError``), a failed handler, a message it would not take (too large); or with a response that is not JSON (`call`, `watch`) |
/// | 3 | no connection: nothing listens (no socket file, a stale one, not a socket), not a SocketIPC server, the wrong message style, no connection in time (the server's backlog stayed full, so it did not accept; or no hello came: the server closed the connection or the wait for its hello ran out, whichever came first, as both are an EOF-style server's answer to a framed client), the connection lost |
/// | 4 | refused: the server's authorization policy does not serve this user (a framed server says so; an EOF-style server closes the connection without a word, which is 3), the file system denies access, or the client refuses a server that runs as another user than root or its own (`--trust-uid` trusts one) |
/// | 5 | timed out: `--timeout` passed once connected (a reply, a call, an acknowledgement, a send waiting for room, standard output that nobody reads); a server that does not accept or sends no hello in time is 3 |
/// | 6 | the server serves no method of that name |
/// | 73 | `serve`, `listen`: the socket cannot be served: another server serves on the path, something that is not a socket (a FIFO, a symbolic link, a file) is there, its directory is missing or not safe, or the file system refuses (`EX_CANTCREAT` of sysexits(3)) |
/// | 64 | usage: a bad option or argument, a request that is not JSON, a file that cannot be read (`EX_USAGE` of sysexits(3), as ArgumentParser's validation errors) |
/// | 74 | writing standard output failed (a full disk, an I/O error; `EX_IOERR` of sysexits(3)); a closed standard output ends the command as `SIGPIPE` does |
enum ExitStatus {
    static let remoteError = ExitCode(1)
    static let cannotConnect = ExitCode(3)
    static let refused = ExitCode(4)
    static let timedOut = ExitCode(5)
    static let unknownMethod = ExitCode(6)
    static let cannotServe = ExitCode(73)
    static let usage = ExitCode.validationFailure
    static let outputFailed = ExitCode(74)

    /// The table, for the commands' help.
    static let help = """
        Exit status: 0 done; 1 the server answered with an error (an application error, printed as `error CODE: \
        MESSAGE` and then its details as JSON on standard error; a handler that failed; a message too large); 3 no \
        connection (nothing listens, a stale socket file, not a socket, not a SocketIPC server, no hello in time, \
        the wrong style: --eof) or the connection was lost; 4 refused (the server's authorization policy, or file \
        permissions); 5 timed out (--timeout, once connected, also while nothing reads standard output); 6 no such method; 73 serve or listen cannot serve the socket (another server \
        serves on the path, something that is not a socket is there, an unsafe or missing directory); 64 usage (a bad option, a request that is not JSON, a socket path that cannot be one: too long for sun_path); 74 writing \
        standard output failed (a full disk).
        """

    /// The status for `error`.
    static func status(for error: SocketIPCError) -> ExitCode {
        switch error.code {
        case .unknownMethod:
            return Self.unknownMethod
        case .unauthorized:
            return Self.refused
        case .timedOut where Diagnosis.isNoConnection(error):
            // An EOF-style server closes a framed client's connection at its handshake timeout, 10 s by default, as
            // the client's own wait for the hello runs out: the same answer, whichever comes first. A server that
            // never accepts (its backlog full) made no connection either, as `probe` says (queueFull).
            return Self.cannotConnect
        case .deadlineExceeded, .timedOut:
            return Self.timedOut
        case .messageTooLarge where error.message.hasPrefix("received ") || error.message.hasPrefix("the peer announced"):
            // A frame from the server over this side's maximum: the server broke the protocol and the connection is
            // lost, as for any other bad frame (found by a review: it was reported as the server's answer, 1).
            return Self.cannotConnect
        case .invalidPath:
            // A socket path that cannot be one (too long for `sun_path`, empty, `@` alone): the argument's fault.
            return Self.usage
        case .connectionRefused, .parentDirectoryMissing, .insecureDirectory, .notSocketIPCPeer,
            .unsupportedVersion, .wrongStyle, .systemCall, .connectionClosed, .peerGoingAway, .peerNotResponding,
            .protocolViolation, .cancelled:
            // `cancelled`: the server cancelled the handler as it shut down.
            return Self.cannotConnect
        default:
            // remoteError, invalidMessage, resourceExhausted, messageTooLarge, …: the server's answer.
            return Self.remoteError
        }
    }

    /// The most characters of an application error's details printed: 4,096, about what the library keeps of a
    /// peer's error text.
    static let printedDetailsLimit = 4096

    /// Reports `error` on standard error in one line (two for an application error with details) and returns the
    /// exit status of the table; `nil` for an error that is not one of SocketIPC's (ArgumentParser reports those).
    static func report(_ error: any Error) -> ExitCode? {
        switch error {
        case let error as ServiceError:
            // `error CODE: MESSAGE`, as grpcurl prints a status (`ERROR: Code: ... Message: ...`).
            // The code, the message and the details are the server's: printed safely, each on one line.
            let text = error.message.isEmpty ? " \(error.code)" : " \(error.code): \(error.message)"
            Output.errorLine(Output.colored("error", 31, on: STDERR_FILENO) + SafeText.message(text))
            if let details = error.encodedDetails, details.readableBytes > 0 {
                // JSON details stay the same JSON value on one line, only characters that act on a terminal written
                // as JSON escapes (found by a review: escaping them as text doubled their backslashes, so that
                // `"say \"hi\""` was no longer JSON); anything else is escaped as text.
                // A raw newline, carriage return or tab in valid JSON is whitespace between tokens (in a string it
                // would be escaped): a space keeps the value and the line (found by a review: details that
                // JSONSerialization would not re-serialize, such as `1e400`, kept their line breaks).
                let text = (try? formatJSON(details, pretty: false)) ?? SafeText.oneLine(String(buffer: details))
                // By scalar: "\r\n" is one Character, which neither "\r" nor "\n" would match. Cut as a peer's texts
                // are (found by a review: 16 MiB of details were printed whole).
                var line = String.UnicodeScalarView()
                for scalar in text.unicodeScalars.prefix(Self.printedDetailsLimit) {
                    line.append(scalar.value < 0x20 ? " " : scalar)
                }
                let cut = line.count < text.unicodeScalars.count
                Output.errorLine(String(line) + (cut ? "… (cut: \(details.readableBytes) bytes of details in all)" : ""))
            }
            return Self.remoteError
        case let error as SocketIPCError:
            Output.error(Diagnosis.explain(error))
            return Self.status(for: error)
        case let error as UsageError:
            Output.error(error.message)
            return Self.usage
        case let failure as ServingFailure:
            Output.error(Diagnosis.explain(failure.error))
            return failure.error.code == .invalidPath ? Self.usage : Self.cannotServe
        case let error as CommandFailure:
            Output.error(error.message)
            return error.status
        default:
            return nil
        }
    }
}

/// A command line that cannot be run as it is, found after parsing (a request that is not JSON, a file that cannot be
/// read): reported as `error: MESSAGE`, with the usage status.
struct UsageError: Error {
    var message: String
}

/// A failure a command found itself (not one the library threw): reported as `error: MESSAGE`, exiting with `status`.
struct CommandFailure: Error {
    var message: String
    var status: ExitCode
}

/// `serve` or `listen` could not start serving its socket (the library's error, reported as it is): exits with
/// ``ExitStatus/cannotServe``, not with a client's statuses, which speak of a server's answer or of no server.
struct ServingFailure: Error {
    var error: SocketIPCError

    /// Runs `body`, which sets up a server and runs it until it is shut down: a ``SocketIPCError`` it throws before
    /// `started` says the server listens becomes a ``ServingFailure``; any other error, and any error after that (an
    /// `accept` that fails while serving), is thrown as it is.
    static func reporting(_ started: ServingStarted, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as SocketIPCError where !started.hasStarted {
            throw ServingFailure(error: error)
        }
    }
}

/// Whether the server of `serve` or `listen` has started listening (set by its `onServerRunning` hook).
final class ServingStarted: Sendable {
    private let started = Atomic<Bool>(false)

    /// The server listens.
    func markStarted() { self.started.store(true, ordering: .releasing) }

    /// Whether the server has listened.
    var hasStarted: Bool { self.started.load(ordering: .acquiring) }
}

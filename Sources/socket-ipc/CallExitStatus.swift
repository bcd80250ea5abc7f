import ArgumentParser
import NIOCore
import SocketIPC

/// How `call` and `watch` end: an exit status for each kind of failure, so that a script can tell a service's answer
/// from a missing server, a refusal or a timeout.
///
/// | status | meaning |
/// | --- | --- |
/// | 0 | the call completed (or `watch` was interrupted) |
/// | 1 | the call failed at the server: an application error (``ServiceError``), a failed handler, an unread request |
/// | 3 | no connection: nothing listens (no socket file, a stale one), no SocketIPC server, the connection lost |
/// | 4 | refused: the server's authorization policy does not serve this user |
/// | 5 | timed out: the call's deadline (`--timeout`) passed, or the server sent no hello in time |
/// | 6 | the server serves no method of that name |
/// | 64 | usage: a bad option, or a request that is not JSON (ArgumentParser's status, as every command's) |
enum CallExitStatus {
    static let applicationError = ExitCode(1)
    static let cannotConnect = ExitCode(3)
    static let refused = ExitCode(4)
    static let timedOut = ExitCode(5)
    static let unknownMethod = ExitCode(6)
    static let usage = ExitCode.validationFailure

    /// The table, for the commands' help.
    static let help = """
        Exit status: 0 done; 1 the call failed at the server (an application error, printed as `error CODE: \
        MESSAGE` and then its details as JSON on standard error; a handler that failed; a request it could not \
        read); 3 no connection (nothing listens, a stale socket file, not a SocketIPC server) or the connection \
        was lost; 4 refused by the server's authorization policy; 5 timed out (--timeout); 6 no such method; 64 \
        usage (a bad option, or a request that is not JSON).
        """

    /// The status for `error`.
    static func status(for error: SocketIPCError) -> ExitCode {
        switch error.code {
        case .unknownMethod:
            return Self.unknownMethod
        case .unauthorized:
            return Self.refused
        case .deadlineExceeded, .timedOut:
            return Self.timedOut
        case .connectionRefused, .invalidPath, .parentDirectoryMissing, .insecureDirectory, .notSocketIPCPeer,
            .unsupportedVersion, .wrongStyle, .systemCall, .connectionClosed, .peerGoingAway, .peerNotResponding,
            .protocolViolation, .cancelled:
            // `cancelled`: the server cancelled the handler as it shut down.
            return Self.cannotConnect
        default:
            // remoteError, invalidMessage, resourceExhausted, messageTooLarge, …: the server's answer.
            return Self.applicationError
        }
    }

    /// Runs `body`; reports what it throws on standard error and turns it into the exit status of the table.
    /// - Throws: `ExitCode` for any failure; `CancellationError` is passed on.
    static func reporting(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as ServiceError {
            Output.errorLine(error.message.isEmpty ? "error \(error.code)" : "error \(error.code): \(error.message)")
            if let details = error.encodedDetails, details.readableBytes > 0 {
                Output.errorLine(String(buffer: details))
            }
            throw Self.applicationError
        } catch let error as SocketIPCError {
            Output.error(error.message)
            throw Self.status(for: error)
        } catch let error as UsageError {
            Output.error(error.message)
            throw Self.usage
        }
    }
}

/// A command line that cannot be run as it is, found after parsing (a request that is not JSON): reported as
/// `error: MESSAGE`, with the usage status.
struct UsageError: Error {
    var message: String
}

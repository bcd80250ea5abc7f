import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one line a command prints for a ``SocketIPCError``: the library's message, with the command-line fix where
/// there is one.
enum Diagnosis {
    /// The library's message for `error`, and what to type instead where the command line can say it.
    ///
    /// A connect that failed (code `connectionRefused` or `unauthorized`) is explained by what the file system says
    /// about the path, in the words of `socket-ipc probe` (``ProbeReport/afterConnectFailure(_:inspection:timeout:)``):
    /// `no server at PATH: stale socket, no process holds PATH.lock: start the server again to reclaim it`,
    /// `PATH is a regular file, not a socket: ...`, `no such directory DIR (the parent of PATH): ...`,
    /// `no permission to connect to PATH (mode 0600, owner alice (uid 1000), ...): ...`.
    static func explain(_ error: SocketIPCError) -> String {
        switch error.code {
        case .timedOut where (error.cause as? ConnectionNotMade) == .noHello:
            let probe = error.path.map { " (`socket-ipc probe \($0)` tells)" } ?? ""
            return "\(error.message); if this is an EOF-style server, send to it with `socket-ipc send --eof`\(probe)"
        case .unauthorized where error.message.contains("not as a trusted user"):
            // The library's message names the server's user as `runs as uid N`; the command line's fix is an option.
            guard let fix = Self.trustFix(for: error) else { return error.message }
            return "\(error.message): \(fix)"
        case .unauthorized where error.message.contains("authorization policy refused")
            && error.message.contains("credentials unknown"):
            // The server could not learn this process's credentials (SO_PEERCRED failed there): no option admits it.
            return "\(error.message): the server could not learn who this process is; see its log"
        case .unauthorized where error.message.contains("authorization policy refused"):
            // The server's policy refused this process's user; the fix is the server's owner's, on its command line.
            let user = geteuid()
            return "\(error.message): the server's owner can admit this user with `socket-ipc serve --allow-uid \(user)` "
                + "(or --allow-gid), or ServerConfiguration.authorization in a program"
        case .connectionRefused, .unauthorized:
            guard let path = error.path, !path.isEmpty else { return error.message }
            let report = ProbeReport.afterConnectFailure(error, inspection: SocketFileInspection.inspect(path))
            return report.verdict == .connectFailed ? error.message : report.line
        default:
            return error.message
        }
    }

    /// The fix for a server this process did not trust (`not as a trusted user`): the option that trusts its user;
    /// `nil` when the message does not name it.
    static func trustFix(for error: SocketIPCError) -> String? {
        Self.serverUserID(in: error.message).map { "if that user runs the server you meant, trust it with --trust-uid \($0)" }
    }

    /// `N` of `runs as uid N` in `message`: the user of an untrusted server, as the library names it.
    private static func serverUserID(in message: String) -> UInt32? {
        guard let range = message.firstRange(of: "runs as uid ") else { return nil }
        return UInt32(message[range.upperBound...].prefix(while: \.isNumber))
    }

    /// Whether `error` is the library's report that no connection was made in time: the server did not accept
    /// (its backlog stayed full: a stopped or swamped server), or the wait for its hello ran out (``Client``'s
    /// `connectTimeout`), as when the server closes the connection before its hello. Such a command exits 3 (no
    /// connection), as `probe` does for the same listener, rather than 5 (a timeout once connected).
    static func isNoConnection(_ error: SocketIPCError) -> Bool {
        error.isConnectionNotMade
    }
}

import SocketIPC

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
        case .timedOut where error.message.contains("sent no hello"):
            let probe = error.path.map { " (`socket-ipc probe \($0)` tells)" } ?? ""
            return "\(error.message); if this is an EOF-style server, send to it with `socket-ipc send --eof`\(probe)"
        case .connectionRefused, .unauthorized:
            guard let path = error.path, !path.isEmpty else { return error.message }
            let report = ProbeReport.afterConnectFailure(error, inspection: SocketFileInspection.inspect(path))
            return report.verdict == .connectFailed ? error.message : report.line
        default:
            return error.message
        }
    }
}

import SocketIPC

/// The one line a command prints for a ``SocketIPCError``: the library's message, with the command-line fix where
/// there is one.
enum Diagnosis {
    /// The library's message for `error`, and what to type instead where the command line can say it.
    static func explain(_ error: SocketIPCError) -> String {
        switch error.code {
        case .timedOut where error.message.contains("sent no hello"):
            let probe = error.path.map { " (`socket-ipc probe \($0)` tells)" } ?? ""
            return "\(error.message); if this is an EOF-style server, add --eof\(probe)"
        default:
            return error.message
        }
    }
}

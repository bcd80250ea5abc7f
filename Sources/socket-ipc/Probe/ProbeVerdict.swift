import ArgumentParser

/// What `socket-ipc probe` found at a socket path: the `verdict` of its `--json` form, and its exit status.
enum ProbeVerdict: String, Sendable, CaseIterable {
    /// A framed SocketIPC server that serves this process.
    case framed
    /// An EOF-style SocketIPC server that serves this process (it read the probe's empty message and closed).
    case eof
    /// A framed SocketIPC server whose hello names a protocol version this `socket-ipc` does not speak: its clients
    /// would be refused with `unsupportedVersion` (PROTOCOL.md: there is no negotiation).
    case otherVersion
    /// A framed SocketIPC server whose authorization policy refused this process (going-away reason `0x04`).
    case refused
    /// A framed SocketIPC server that said it is going away for another reason (`0x00`: shutting down).
    case goingAway
    /// A listener that closed the connection at once without reading: a server refusing this process, at its
    /// connection limit or shutting down, or another program.
    case closedAtOnce
    /// A listener that sent nothing within `--timeout`.
    case silent
    /// A listener that sent bytes that are not a SocketIPC hello: another program.
    case otherProgram
    /// A listener whose accept queue stayed full for all of `--timeout` (`connect` gives `EAGAIN`).
    case queueFull
    /// A socket file nobody listens on (`ECONNREFUSED`), and no process holds its lock file.
    case stale
    /// A socket file nobody listens on, but a process holds its lock file: a server starting, or whose socket file
    /// was replaced.
    case notListening
    /// Nothing at the path; its directory exists.
    case missing
    /// The directory that should hold the path does not exist, or is not a directory.
    case missingParent
    /// Something other than a socket at the path: a regular file, a directory, a FIFO, or a symbolic link that leads
    /// to one of these or to nothing.
    case notSocket
    /// The file system denies this process: no write permission on the socket file, or no search permission on a
    /// directory on the way (`EACCES`).
    case permissionDenied
    /// The path is longer than `sun_path` holds.
    case pathTooLong
    /// `connect` failed in another way (the message says how).
    case connectFailed

    /// The exit status of `probe`: 0 for a server that serves this process, 4 for a refusal (the server's policy or the
    /// file system's permissions), 64 for a path too long for `sun_path` (the argument's fault, as for every other
    /// command: found by a review), 3 for everything else: a listener silent within `--timeout` too, as `request` and
    /// `call` exit 3 when no hello comes (no connection; 5 is for a `--timeout` that passes once connected).
    var exitStatus: ExitCode {
        switch self {
        case .framed, .eof: .success
        case .refused, .permissionDenied: ExitStatus.refused
        case .goingAway, .silent, .otherVersion, .closedAtOnce, .otherProgram, .queueFull, .stale, .notListening, .missing, .missingParent,
            .notSocket, .connectFailed:
            ExitStatus.cannotConnect
        case .pathTooLong: ExitStatus.usage
        }
    }

    /// Whether a SocketIPC server there serves this process.
    var servesYou: Bool { self == .framed || self == .eof }
}

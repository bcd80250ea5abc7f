/// The cause of a `timedOut` error that says no connection was made in time: the server did not accept (its
/// backlog stayed full), or sent no hello. A command line tells it from a timeout once connected by this cause, not
/// by the message, which holds the path.
package enum ConnectionNotMade: Error, Sendable {
    /// `connect` found the server's backlog full until the time was up.
    case notAccepted
    /// The server accepted but sent no hello in time.
    case noHello
    /// The socket file's mode refused this process (`EACCES` at `connect(2)`, the directory it is in searchable): a
    /// file system's answer, not the server's, which a server that starts again may change by making its socket anew.
    case permissionDenied
    /// A directory on the socket's path cannot be searched by this process (`EACCES` at `connect(2)`; another user's
    /// private directory, such as their `/run/user/UID`): no server's start changes that.
    case directoryNotSearchable
    /// The connect was not permitted (`EPERM`): a security module (SELinux, AppArmor, Landlock) or the file system
    /// refused it, whatever the socket file's mode.
    case notPermitted
}

extension SocketIPCError {
    /// Whether this error says no connection was made in time (``ConnectionNotMade``).
    package var isConnectionNotMade: Bool { self.code == .timedOut && self.cause is ConnectionNotMade }

    /// Whether this error is the socket file's refusal of this process at `connect(2)` (`unauthorized`, caused by
    /// ``ConnectionNotMade/permissionDenied``), not the server's policy's.
    package var isSocketFilePermissionDenied: Bool {
        self.code == .unauthorized && (self.cause as? ConnectionNotMade) == .permissionDenied
    }
}

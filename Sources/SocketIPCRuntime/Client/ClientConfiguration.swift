/// How a client connects.
public struct ClientConfiguration: Sendable {
    /// Limits and timeouts of the connection.
    public var connection = ConnectionOptions()
    /// How long connecting, including the exchange of hellos, may take; default 10 s.
    public var connectTimeout: Duration = .seconds(10)
    /// Whether ``Client/withConnection(to:configuration:handler:logger:_:)`` runs its body on the connection's event
    /// loop (as the task executor preference); default `true`.
    ///
    /// Then a send is written and a reply resumes the body without a thread hop, which halves round-trip latency.
    /// The body must not block its thread (no blocking system calls, no long computations without `await`); turn
    /// this off for a body that does.
    public var runsBodyOnEventLoop = true

    /// For an address another user could have taken first, the user ids the server may run as, checked with its
    /// `SO_PEERCRED` before anything is sent; `nil`, the default, trusts this process's own user and root.
    ///
    /// Such an address is an abstract one (`@name`: it has no owner or file mode, and any process may bind the name
    /// first), or a path on which another user could have made the socket file, a symbolic link or a directory: in a
    /// directory any user may write to, such as `/tmp` (`1777`), an entry that neither this user nor root owns, and
    /// any entry of a directory writable by all without the sticky bit. Other paths are protected by their file and
    /// directories, and are not checked; nor are directories writable by their group only, whose group is trusted
    /// with them. (As PostgreSQL's `requirepeer`, and D-Bus clients checking the bus.)
    public var trustedServerUserIDs: Set<UInt32>? = nil

    /// Creates a configuration with the defaults.
    public init() {}
}

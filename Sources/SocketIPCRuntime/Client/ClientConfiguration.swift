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

    /// For an abstract address (`@name`), the user ids the server may run as, checked with its `SO_PEERCRED` before
    /// anything is sent; `nil`, the default, trusts this process's own user and root. (An abstract name has no owner
    /// or file mode: any process may take it first.) Paths are protected by their file and directory instead.
    public var trustedServerUserIDs: Set<UInt32>? = nil

    /// Creates a configuration with the defaults.
    public init() {}
}

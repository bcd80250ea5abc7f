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

    /// Creates a configuration with the defaults.
    public init() {}
}

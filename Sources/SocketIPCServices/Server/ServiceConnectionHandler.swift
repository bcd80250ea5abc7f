/// The `ConnectionHandler` of a connection that serves a ``ServiceRouter``'s methods: on a server (see
/// ``SocketIPCRuntime/Server/service(configuration:router:logger:onServerRunning:)``), or on a client whose server
/// calls it back.
///
/// One-way messages and raw requests get the default handling (messages dropped, requests answered "this peer does
/// not answer requests"); calls go to the router.
public struct ServiceConnectionHandler: ConnectionHandler, Sendable {
    /// The methods served.
    public let router: ServiceRouter

    /// Creates the handler.
    /// - Parameter router: The methods to serve.
    public init(router: ServiceRouter) {
        self.router = router
    }

    /// Installs the router on the connection, before any frame of the peer is handled.
    public func connectionDidOpen(_ connection: Connection) {
        CallMultiplexer.install(router: self.router, on: connection)
    }
}

import Metrics

/// The metrics a ``Server`` reports through swift-metrics, made once per server.
///
/// | label | kind | what |
/// |---|---|---|
/// | `socketipc_connections_accepted_total` | counter | connections admitted |
/// | `socketipc_connections_refused_total` | counter | connections closed on accept: shutting down, or at `maximumConnections`, `maximumConnectionsPerUser` or `maximumPendingHandshakesPerUser` |
/// | `socketipc_connections_unauthorized_total` | counter | peers the authorization policy refused |
/// | `socketipc_connections_active` | meter | connections admitted and not yet closed |
/// | `socketipc_connection_errors_total` | counter, dimension `code` | connections closed by an error, by ``SocketIPCError/Code``: a protocol violation or an oversized frame or message, a failed read or write, an EOF-style handler that failed (`remoteError`) |
struct ServerMetrics: Sendable {
    let accepted: Counter
    let refused: Counter
    let unauthorized: Counter
    let active: Meter
    private let factory: any MetricsFactory

    init(factory: any MetricsFactory) {
        self.factory = factory
        self.accepted = Counter(label: "socketipc_connections_accepted_total", factory: factory)
        self.refused = Counter(label: "socketipc_connections_refused_total", factory: factory)
        self.unauthorized = Counter(label: "socketipc_connections_unauthorized_total", factory: factory)
        self.active = Meter(label: "socketipc_connections_active", factory: factory)
    }

    /// Counts a connection that closed with `error`.
    func connectionFailed(_ error: SocketIPCError) {
        Counter(label: "socketipc_connection_errors_total", dimensions: [("code", "\(error.code)")], factory: self.factory)
            .increment()
    }

}

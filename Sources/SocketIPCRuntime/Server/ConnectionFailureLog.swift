import Logging

/// Counts each connection that an error closed, by code (`socketipc_connection_errors_total`), and logs it at
/// `notice` at a bounded rate: a hostile peer can make such errors as fast as it can connect, and must not flood the
/// log with them. Where the error is found (the EOF-style handlers) it is only logged at `debug`.
struct ConnectionFailureLog: Sendable {
    let metrics: ServerMetrics
    let log: RateLimitedLogger

    init(metrics: ServerMetrics, logger: Logger) {
        self.metrics = metrics
        self.log = RateLimitedLogger(logger)
    }

    /// Counts and logs a connection closed by `error`.
    func failed(_ error: SocketIPCError) {
        self.metrics.connectionFailed(error)
        self.log.log(level: .notice, "closing connection: \(error.code)", metadata: ["error": "\(error)"])
    }
}

import ServiceLifecycle
import UnixSignals

extension Server {
    /// Runs the server until one of `gracefulShutdownSignals` arrives, then shuts it down gracefully
    /// (``shutdownGracefully()``: going-away to every connection, calls in progress finish within
    /// ``ServerConfiguration/shutdownGracePeriod``, the socket file removed), and returns: what a daemon's `main`
    /// calls.
    ///
    /// ```swift
    /// let server = Server.service(configuration: .init(path: path), router: router)
    /// try await server.runService()   // until SIGTERM (systemd's stop) or SIGINT (Ctrl-C)
    /// ```
    ///
    /// A swift-service-lifecycle `ServiceGroup` of this server alone, with those signals as its graceful shutdown
    /// signals, as Hummingbird's `Application.runService()` makes; a daemon that runs other services beside the
    /// server puts them all in one `ServiceGroup` of its own instead.
    /// - Parameter gracefulShutdownSignals: The signals that start the graceful shutdown; default SIGTERM and SIGINT.
    /// - Throws: What ``run()`` throws: the socket cannot be served (`addressInUse`, `insecureDirectory`,
    ///   `parentDirectoryMissing`, …).
    public func runService(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        let group = ServiceGroup(
            services: [self],
            gracefulShutdownSignals: gracefulShutdownSignals,
            logger: self.logger
        )
        try await group.run()
    }
}

import Logging

extension Server {
    /// A framed server that serves `router`'s methods on every connection.
    ///
    /// ```swift
    /// var router = ServiceRouter()
    /// router.register(Get.self) { key, context in store[key] }
    /// let server = Server.service(configuration: ServerConfiguration(path: "/run/kv.sock"), router: router)
    /// try await server.run()
    /// ```
    /// - Parameters:
    ///   - configuration: Where and how to serve: the path, its owner and mode, who may connect, limits.
    ///   - router: The methods served.
    ///   - logger: The server's logger; default one labelled `socketipc.server`.
    ///   - onServerRunning: Called once the socket accepts connections (`waitUntilRunning()` awaits the same).
    /// - Returns: The server; call `run()` to serve.
    public static func service(
        configuration: ServerConfiguration,
        router: ServiceRouter,
        logger: Logger = Logger(label: "socketipc.server"),
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void = { _ in }
    ) -> Server {
        Server.framed(configuration: configuration, logger: logger, onServerRunning: onServerRunning) {
            ServiceConnectionHandler(router: router)
        }
    }
}

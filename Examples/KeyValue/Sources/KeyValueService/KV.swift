import SocketIPC

/// The key-value service's methods, declared once for the daemon that serves them and the clients that call them.
public enum KV {
    /// The value of a key; fails with the ``ServiceError`` `notFound` (details: the key) when it has none.
    public enum Get: ServiceMethod {
        public static let name = "kv.get"
        public typealias Request = String
        public typealias Response = String
        /// Reading twice is reading once: a ``ServiceClient`` may repeat it on a new connection.
        public static let isIdempotent = true
    }

    /// Sets a key's value; answers the value it replaced, if any.
    public enum Set: ServiceMethod {
        public static let name = "kv.set"
        public struct Request: Codable, Sendable {
            public var key: String
            public var value: String

            public init(key: String, value: String) {
                self.key = key
                self.value = value
            }
        }
        public typealias Response = String?
    }

    /// A key's value now (`nil`: not set), then each new one, until the caller stops watching.
    public enum Watch: ServiceMethod {
        public static let name = "kv.watch"
        public typealias Request = String
        public typealias Response = String?
    }

    /// The daemon's socket file: `path`, or by default `kv.sock` in the user's runtime directory (`$XDG_RUNTIME_DIR`).
    public static func socketPath(_ path: String?) throws -> String {
        try path ?? SocketPath.inRuntimeDirectory("kv.sock").path
    }

    /// The daemon's methods, over `store`.
    public static func router(store: Store) -> ServiceRouter {
        var router = ServiceRouter()
        router.register(Get.self) { key, _ in
            guard let value = store[key] else {
                throw ServiceError(code: "notFound", message: "no value for key '\(key)'", details: key)
            }
            return value
        }
        router.register(Set.self) { request, _ in
            store.set(request.key, to: request.value)
        }
        router.registerServerStreaming(Watch.self) { key, changes, _ in
            // Until the watcher stops watching. A graceful shutdown of the daemon ends the call at once, with status
            // `unavailable` (ServiceRouter.endsResponseStreamsOnShutdown), and the watcher's ServiceClient calls it
            // again on the next daemon.
            for await value in store.values(of: key) {
                try await changes.write(value)
            }
        }
        return router
    }
}

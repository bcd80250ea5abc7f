import Metrics

/// Where and how a ``Server`` listens.
public struct ServerConfiguration: Sendable {
    /// The socket file's path; at most ``SocketPath/maximumLength`` bytes.
    public var path: String
    /// The socket file's permission bits, set before the server accepts its first connection whatever the process
    /// umask; default `0o600` (only the owner may connect).
    public var mode: UInt16 = 0o600
    /// Whether to create a missing parent directory (with mode `0o700`) instead of failing; default `false`.
    public var createParentDirectory = false
    /// The `listen` backlog; default 256.
    public var backlog: Int32 = 256
    /// How long a graceful shutdown lets connections finish their requests before closing them; default 10 s.
    public var shutdownGracePeriod: Duration = .seconds(10)
    /// The most connections served at once; a connection beyond it is closed as soon as it is accepted.
    /// Default 10,000.
    public var maximumConnections = 10_000
    /// Which peers may connect; default ``AuthorizationPolicy/allowAll`` (the file mode already limits who can).
    public var authorization: AuthorizationPolicy = .allowAll
    /// Limits and timeouts of each framed connection.
    public var connection = ConnectionOptions()
    /// Where the server reports its metrics (connections accepted, refused, unauthorized, active, and closed by
    /// an error; the labels are listed in the README); `nil`, the default, uses swift-metrics' `MetricsSystem`
    /// as bootstrapped when the server is made.
    public var metricsFactory: (any MetricsFactory)? = nil

    /// Creates a configuration for a server on `path`.
    public init(path: String) {
        self.path = path
    }
}

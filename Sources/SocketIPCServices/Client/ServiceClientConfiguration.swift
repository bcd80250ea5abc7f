/// How a ``ServiceClient`` connects, reconnects and waits.
public struct ServiceClientConfiguration: Sendable {
    /// The connection's own options: limits, timeouts, keepalive. By default keepalive is on, every 10 s with a 20 s
    /// timeout, so that a frozen server is noticed and left for a new connection.
    public var connection: ClientConfiguration
    /// The waits between failed attempts; default `ConnectionBackoff()`: 50 ms, growing 1.6 times per failure up to
    /// 5 s, ±20 %.
    public var backoff = ConnectionBackoff()
    /// How long a call waits for a connection (while the server is not up yet, or restarting) before it fails with
    /// the last connection error; default 30 s. A call's own ``CallOptions/timeout`` also bounds it.
    public var waitForConnectionTimeout: Duration = .seconds(30)
    /// How many times a call of an idempotent method (``ServiceMethod/isIdempotent``) is repeated on a new
    /// connection when its connection was lost before the response came, and a call of any method that never
    /// reached the server or its handler (its connection closed or went away before the call was written, or the
    /// server refused it at its open as going away); default 3.
    public var maximumRetries = 3

    /// Creates a configuration with the defaults.
    public init() {
        var connection = ClientConfiguration()
        connection.connection.keepaliveInterval = .seconds(10)
        connection.connection.keepaliveTimeout = .seconds(20)
        self.connection = connection
    }
}

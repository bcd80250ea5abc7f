import Logging

/// What a handler knows about the call it handles: the method, the caller and its connection, and the deadline.
public struct ServiceContext: Sendable {
    /// The method's name.
    public let method: String
    /// The connection the call came on: the caller's credentials, its logger, and the means to call the caller back.
    public let connection: Connection
    /// When the caller stops waiting, as it set it (PROTOCOL.md, "Calls": the timeout travels with the call and
    /// counts from when it arrived); `nil` when it set none. The handler's task is cancelled when it passes.
    public let deadline: ContinuousClock.Instant?

    /// The credentials of the calling process (`SO_PEERCRED` on Linux: its uid, gid and pid), when known.
    public var peer: PeerCredentials? { self.connection.peer }

    /// The connection's logger, with the method as metadata (`socketipc.method`).
    public var logger: Logger {
        var logger = self.connection.logger
        logger[metadataKey: "socketipc.method"] = "\(self.method)"
        return logger
    }
}

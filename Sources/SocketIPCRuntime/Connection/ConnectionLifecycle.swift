import NIOCore

/// Callbacks a connection's owner (the server's registry, the client's connect call) gets from its channel handler.
struct ConnectionLifecycle: Sendable {
    /// When the peer's handshake must be complete, if the owner set a deadline (the server: its handshake timeout
    /// after accepting the connection); otherwise the handler's handshake timeout counts from when it is active.
    var handshakeDeadline: NIODeadline? = nil
    /// Called on the event loop once the peer's hello has arrived (after the first frame that followed it, if the
    /// same read brought one).
    var handshakeCompleted: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection opened (before the peer's hello).
    var opened: @Sendable (Connection) -> Void = { _ in }
    /// Called on the event loop when the connection closed; the error is `nil` for an orderly close.
    var closed: @Sendable (Connection, SocketIPCError?) -> Void = { _, _ in }
    /// Where ``Reply/complete(_:)`` runs the connection's async work, cancelled when the connection closes: in the
    /// server's task group, or (a client's connection) in a task of the connection's own.
    var handlerTaskOwner = ConnectionTasks.Owner.connection
    /// The connection's place in its server's admission count, for handler work that outlives the channel to hold;
    /// `nil` for a client's connection.
    var slot: ConnectionSlot? = nil
    /// The call account (cancel allowance, calls in progress) the peer's user shares across its connections to the
    /// server (``UserCallAccounts``); `nil` for a client's connection.
    var userCalls: UserCallAccount? = nil
    /// Where the bytes of frames not yet whole are charged to the peer's user (``UserIncomingBytes``); `nil` for a
    /// client's connection.
    var incomingBytes: IncomingBytesCharge? = nil
}

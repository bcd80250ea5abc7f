import NIOCore
@_spi(SocketIPCRuntime) import SocketIPCCore
import Synchronization

extension Server {
    /// The framed connections open now whose handshake is complete (the peer's hello has arrived), in the order they
    /// were accepted: a snapshot, which a connection that closes leaves from then on. At most
    /// ``ServerConfiguration/maximumConnections`` long. While the server shuts down, the connections still open are
    /// listed (they are going away). Empty for an EOF-style server, and before and after the server runs.
    public var connections: [Connection] {
        self.state.withLock { $0.machine.establishedConnections }
    }

    /// Sends `message` as a one-way message (as ``Connection/send(_:)`` does) to every connection in ``connections``
    /// that `filter` admits, without waiting for any of them, and returns how many it was sent to.
    ///
    /// ```swift
    /// let reached = await server.broadcast(ByteBuffer(string: "config reloaded"))
    /// let admins = await server.broadcast(notice, where: { $0.peer?.userID == 0 })
    /// ```
    ///
    /// The message is queued on each connection in turn and written by the connections' event loops, so a slow or
    /// stuck peer never delays it to the others, and the call never waits. Skipped, and not counted, are a connection
    /// that has closed and one whose peer is not keeping up: its queue already holds
    /// ``ConnectionOptions/writeBufferHighWatermark`` bytes or more that the peer has not read yet (or its socket
    /// takes nothing more). So a peer that stops reading never holds up a broadcast, nor makes the server's memory
    /// grow with every broadcast; it misses the messages broadcast meanwhile. To deliver to one slow peer whatever it
    /// takes, send on its connection with ``Connection/send(_:)``, which waits.
    ///
    /// Messages broadcast one after the other reach each connection in that order. A connection that closes after
    /// the message was queued on it loses it, with whatever else it had queued.
    /// - Parameters:
    ///   - message: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``; a larger one is sent to
    ///     no connection.
    ///   - filter: Whether to send to a connection; called once for each, on the calling task. Default: every
    ///     connection.
    /// - Returns: How many connections the message was queued on.
    @discardableResult
    nonisolated(nonsending) public func broadcast(
        _ message: ByteBuffer,
        where filter: (Connection) -> Bool = { _ in true }
    ) async -> Int {
        var sent = 0
        for connection in self.connections where filter(connection) {
            // Not for a peer that is behind (or a closed connection); a peer that falls behind meanwhile gets this one
            // message over its limit, as a sender of `Connection.send(_:)` would queue it.
            guard case .proceed = connection.state.withLock({ $0.checkWritable() }) else { continue }
            // Fails only once the connection is closed, or for a message over the size limit.
            guard (try? connection.queueMessage(message)) != nil else { continue }
            sent += 1
        }
        return sent
    }
}

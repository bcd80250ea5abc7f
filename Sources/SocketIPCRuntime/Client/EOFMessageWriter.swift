import NIOCore

/// Writes the pieces of one EOF-style message; each ``write(_:)`` waits while the server is not reading.
public struct EOFMessageWriter: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    /// The server's socket path, for error messages.
    let path: String

    /// Writes the next piece of the message.
    /// - Throws: `SocketIPCError` with code `connectionClosed` when the server has closed the connection (for
    ///   example because the message is over its maximum size, or its authorization policy refused this process).
    public func write(_ bytes: ByteBuffer) async throws {
        do {
            try await self.outbound.write(bytes)
        } catch let error as SocketIPCError {
            throw error
        } catch {
            throw SocketIPCError.eofNotDelivered(path: self.path, cause: "\(errorText(error))", underlying: error)
        }
    }
}

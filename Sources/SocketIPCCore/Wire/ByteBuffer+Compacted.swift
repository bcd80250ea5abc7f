import NIOCore

extension ByteBuffer {
    /// The slack a kept payload may hold beyond its own bytes before it is copied out of its read buffer.
    @usableFromInline
    static let keptSlack = 4096

    /// This buffer, or a copy of its readable bytes when it is a slice of a read buffer much larger than itself
    /// (its storage exceeds twice its bytes plus 4 KiB), for a payload that is kept beyond the read.
    ///
    /// A frame's payload is a slice of the buffer it was read into, and keeps all of that buffer alive, up to 1 MiB.
    /// Kept as it is, a request waiting for its answer or a message queued for a slow consumer would hold a whole read
    /// buffer for a few bytes of its own: a peer that sends each small request in a read of its own, padded with
    /// frames the connection drops, made a server hold 1 MiB per 10-byte request (found by a review: 800 MiB for 800
    /// requests). Netty's decoders face the same choice of a retained slice or a copy; this copies only what wastes.
    @inlinable
    package func compacted() -> ByteBuffer {
        let length = self.readableBytes
        guard self.storageCapacity > 2 * length + Self.keptSlack else { return self }
        var copy = ByteBufferAllocator().buffer(capacity: length)
        copy.writeImmutableBuffer(self)
        return copy
    }
}

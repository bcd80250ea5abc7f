import NIOCore

/// Read buffers of exactly `capacity` bytes (a power of two, as `ByteBufferAllocator` rounds to one), each new: what
/// an EOF-style message's last reads below its maximum use, so that no read takes bytes past the maximum out of the
/// socket (``EOFCollectingChannelHandler``).
///
/// NIO's pool of a channel's read buffers (`NIOPooledRecvBufferAllocator`) reuses a buffer it keeps whenever it is
/// large enough for the size asked (`nextBufferSize()`), and reads into all of it: `FixedSizeRecvByteBufferAllocator`
/// of 12 KiB still read 64 KiB into an earlier buffer (found by a review: a message 20 KB over its maximum was read
/// whole, and the client saw a clean end-of-stream instead of `ECONNRESET`). Without a size to pool by, and with
/// `record` saying that the next buffer may grow, the pool takes a new buffer from this allocator for every read.
struct ExactReadAllocator: RecvByteBufferAllocator {
    /// The size of each read.
    let capacity: Int

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: self.capacity)
    }

    /// `true`: the pool then never reuses one of its buffers for the next read.
    mutating func record(actualReadBytes: Int) -> Bool {
        true
    }
}

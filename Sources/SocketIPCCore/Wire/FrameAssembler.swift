import NIOCore

/// The bytes of a frame that spans reads (or of frames not yet decoded while reading is paused), gathered into one
/// contiguous buffer until they can be decoded.
///
/// The buffer grows geometrically as bytes arrive: each growth asks for just the bytes held plus the new piece, and
/// the allocator rounds that up to a power of two, so the buffer's capacity is always less than twice the bytes it
/// holds. Memory therefore grows only with bytes that really came, never with what a frame's length field claims,
/// and a peer that writes one byte at a time costs at most about 2 bytes of memory per byte it sent (keeping each
/// read's buffer instead would cost the size of that buffer per read). Growing a large buffer reallocates it in
/// place where the allocator can, so assembling a large frame costs about one copy of its bytes.
package struct FrameAssembler {
    /// The bytes held, contiguous, starting at the reader index.
    package var bytes: ByteBuffer

    /// Starts with `bytes`, kept as they are.
    package init(_ bytes: ByteBuffer) {
        self.bytes = bytes
    }

    /// The bytes held.
    package var readableBytes: Int { self.bytes.readableBytes }

    /// Adds the next bytes of the stream, copying them.
    /// - Parameter piece: Bytes that follow those held.
    package mutating func append(_ piece: ByteBuffer) {
        if self.bytes.writableBytes < piece.readableBytes && self.bytes.readerIndex > 0 {
            // Drop what was decoded already before growing, so that the buffer holds only bytes still needed.
            self.bytes.discardReadBytes()
        }
        self.bytes.writeImmutableBuffer(piece)
    }
}

import NIOCore

/// The readable bytes of a `ByteBuffer`, looked at once: the address of the byte at its reader index and how far its
/// readable bytes reach, so that a read loop can look at frame after frame with plain pointer reads.
///
/// Each call into a `ByteBuffer`'s bytes from outside SwiftNIO costs a dynamic exclusivity check of its storage
/// (`swift_beginAccess`: about a seventh of a receiver's time per 64-byte message in the W3 profile); a window costs
/// one per read instead of one per frame.
///
/// A window stays valid while the buffer it was taken from keeps its storage and its bytes: the read loop holds the
/// buffer and only moves its reader index forward (taking slices, which share the storage, is fine). A buffer that
/// was written to since, or whose reader index is behind the window's, no longer matches it, and ``bytes(of:)``
/// returns `nil` for it rather than wrong bytes.
@usableFromInline
package struct ReadableBytesWindow {
    /// The address of the byte at ``readerIndex``; `nil` for a buffer with nothing to read.
    @usableFromInline
    let base: UnsafeRawPointer?
    /// The buffer's reader index when the window was taken.
    @usableFromInline
    let readerIndex: Int
    /// The buffer's writer index when the window was taken.
    @usableFromInline
    let writerIndex: Int

    /// Looks at `buffer`'s readable bytes (one access to its storage).
    @inlinable
    package init(_ buffer: ByteBuffer) {
        self.base = buffer.withUnsafeReadableBytes { UnsafeRawPointer($0.baseAddress) }
        self.readerIndex = buffer.readerIndex
        self.writerIndex = buffer.writerIndex
    }

    /// The readable bytes of `buffer`, the buffer the window was taken from, as they are now: from its current
    /// reader index on. `nil` when the buffer no longer matches the window (written to, or read backwards).
    @inlinable
    @inline(__always)
    package func bytes(of buffer: ByteBuffer) -> UnsafeRawBufferPointer? {
        let offset = buffer.readerIndex &- self.readerIndex
        guard let base = self.base, offset >= 0, buffer.writerIndex == self.writerIndex else { return nil }
        return UnsafeRawBufferPointer(start: base + offset, count: buffer.readableBytes)
    }
}

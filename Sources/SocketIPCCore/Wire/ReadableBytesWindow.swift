import NIOCore

/// The readable bytes of a `ByteBuffer`, looked at once: the address of the byte at its reader index and how far its
/// readable bytes reach, so that a read loop can look at frame after frame with plain pointer reads.
///
/// Each call into a `ByteBuffer`'s bytes from outside SwiftNIO costs a dynamic exclusivity check of its storage
/// (`swift_beginAccess`: about a seventh of a receiver's time per 64-byte message in the W3 profile); a window costs
/// one per read instead of one per frame.
///
/// A window is valid only while the buffer it was taken from keeps its storage and its bytes, which the read loop
/// guarantees: it holds the buffer (an `inout` local) for the whole read and only moves its reader index forward or
/// takes slices, which share the storage, so that the storage lives and nothing writes to it (a handler writing to its
/// slice copies first). The address outlives `withUnsafeReadableBytes`'s closure on that ground: the storage is a heap
/// object that the held buffer keeps alive.
///
/// ``bytes(of:)`` checks the indices only: a buffer whose reader index is behind the window's, or whose writer index
/// moved, gets `nil`. It cannot see replaced storage at the same indices (another buffer assigned, `setBytes` on
/// shared storage, `reserveCapacity`), which the caller must not do while it uses the window; debug builds check the
/// address too.
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
    /// reader index on. `nil` when its indices no longer match the window (written to, or read backwards).
    @inlinable
    @inline(__always)
    package func bytes(of buffer: ByteBuffer) -> UnsafeRawBufferPointer? {
        let offset = buffer.readerIndex &- self.readerIndex
        guard let base = self.base, offset >= 0, buffer.writerIndex == self.writerIndex else { return nil }
        assert(
            buffer.withUnsafeReadableBytes { $0.baseAddress } == UnsafeRawPointer(base + offset),
            "a readable-bytes window used for a buffer whose storage changed"
        )
        return UnsafeRawBufferPointer(start: base + offset, count: buffer.readableBytes)
    }
}

import NIOCore

/// The spare buffers of one event loop, touched only on that loop, kept per event loop rather than per connection so
/// that idle connections hold none:
///
/// - a coalescing buffer: the buffer of the last flush on the loop, handed to the next connection of the loop whose
///   ``OutboundQueue`` needs one. Reusing it costs nothing once the channel has written it; while the channel still
///   holds it, `clear()` copies on write, so reuse is always safe.
/// - an encoding buffer: what a typed message was last encoded into before its bytes were copied into the
///   coalescing buffer, so that a codec that writes into it (``Connection/takeEncodingBuffer()``) does not allocate a
///   buffer for the next.
final class EventLoopBufferPool: @unchecked Sendable {
    /// One spare buffer, kept only if the memory behind it (`storageCapacity`, which a slice's `capacity` understates)
    /// is within `sizes`.
    private struct Spare {
        let sizes: ClosedRange<Int>
        var buffer: ByteBuffer?

        /// The buffer, cleared, if one is spare.
        @inline(__always)
        mutating func take() -> ByteBuffer? {
            guard var buffer = self.buffer.take() else { return nil }
            buffer.clear()
            return buffer
        }

        /// Keeps `buffer` if its size is within ``sizes``.
        @inline(__always)
        mutating func recycle(_ buffer: ByteBuffer) {
            if self.sizes.contains(buffer.storageCapacity) { self.buffer = buffer }
        }
    }

    // Both spares are touched on their event loop only, by the short methods below, which never overlap: so without
    // the dynamic exclusivity check (a thread-local lookup on every access, a few percent of a typed stream's sender).

    /// Kept if from 4 KiB (smaller is a going-away frame written from its own small buffer: the spare kept is better)
    /// to 64 KiB.
    @exclusivity(unchecked)
    private var coalescing = Spare(sizes: 4 * 1024...64 * 1024)
    /// Kept up to ``maximumEncodingCapacity``.
    @exclusivity(unchecked)
    private var encoding = Spare(sizes: 0...EventLoopBufferPool.maximumEncodingCapacity)

    private static let pools = PerEventLoop { _ in EventLoopBufferPool() }

    /// The pool of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopBufferPool { self.pools(eventLoop) }

    /// The largest encoding buffer kept, in bytes (16 KiB): below ``OutboundQueue/largePayloadThreshold``, so that
    /// what was encoded into it was copied into the queue, and small enough not to matter while it waits.
    static let maximumEncodingCapacity = 16 * 1024

    /// A cleared coalescing buffer, if one is spare.
    @inline(__always)
    func takeCoalescing() -> ByteBuffer? { self.coalescing.take() }

    /// Keeps `buffer` for the next flush, if from 4 KiB to 64 KiB.
    @inline(__always)
    func recycleCoalescing(_ buffer: ByteBuffer) { self.coalescing.recycle(buffer) }

    /// A cleared encoding buffer, if one is spare.
    @inline(__always)
    func takeEncoding() -> ByteBuffer? { self.encoding.take() }

    /// Keeps `buffer` for the next encoding, unless the memory behind it is larger than ``maximumEncodingCapacity``
    /// (a codec may return a small slice of a large buffer, which `clear()` would widen back to all of it).
    @inline(__always)
    func recycleEncoding(_ buffer: ByteBuffer) { self.encoding.recycle(buffer) }
}

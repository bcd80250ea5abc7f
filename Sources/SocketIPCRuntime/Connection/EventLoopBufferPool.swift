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
    private var spareCoalescing: ByteBuffer?
    private var spareEncoding: ByteBuffer?

    private static let pools = PerEventLoop { _ in EventLoopBufferPool() }

    /// The pool of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopBufferPool { self.pools(eventLoop) }

    /// A cleared coalescing buffer, if one is spare.
    @inline(__always)
    func takeCoalescing() -> ByteBuffer? {
        guard var buffer = self.spareCoalescing.take() else { return nil }
        buffer.clear()
        return buffer
    }

    /// Keeps `buffer` for the next flush, unless it grew larger than 64 KiB or is smaller than 4 KiB (a going-away
    /// frame written from its own small buffer: the spare kept is better). Sizes are of the memory behind the buffer
    /// (`storageCapacity`), which a slice's `capacity` understates.
    @inline(__always)
    func recycleCoalescing(_ buffer: ByteBuffer) {
        if (4 * 1024...64 * 1024).contains(buffer.storageCapacity) { self.spareCoalescing = buffer }
    }

    /// The largest encoding buffer kept, in bytes (16 KiB): below ``OutboundQueue/largePayloadThreshold``, so that
    /// what was encoded into it was copied into the queue, and small enough not to matter while it waits.
    static let maximumEncodingCapacity = 16 * 1024

    /// A cleared encoding buffer, if one is spare.
    @inline(__always)
    func takeEncoding() -> ByteBuffer? {
        guard var buffer = self.spareEncoding.take() else { return nil }
        buffer.clear()
        return buffer
    }

    /// Keeps `buffer` for the next encoding, unless the memory behind it is larger than ``maximumEncodingCapacity``
    /// (`storageCapacity`: a codec may return a small slice of a large buffer, which `clear()` would widen back to
    /// all of it).
    @inline(__always)
    func recycleEncoding(_ buffer: ByteBuffer) {
        if buffer.storageCapacity <= Self.maximumEncodingCapacity { self.spareEncoding = buffer }
    }
}

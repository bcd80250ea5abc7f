import NIOCore

/// One spare coalescing buffer per event loop: the buffer of the last flush on that loop, handed to the next
/// connection of the loop whose ``OutboundQueue`` needs one. Reusing it costs nothing once the channel has written
/// it; while the channel still holds it, `clear()` copies on write, so reuse is always safe. Kept per event loop, not
/// per connection, so that idle connections hold no write buffer. Touched only on its event loop.
final class FlushBufferPool: @unchecked Sendable {
    private var spare: ByteBuffer?

    private static let pools = PerEventLoop { _ in FlushBufferPool() }

    /// The pool of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> FlushBufferPool { self.pools(eventLoop) }

    /// A cleared buffer, if one is spare.
    @inline(__always)
    func take() -> ByteBuffer? {
        guard var buffer = self.spare.take() else { return nil }
        buffer.clear()
        return buffer
    }

    /// Keeps `buffer` for the next flush, unless it grew larger than 64 KiB or is smaller than 4 KiB (a going-away
    /// frame written from its own small buffer: the spare kept is better).
    @inline(__always)
    func recycle(_ buffer: ByteBuffer) {
        if (4 * 1024...64 * 1024).contains(buffer.capacity) { self.spare = buffer }
    }
}

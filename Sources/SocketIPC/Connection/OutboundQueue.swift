import NIOCore

/// Frames waiting to be handed to the channel, coalesced: small frames are copied into one buffer, so a burst of
/// sends costs one write and one flush; a payload of ``largePayloadThreshold`` bytes or more is queued as it is,
/// so a large message is never copied before the kernel copies it.
struct OutboundQueue {
    /// Payloads at least this large are written without copying (`writev` of header and payload).
    static let largePayloadThreshold = 32 * 1024
    private static let initialCapacity = 16 * 1024

    /// Buffers queued before ``tail``: large payloads and the coalescing buffers written before them.
    private var earlier: [ByteBuffer] = []
    /// The coalescing buffer small frames are copied into, last in the queue. A queue of small frames is just this
    /// buffer, so taking it costs no array.
    private var tail: ByteBuffer?
    /// Bytes queued and not yet handed to the channel.
    private(set) var byteCount = 0

    var isEmpty: Bool { self.earlier.isEmpty && self.tail == nil }

    /// Queues a frame: its header, then `payload` (copied if small, referenced if large). `pool` is asked only when
    /// a new coalescing buffer is needed.
    @inline(__always)
    mutating func appendFrame(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        pool: @autoclosure () -> FlushBufferPool?
    ) {
        let headerLength = 4 + kind.headerLength
        let payloadLength = payload.readableBytes
        self.byteCount += headerLength + payloadLength
        if payloadLength >= Self.largePayloadThreshold {
            self.withOwnedTail(capacity: headerLength, pool: pool()) {
                Self.write(kind, id: id, payload: payload, copyingPayload: false, into: &$0)
            }
            self.earlier.append(self.tail.take()!)
            self.earlier.append(payload)
        } else {
            self.withOwnedTail(capacity: headerLength + payloadLength, pool: pool()) {
                Self.write(kind, id: id, payload: payload, copyingPayload: true, into: &$0)
            }
        }
    }

    /// Stores the header (and the payload) with plain pointer writes, in one call into the buffer: one capacity
    /// check and one writer-index move per frame, instead of one per field.
    @inline(__always)
    private static func write(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        copyingPayload: Bool,
        into buffer: inout ByteBuffer
    ) {
        let headerLength = 4 + kind.headerLength
        let payloadLength = payload.readableBytes
        let total = headerLength + (copyingPayload ? payloadLength : 0)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { target in
            let base = target.baseAddress!
            base.storeBytes(of: UInt32(truncatingIfNeeded: kind.headerLength + payloadLength).bigEndian, as: UInt32.self)
            base.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
            if kind.headerLength == 5 {
                base.storeBytes(of: id.bigEndian, toByteOffset: 5, as: UInt32.self)
            }
            if copyingPayload && payloadLength > 0 {
                payload.withUnsafeReadableBytes { source in
                    (base + headerLength).copyMemory(from: source.baseAddress!, byteCount: payloadLength)
                }
            }
            return total
        }
    }

    /// Queues bytes that are written as they are (the hello).
    mutating func appendRaw(_ bytes: ByteBuffer) {
        var bytes = bytes
        self.byteCount += bytes.readableBytes
        self.withOwnedTail(capacity: bytes.readableBytes, pool: nil) { $0.writeBuffer(&bytes) }
    }

    /// Takes everything queued, leaving the queue empty: the buffers to write first, then the coalescing buffer
    /// (the queue's own, which can be recycled once written), if any.
    mutating func takeAll() -> (earlier: [ByteBuffer], tail: ByteBuffer?) {
        defer {
            self.earlier = []
            self.byteCount = 0
        }
        return (self.earlier, self.tail.take())
    }

    @inline(__always)
    private mutating func withOwnedTail(
        capacity: Int,
        pool: @autoclosure () -> FlushBufferPool?,
        _ body: (inout ByteBuffer) -> Void
    ) {
        if self.tail != nil {
            body(&self.tail!)
        } else {
            var tail = pool()?.take() ?? ByteBufferAllocator().buffer(capacity: max(Self.initialCapacity, capacity))
            body(&tail)
            self.tail = tail
        }
    }
}

/// One spare coalescing buffer per event loop: the buffer of the last flush on that loop, handed to the next
/// connection of the loop that needs one. Reusing it costs nothing once the channel has written it; while the
/// channel still holds it, `clear()` copies on write, so reuse is always safe. Kept per event loop, not per
/// connection, so that idle connections hold no write buffer. Touched only on its event loop.
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

    /// Keeps `buffer` for the next flush, unless it grew large.
    @inline(__always)
    func recycle(_ buffer: ByteBuffer) {
        if buffer.capacity <= 64 * 1024 { self.spare = buffer }
    }
}

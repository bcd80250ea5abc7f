import NIOCore

/// Frames waiting to be written to the peer, coalesced: small frames are copied into one buffer, so a burst of
/// sends costs one write and one flush; a payload of ``largePayloadThreshold`` bytes or more is queued as it is,
/// so a large message is never copied before the kernel copies it.
///
/// A value without I/O. The coalescing buffer comes from the caller when the queue needs a new one (the runtime
/// keeps one spare buffer per event loop); the frames' bytes are those of PROTOCOL.md:
///
/// ```
/// +----------------+----------+------------------------+-------------+
/// | length: UInt32 | kind: u8 | id: UInt32 (kinds 2-4) | payload ... |
/// +----------------+----------+------------------------+-------------+
/// ```
@usableFromInline
package struct OutboundQueue {
    /// Payloads of at least this many bytes (32 KiB) are written without copying (`writev` of header and payload).
    @inlinable
    package static var largePayloadThreshold: Int { 32 * 1024 }

    /// The capacity of a coalescing buffer the queue allocates itself, in bytes: 16 KiB, or the frame's size if larger.
    @inlinable
    static var initialCapacity: Int { 16 * 1024 }

    /// What one flush takes from the queue: the buffers to write first, then the coalescing buffer, in that order.
    @usableFromInline
    package struct Batch {
        /// Large payloads and the coalescing buffers written before them, in order.
        @usableFromInline
        package var earlier: [ByteBuffer]
        /// The coalescing buffer small frames were copied into, last; the queue's own, so it can be reused once
        /// written.
        @usableFromInline
        package var tail: ByteBuffer?

        /// Makes a batch of `earlier`, then `tail`.
        @inlinable
        package init(earlier: [ByteBuffer], tail: ByteBuffer?) {
            self.earlier = earlier
            self.tail = tail
        }

        /// Whether the batch holds no buffer at all.
        @inlinable
        package var isEmpty: Bool { self.earlier.isEmpty && self.tail == nil }

        /// The batch's buffers in the order they must be written, `tail` last.
        package var buffers: [ByteBuffer] { self.earlier + (self.tail.map { [$0] } ?? []) }
    }

    /// Buffers queued before ``tail``: large payloads and the coalescing buffers written before them.
    @usableFromInline
    var earlier: [ByteBuffer] = []
    /// The coalescing buffer small frames are copied into, last in the queue. A queue of small frames is just this
    /// buffer, so taking it costs no array.
    @usableFromInline
    var tail: ByteBuffer?
    /// Bytes queued and not yet taken by a flush.
    @usableFromInline
    var queuedBytes = 0
    /// Bytes taken by flushes so far, wrapping: with what the channel still buffers, how far the socket has taken
    /// this side's bytes (a keepalive's measure of a peer that reads slowly).
    @usableFromInline
    package internal(set) var takenBytes = 0
    /// The writable bytes of ``tail``, taken once its storage is the queue's alone, so that small frames are stored
    /// with plain pointer writes: each call into a `ByteBuffer` from outside NIO costs dynamic exclusivity checks of
    /// its storage (a third of a one-way sender's time in the W3 profile). `nil` when there is no window.
    @usableFromInline
    var window: UnsafeMutableRawBufferPointer?
    /// Bytes stored through ``window`` and not yet counted in ``tail``'s writer index.
    @usableFromInline
    var windowUsed = 0
    /// Proof that this copy of the queue alone holds ``window``: a copy of the queue shares it (and the tail's
    /// storage), and then neither stores through the window; both go through the buffer and its copy-on-write.
    @usableFromInline
    var windowOwner: WindowOwner?

    /// See ``OutboundQueue/windowOwner``.
    @usableFromInline
    final class WindowOwner {
        @usableFromInline
        init() {}
    }

    /// Makes an empty queue.
    @inlinable
    package init() {}

    /// Bytes queued and not yet taken by a flush, headers included.
    @inlinable
    package var byteCount: Int { self.queuedBytes }

    /// Whether nothing is queued.
    @inlinable
    package var isEmpty: Bool { self.earlier.isEmpty && self.tail == nil }

    /// Queues a frame: its header, then `payload` (copied if small, referenced if large).
    /// - Parameters:
    ///   - kind: The frame's kind.
    ///   - id: The request id, written for requests, replies and error replies; ignored for the other kinds.
    ///   - payload: The payload's readable bytes.
    ///   - spareBuffer: Asked only when a new coalescing buffer is needed: a cleared buffer to reuse, or `nil` to
    ///     allocate one.
    @inlinable
    @inline(__always)
    package mutating func appendFrame(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        spareBuffer: () -> ByteBuffer?
    ) {
        let headerLength = 4 + Self.headerLengthAfterLength(kind)
        let payloadLength = payload.readableBytes
        self.queuedBytes += headerLength + payloadLength
        if payloadLength < Self.largePayloadThreshold, let window = self.window,
            window.count - self.windowUsed >= headerLength + payloadLength,
            isKnownUniquelyReferenced(&self.windowOwner)
        {
            Self.store(kind, id: id, payload: payload, copyingPayload: true, at: window.baseAddress! + self.windowUsed)
            self.windowUsed += headerLength + payloadLength
            return
        }
        if payloadLength >= Self.largePayloadThreshold {
            self.withOwnedTail(capacity: headerLength, spareBuffer: spareBuffer) {
                Self.write(kind, id: id, payload: payload, copyingPayload: false, into: &$0)
            }
            self.earlier.append(self.tail.take()!)
            self.earlier.append(payload)
        } else {
            self.withOwnedTail(capacity: headerLength + payloadLength, spareBuffer: spareBuffer) {
                Self.write(kind, id: id, payload: payload, copyingPayload: true, into: &$0)
            }
            self.openWindow()
        }
    }

    /// Takes the tail's writable bytes as the ``window`` for the frames that follow. Its storage is the queue's alone
    /// from here on (the buffer copies it first if it is shared), and it stays so until the window is closed: only
    /// the queue's own methods reach the tail, and each closes the window first.
    @inlinable
    mutating func openWindow() {
        guard self.tail != nil else { return }
        self.window = self.tail!.withUnsafeMutableWritableBytes { $0 }
        self.windowUsed = 0
        // The owner is kept from window to window, so that opening one allocates nothing, unless a copy shares it.
        if !isKnownUniquelyReferenced(&self.windowOwner) { self.windowOwner = WindowOwner() }
    }

    /// Counts what was stored through the ``window`` in the tail's writer index, and drops the window.
    @inlinable
    @inline(__always)
    mutating func closeWindow() {
        guard self.window != nil else { return }
        // Moving the index copies nothing; were the storage shared with a copy of the queue, nothing was stored
        // through the window since the copy, so the bytes there are this copy's too, and its next write copies them.
        if self.windowUsed > 0 { self.tail!.moveWriterIndex(forwardBy: self.windowUsed) }
        self.window = nil
        self.windowUsed = 0
    }

    /// Queues a call's control frame (open, end, cancel or credit), written straight into the coalescing buffer
    /// with no buffer of its own.
    @usableFromInline
    package mutating func appendCallControlFrame(id: UInt32, _ frame: CallFrame, spareBuffer: () -> ByteBuffer?) {
        var written = 0
        self.withOwnedTail(capacity: 96, spareBuffer: spareBuffer) { buffer in
            let start = buffer.writerIndex
            buffer.writeCallFrame(id: id, frame)
            written = buffer.writerIndex - start
        }
        self.queuedBytes += written
    }

    /// Queues a descriptors frame (`0x0D`) announcing `count` (1 to 255) descriptors for the frame queued next.
    @inlinable
    package mutating func appendDescriptorsFrame(count: Int, spareBuffer: () -> ByteBuffer?) {
        precondition((1...255).contains(count), "a descriptors frame announces 1 to 255 descriptors")
        self.queuedBytes += 6
        self.withOwnedTail(capacity: 6, spareBuffer: spareBuffer) { buffer in
            buffer.writeInteger(UInt32(2))
            buffer.writeInteger(FrameKind.descriptors.rawValue)
            buffer.writeInteger(UInt8(count))
        }
    }

    /// Queues a shared-payload frame (`0x0E`): a frame of `kind` (and `id`) whose `length` bytes of payload are in the
    /// shared memory the descriptors frame queued just before passes.
    @inlinable
    package mutating func appendSharedPayloadFrame(
        _ kind: FrameKind,
        id: UInt32,
        length: Int,
        spareBuffer: () -> ByteBuffer?
    ) {
        self.queuedBytes += 18
        self.withOwnedTail(capacity: 18, spareBuffer: spareBuffer) { buffer in
            buffer.writeInteger(UInt32(14))
            buffer.writeInteger(FrameKind.sharedPayload.rawValue)
            buffer.writeInteger(kind.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt64(length))
        }
    }

    /// Queues bytes that are written as they are (a going-away frame made elsewhere).
    ///
    /// On an empty queue the bytes themselves become the coalescing buffer, so that a going-away frame sent to every
    /// idle connection at a shutdown costs no new buffer of ``initialCapacity`` bytes each (16 KiB times the
    /// connections, at once); were more to follow, writing into them copies them first if they are shared.
    @inlinable
    package mutating func appendRaw(_ bytes: ByteBuffer) {
        var bytes = bytes
        self.closeWindow()
        self.queuedBytes += bytes.readableBytes
        guard self.tail != nil else {
            self.tail = bytes
            return
        }
        self.tail!.writeBuffer(&bytes)
    }

    /// Takes everything queued, leaving the queue empty.
    @inlinable
    package mutating func takeAll() -> Batch {
        self.closeWindow()
        let batch = Batch(earlier: self.earlier, tail: self.tail.take())
        self.earlier = []
        self.takenBytes &+= self.queuedBytes
        self.queuedBytes = 0
        return batch
    }

    /// Bytes of a frame header after the length field: the kind, and the id where there is one. The same as
    /// ``FrameKind/headerLength``, spelled out here so that it inlines into the caller.
    @inlinable
    @inline(__always)
    static func headerLengthAfterLength(_ kind: FrameKind) -> Int {
        switch kind {
        case .message, .goAway, .descriptors, .sharedPayload: 1
        default: 5
        }
    }

    /// Stores the header (and the payload) with plain pointer writes, in one call into the buffer: one capacity
    /// check and one writer-index move per frame, instead of one per field.
    @inlinable
    @inline(__always)
    static func write(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        copyingPayload: Bool,
        into buffer: inout ByteBuffer
    ) {
        let afterLength = Self.headerLengthAfterLength(kind)
        let headerLength = 4 + afterLength
        let payloadLength = payload.readableBytes
        let total = headerLength + (copyingPayload ? payloadLength : 0)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { target in
            Self.store(kind, id: id, payload: payload, copyingPayload: copyingPayload, at: target.baseAddress!)
            return total
        }
    }

    /// Stores the header (and the payload) at `base`, which has room for them.
    @inlinable
    @inline(__always)
    static func store(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        copyingPayload: Bool,
        at base: UnsafeMutableRawPointer
    ) {
        let afterLength = Self.headerLengthAfterLength(kind)
        let headerLength = 4 + afterLength
        let payloadLength = payload.readableBytes
        base.storeBytes(of: UInt32(truncatingIfNeeded: afterLength + payloadLength).bigEndian, as: UInt32.self)
        base.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
        if afterLength == 5 {
            base.storeBytes(of: id.bigEndian, toByteOffset: 5, as: UInt32.self)
        }
        if copyingPayload && payloadLength > 0 {
            payload.withUnsafeReadableBytes { source in
                (base + headerLength).copyMemory(from: source.baseAddress!, byteCount: payloadLength)
            }
        }
    }

    /// Runs `body` on the coalescing buffer, making one first if there is none.
    @inlinable
    @inline(__always)
    mutating func withOwnedTail(
        capacity: Int,
        spareBuffer: () -> ByteBuffer?,
        _ body: (inout ByteBuffer) -> Void
    ) {
        self.closeWindow()
        if self.tail != nil {
            body(&self.tail!)
        } else {
            var tail = spareBuffer() ?? ByteBufferAllocator().buffer(capacity: max(Self.initialCapacity, capacity))
            body(&tail)
            self.tail = tail
        }
    }
}

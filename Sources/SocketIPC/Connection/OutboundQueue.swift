import NIOCore

/// Frames waiting to be handed to the channel, coalesced: small frames are copied into one buffer, so a burst of
/// sends costs one write and one flush; a payload of ``largePayloadThreshold`` bytes or more is queued as it is,
/// so a large message is never copied before the kernel copies it.
struct OutboundQueue {
    /// Payloads at least this large are written without copying (`writev` of header and payload).
    static let largePayloadThreshold = 32 * 1024
    private static let initialCapacity = 16 * 1024

    private var buffers: [ByteBuffer] = []
    private var tailIsOwned = false
    /// Bytes queued and not yet handed to the channel.
    private(set) var byteCount = 0

    var isEmpty: Bool { self.buffers.isEmpty }

    /// Queues a frame made of `writeHeader` followed by `payload`.
    @inline(__always)
    mutating func append(
        headerLength: Int,
        payload: ByteBuffer,
        writeHeader: (inout ByteBuffer) -> Void
    ) {
        let payloadLength = payload.readableBytes
        self.byteCount += headerLength + payloadLength
        if payloadLength >= Self.largePayloadThreshold {
            self.withOwnedTail(capacity: headerLength) { writeHeader(&$0) }
            self.buffers.append(payload)
            self.tailIsOwned = false
        } else {
            self.withOwnedTail(capacity: headerLength + payloadLength) { tail in
                writeHeader(&tail)
                var payload = payload
                tail.writeBuffer(&payload)
            }
        }
    }

    /// Queues bytes that are written as they are (the hello).
    mutating func appendRaw(_ bytes: ByteBuffer) {
        var bytes = bytes
        self.byteCount += bytes.readableBytes
        self.withOwnedTail(capacity: bytes.readableBytes) { $0.writeBuffer(&bytes) }
    }

    /// Takes everything queued, leaving the queue empty.
    mutating func takeAll() -> [ByteBuffer] {
        defer {
            self.buffers = []
            self.tailIsOwned = false
            self.byteCount = 0
        }
        return self.buffers
    }

    @inline(__always)
    private mutating func withOwnedTail(capacity: Int, _ body: (inout ByteBuffer) -> Void) {
        if self.tailIsOwned {
            body(&self.buffers[self.buffers.count - 1])
        } else {
            var tail = ByteBufferAllocator().buffer(capacity: max(Self.initialCapacity, capacity))
            body(&tail)
            self.buffers.append(tail)
            self.tailIsOwned = true
        }
    }
}

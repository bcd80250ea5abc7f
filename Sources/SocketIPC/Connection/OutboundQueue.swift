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

    /// Queues a frame: its header, then `payload` (copied if small, referenced if large).
    @inline(__always)
    mutating func appendFrame(_ kind: FrameKind, id: UInt32, payload: ByteBuffer) {
        let headerLength = 4 + kind.headerLength
        let payloadLength = payload.readableBytes
        self.byteCount += headerLength + payloadLength
        if payloadLength >= Self.largePayloadThreshold {
            self.withOwnedTail(capacity: headerLength) {
                Self.write(kind, id: id, payload: payload, copyingPayload: false, into: &$0)
            }
            self.buffers.append(payload)
            self.tailIsOwned = false
        } else {
            self.withOwnedTail(capacity: headerLength + payloadLength) {
                Self.write(kind, id: id, payload: payload, copyingPayload: true, into: &$0)
            }
        }
    }

    /// Stores the header (and the payload) with plain pointer writes: one capacity check and one writer-index move
    /// per frame, instead of one per field.
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
        buffer.reserveCapacity(minimumWritableBytes: total)
        buffer.withUnsafeMutableWritableBytes { target in
            target.storeBytes(of: UInt32(truncatingIfNeeded: kind.headerLength + payloadLength).bigEndian, as: UInt32.self)
            target.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
            if kind.headerLength == 5 {
                target.storeBytes(of: id.bigEndian, toByteOffset: 5, as: UInt32.self)
            }
            if copyingPayload && payloadLength > 0 {
                payload.withUnsafeReadableBytes { source in
                    (target.baseAddress! + headerLength).copyMemory(from: source.baseAddress!, byteCount: payloadLength)
                }
            }
        }
        buffer.moveWriterIndex(forwardBy: total)
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

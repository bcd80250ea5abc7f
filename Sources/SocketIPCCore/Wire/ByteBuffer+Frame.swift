import NIOCore

extension ByteBuffer {
    /// Writes a frame header: length, kind and (for requests and replies) the id. The payload follows.
    @inline(__always)
    package mutating func writeFrameHeader(_ kind: FrameKind, id: UInt32 = 0, payloadLength: Int) {
        // Three plain integer writes: `writeMultipleIntegers` copies through a generic path that costs more than
        // the rest of a small send.
        self.writeInteger(UInt32(truncatingIfNeeded: kind.headerLength + payloadLength))
        self.writeInteger(kind.rawValue)
        if kind.headerLength == 5 { self.writeInteger(id) }
    }

    /// Writes a whole frame.
    package mutating func writeFrame(_ frame: Frame) {
        switch frame {
        case .message(var payload):
            self.writeFrameHeader(.message, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .request(let id, var payload):
            self.writeFrameHeader(.request, id: id, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .reply(let id, var payload):
            self.writeFrameHeader(.reply, id: id, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .errorReply(let id, let message):
            self.writeFrameHeader(.errorReply, id: id, payloadLength: message.utf8.count)
            self.writeString(message)
        case .goAway(let reason, let message):
            self.writeFrameHeader(.goAway, payloadLength: 1 + message.utf8.count)
            self.writeInteger(reason.rawValue)
            self.writeString(message)
        case .call(let id, let frame):
            self.writeCallFrame(id: id, frame)
        case .ping(let id):
            self.writeFrameHeader(.ping, id: id, payloadLength: 0)
        case .pong(let id):
            self.writeFrameHeader(.pong, id: id, payloadLength: 0)
        case .descriptors(let count):
            precondition((1...255).contains(count), "a descriptors frame announces 1 to 255 descriptors")
            self.writeFrameHeader(.descriptors, payloadLength: 1)
            self.writeInteger(UInt8(count))
        case .sharedPayload(let kind, let id, let length):
            self.writeFrameHeader(.sharedPayload, payloadLength: 13)
            self.writeInteger(kind.rawValue)
            self.writeInteger(id)
            self.writeInteger(UInt64(length))
        }
    }
}

import NIOCore

/// Decodes the framed protocol from a byte stream: first the peer's hello, then frames, each handed out as soon as
/// its last byte is there, without copying the payload.
///
/// The decoder checks a frame's declared length against ``maximumPayload`` before waiting for its bytes, so a peer
/// that merely claims a huge frame never makes the receiver allocate it.
@usableFromInline
package struct FrameDecoder: Sendable {
    /// The maximum payload PROTOCOL.md's test vectors assume, and every SocketIPC side starts with: 16 MiB.
    package static let defaultMaximumPayload = 16 * 1024 * 1024

    /// The largest payload accepted, in bytes.
    @usableFromInline
    package let maximumPayload: Int
    /// Whether the peer's hello is still to come.
    @usableFromInline
    package var awaitingHello = true
    /// The flags of the peer's hello, once read: which frames beyond version 1's it may send.
    @usableFromInline
    package var peerFlags: HelloFlags = []
    /// The flags of this side's hello: a peer's flag counts only if this side set it too.
    @usableFromInline
    package let localFlags: HelloFlags

    /// - Parameter maximumPayload: The largest payload accepted, in bytes; clamped to what a frame can carry
    ///   (4 GiB − 6 bytes), so that no arithmetic on it can overflow.
    ///   - localFlags: The flags of this side's hello: which optional frames this side speaks.
    package init(maximumPayload: Int, localFlags: HelloFlags = Hello.flags) {
        self.maximumPayload = min(max(maximumPayload, 0), Int(UInt32.max) - 5)
        self.localFlags = localFlags
    }

    /// Whether the peer's hello has been read and accepted.
    package var helloReceived: Bool { !self.awaitingHello }

    /// How many bytes `buffer` must hold for the next step of decoding to complete: the hello, a frame's length
    /// field, or the whole frame once its length is known. Call it after ``next(from:)`` returned `nil` for `buffer`:
    /// the answer is then more than `buffer` holds, and ``next(from:)`` has checked every byte that is there (the
    /// magic, the length, the kind), so feeding it the missing bytes in any pieces refuses a bad frame at the first
    /// byte that shows it is bad.
    @inlinable
    @inline(__always)
    package func bytesNeeded(toComplete buffer: ByteBuffer) -> Int {
        if self.awaitingHello { return Hello.length }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return 4 }
        return 4 + Int(length)
    }

    /// Takes the next whole frame from the front of `buffer`, or returns `nil` when more bytes are needed.
    /// - Throws: ``SocketIPCError`` with code `notSocketIPCPeer`, `unsupportedVersion`, `protocolViolation` or
    ///   `messageTooLarge`; the connection cannot continue after any of them.
    ///
    /// Inlinable, so that the runtime's read loop decodes frames in place, across the module boundary.
    @inlinable
    @inline(__always)
    package mutating func next(from buffer: inout ByteBuffer) throws -> Frame? {
        if self.awaitingHello {
            guard try self.readHello(from: &buffer) else { return nil }
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        let frameLength = Int(length)
        guard frameLength >= 1 else { throw Self.zeroLength() }
        // The largest header is 5 bytes: refuse a length no kind could make valid before waiting for anything more.
        guard frameLength <= self.maximumPayload + 5 else {
            throw Self.tooLarge(frameLength: frameLength, limit: self.maximumPayload)
        }
        guard let kindByte = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self) else { return nil }
        guard let kind = FrameKind(rawValue: kindByte), kind.isVersion1 || self.peerFlags.contains(kind.requiredFlag)
        else {
            throw Self.unknownKind(kindByte)
        }
        let payloadLength = frameLength - kind.headerLength
        guard payloadLength >= 0 else { throw Self.tooShort(kind, frameLength: frameLength) }
        guard payloadLength <= self.maximumPayload else {
            throw Self.tooLarge(frameLength: frameLength, limit: self.maximumPayload)
        }
        guard buffer.readableBytes >= 4 + frameLength else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        switch kind {
        case .message:
            return .message(buffer.readSlice(length: payloadLength)!)
        case .request:
            let id = buffer.readInteger(as: UInt32.self)!
            return .request(id: id, payload: buffer.readSlice(length: payloadLength)!)
        case .reply:
            let id = buffer.readInteger(as: UInt32.self)!
            return .reply(id: id, payload: buffer.readSlice(length: payloadLength)!)
        case .errorReply:
            let id = buffer.readInteger(as: UInt32.self)!
            return .errorReply(id: id, message: PeerText.read(&buffer, length: payloadLength))
        case .descriptors:
            return try Self.descriptorsFrame(payload: buffer.readSlice(length: payloadLength)!)
        case .sharedPayload:
            return try self.sharedPayloadFrame(payload: buffer.readSlice(length: payloadLength)!)
        case .goAway:
            guard payloadLength >= 1 else { throw Self.missingReason() }
            let reasonByte = buffer.readInteger(as: UInt8.self)!
            let message = PeerText.read(&buffer, length: payloadLength - 1)
            return .goAway(GoAwayReason(rawValue: reasonByte) ?? .protocolViolation, message: message)
        default:
            let id = buffer.readInteger(as: UInt32.self)!
            var payload = buffer.readSlice(length: payloadLength)!
            return try Self.extensionFrame(kind, id: id, payload: &payload)
        }
    }

    /// A message, request, reply or call message: the frames that carry data, which ``nextDataFrame(from:)`` hands
    /// out without making a ``Frame``: `kind` is ``FrameKind/message``, ``FrameKind/request``, ``FrameKind/reply``
    /// or ``FrameKind/callMessage``; `id` the request or call id (0 for a message); `payload` a slice of the bytes
    /// read. A tuple, not a struct: the read loop then releases the payload with a plain release per frame, where
    /// a struct was destroyed through an outlined call.
    @usableFromInline
    package typealias DataFrame = (kind: FrameKind, id: UInt32, payload: ByteBuffer)

    /// Takes the message, request, reply or call message (from a peer that set ``HelloFlags/calls``) at the front of
    /// `buffer` when all of it is there and the hello is behind;
    /// returns `nil` and leaves `buffer` as it was otherwise: for any other kind, a frame not yet whole, or one that
    /// ``next(from:)`` refuses (which then says why).
    ///
    /// The read loop's fast path: the header is read with one look at the buffer's bytes and the payload taken as one
    /// slice, where ``next(from:)`` calls into the buffer for each field (each call costs dynamic exclusivity checks
    /// of the buffer's storage from outside NIO) and makes a ``Frame``.
    @inlinable
    @inline(__always)
    package func nextDataFrame(from buffer: inout ByteBuffer) -> DataFrame? {
        self.nextDataFrame(from: &buffer, window: ReadableBytesWindow(buffer))
    }

    /// As ``nextDataFrame(from:)``, looking at the bytes through `window`, taken from `buffer` once for many frames
    /// (see ``ReadableBytesWindow``); returns `nil` as well when `buffer` no longer matches the window.
    @inlinable
    @inline(__always)
    package func nextDataFrame(from buffer: inout ByteBuffer, window: ReadableBytesWindow) -> DataFrame? {
        guard let header = self.nextDataFrameHeader(in: buffer, window: window) else { return nil }
        let payload = buffer.getSlice(at: buffer.readerIndex + header.payloadOffset, length: header.payloadLength)!
        buffer.moveReaderIndex(forwardBy: header.frameLength)
        return (header.kind, header.id, payload)
    }

    /// Where a data frame lies at the front of a buffer (see ``nextDataFrameHeader(in:window:)``): its kind and id,
    /// its payload's offset from the buffer's reader index and its length, and the whole frame's length, in bytes.
    @usableFromInline
    package typealias DataFrameHeader = (kind: FrameKind, id: UInt32, payloadOffset: Int, payloadLength: Int, frameLength: Int)

    /// What ``nextDataFrame(from:window:)`` would take, without taking it: `buffer` is left as it is, and the caller
    /// takes the payload (`getSlice` at the reader index plus `payloadOffset`) and moves the reader index by
    /// `frameLength`. The read loop lends a one-way message's payload to its handler so, as a temporary slice: taken
    /// out of a ``DataFrame``, it was retained once more for the call (found in a profile of W3's server).
    @inlinable
    @inline(__always)
    package func nextDataFrameHeader(in buffer: ByteBuffer, window: ReadableBytesWindow) -> DataFrameHeader? {
        guard !self.awaitingHello, let bytes = window.bytes(of: buffer), bytes.count >= 5 else { return nil }
        let maximumPayload = self.maximumPayload
        let callMessages = self.peerFlags.contains(FrameKind.callMessage.requiredFlag)
        // The kind, id and frame length of a whole data frame within the limit; `nil` for anything else. The kind is
        // matched byte by byte, where `FrameKind(rawValue:)` is a call per frame.
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
        guard bytes.count - 4 >= length else { return nil }
        let kind: FrameKind
        switch bytes[4] {
        case FrameKind.message.rawValue: kind = .message
        case FrameKind.request.rawValue: kind = .request
        case FrameKind.reply.rawValue: kind = .reply
        case FrameKind.callMessage.rawValue where callMessages: kind = .callMessage
        default: return nil
        }
        if kind == .message {
            guard length >= 1, length - 1 <= maximumPayload else { return nil }
            return (kind, 0, 5, length - 1, 4 + length)
        }
        guard length >= 5, length - 5 <= maximumPayload else { return nil }
        let id = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 5, as: UInt32.self))
        return (kind, id, 9, length - 5, 4 + length)
    }

    /// Decodes a frame of kind `0x06` to `0x0C`, out of line: calls cost the read loop of version 1's frames nothing.
    @usableFromInline
    package static func extensionFrame(_ kind: FrameKind, id: UInt32, payload: inout ByteBuffer) throws -> Frame {
        switch kind {
        case .ping: .ping(id: id)
        case .pong: .pong(id: id)
        default: .call(id: id, try CallFrame.decode(kind, payload: &payload))
        }
    }

    /// Decodes a descriptors frame's payload: exactly one byte, a count of 1 to 255.
    @usableFromInline
    package static func descriptorsFrame(payload: ByteBuffer) throws -> Frame {
        guard payload.readableBytes == 1, let count = payload.getInteger(at: payload.readerIndex, as: UInt8.self),
            count > 0
        else {
            throw SocketIPCError(
                .protocolViolation,
                "received a descriptors frame whose payload is not one count of 1 to 255 (\(payload.readableBytes) bytes)"
            )
        }
        return .descriptors(count: Int(count))
    }

    /// Decodes a shared-payload frame's payload: the carried frame's kind `u8`, its id `u32` (0 for a message) and
    /// the payload's length `u64`, exactly 13 bytes.
    @usableFromInline
    package func sharedPayloadFrame(payload: ByteBuffer) throws -> Frame {
        var payload = payload
        guard payload.readableBytes == 13, let kindByte = payload.readInteger(as: UInt8.self),
            let id = payload.readInteger(as: UInt32.self), let length = payload.readInteger(as: UInt64.self)
        else {
            throw SocketIPCError(
                .protocolViolation,
                "received a shared-payload frame whose payload is not 13 bytes (kind, id, length)"
            )
        }
        let carriable: [FrameKind] = [.message, .request, .reply, .callMessage]
        guard let kind = FrameKind(rawValue: kindByte), carriable.contains(kind),
            kind != .callMessage || self.peerFlags.contains(.calls)
        else {
            throw SocketIPCError(
                .protocolViolation,
                "received a shared-payload frame for kind 0x\(String(kindByte, radix: 16)), which cannot carry one"
            )
        }
        guard length <= UInt64(self.maximumPayload) else {
            throw SocketIPCError(
                .messageTooLarge,
                "the peer announced a shared payload of \(length) bytes; the maximum is \(self.maximumPayload)"
            )
        }
        return .sharedPayload(kind: kind, id: kind == .message ? 0 : id, length: Int(length))
    }

    /// Checks the hello at the front of `buffer` as far as it is there; returns whether it is whole and accepted.
    @usableFromInline
    package mutating func readHello(from buffer: inout ByteBuffer) throws -> Bool {
        let available = min(buffer.readableBytes, 4)
        // Fail as soon as the first bytes differ from the magic, rather than waiting for a whole hello.
        if let prefix = buffer.getBytes(at: buffer.readerIndex, length: available) {
            let magic = withUnsafeBytes(of: Hello.magic.bigEndian) { Array($0) }
            if prefix[...] != magic[..<available] {
                throw SocketIPCError(
                    .notSocketIPCPeer,
                    "the peer does not speak SocketIPC's framed protocol (its first bytes are not the magic 'SIPC')"
                )
            }
        }
        guard buffer.readableBytes >= Hello.length else { return false }
        buffer.moveReaderIndex(forwardBy: 4)
        let version = buffer.readInteger(as: UInt8.self)!
        let flags = buffer.readInteger(as: UInt8.self)!
        buffer.moveReaderIndex(forwardBy: 2)  // reserved: ignored
        guard version == Hello.version else {
            throw SocketIPCError(
                .unsupportedVersion,
                "the peer speaks SocketIPC protocol version \(version); this side speaks version \(Hello.version)"
            )
        }
        // Only the flags this side knows count: a flag it does not know names frames it would refuse anyway.
        self.peerFlags = HelloFlags(rawValue: flags).intersection(self.localFlags)
        self.awaitingHello = false
        return true
    }

    // The errors are made out of line, so that the inlined decoder stays small.

    @usableFromInline
    package static func zeroLength() -> SocketIPCError {
        SocketIPCError(.protocolViolation, "received a frame of length 0; every frame has a kind byte")
    }

    @usableFromInline
    package static func unknownKind(_ kindByte: UInt8) -> SocketIPCError {
        SocketIPCError(.protocolViolation, "received a frame of unknown kind 0x\(String(kindByte, radix: 16))")
    }

    @usableFromInline
    package static func tooShort(_ kind: FrameKind, frameLength: Int) -> SocketIPCError {
        SocketIPCError(
            .protocolViolation,
            "received \(kind.nameWithArticle) frame of length \(frameLength); it needs at least \(kind.headerLength)"
        )
    }

    @usableFromInline
    package static func missingReason() -> SocketIPCError {
        SocketIPCError(.protocolViolation, "received a going-away frame without its reason byte")
    }

    @usableFromInline
    package static func tooLarge(frameLength: Int, limit: Int) -> SocketIPCError {
        SocketIPCError(
            .messageTooLarge,
            "received a frame of length \(frameLength); payloads may be at most \(limit) bytes"
        )
    }
}

import NIOCore

/// A frame of a call (kinds `0x06` to `0x0A`, and `0x0F`), as decoded: what follows the id. See PROTOCOL.md, "Calls".
///
/// Calls are numbered as HTTP/2 numbers its streams (RFC 9113, section 5.1.1): the side that connected opens calls
/// with odd ids, the side that accepted with even ids, so one id names one call on the connection whichever side
/// sends the frame.
@usableFromInline
package enum CallFrame: Equatable, Sendable {
    /// `0x06`: opens call `id`.
    case open(CallOpen)
    /// `0x07`: one message of the call's stream, either way.
    case message(ByteBuffer)
    /// `0x08`: the sender's last frame of the call: the caller's half-close (always ``CallStatus/ok``), or the
    /// handler's final status.
    case end(CallStatus)
    /// `0x09`: the caller gives the call up.
    case cancel(CallCancelReason)
    /// `0x0A`: the sender of this frame accepts `increment` more bytes of the call's messages.
    case credit(UInt32)
    /// `0x0F`: the sender of this frame has a message of the call to send that costs `cost` bytes of credit (its
    /// frame's bytes: 9 and the payload), more than it has; only between sides that both set
    /// ``HelloFlags/strictCredit``.
    case blocked(UInt32)

    /// The kind byte of the frame.
    package var kind: FrameKind {
        switch self {
        case .open: .callOpen
        case .message: .callMessage
        case .end: .callEnd
        case .cancel: .callCancel
        case .credit: .callCredit
        case .blocked: .callBlocked
        }
    }
}

/// What opens a call: the method and the caller's deadline.
///
/// ```
/// +-----------+----------------------+------------------+----------------------+
/// | flags: u8 | timeout: u64 (ns)    | name length: u8  | method name (UTF-8)  |
/// +-----------+----------------------+------------------+----------------------+
/// ```
@usableFromInline
package struct CallOpen: Equatable, Sendable {
    /// The method's name, 0 to 255 bytes of UTF-8.
    package var method: String
    /// How long the caller waits, from the moment it sent the frame, in nanoseconds; 0 for no deadline. Relative,
    /// as gRPC's `grpc-timeout`, so that the two sides' clocks need not agree.
    package var timeoutNanoseconds: UInt64
    /// Bit ``takesOneResponse``; the others are sent as 0, and a receiver ignores those it does not know.
    package var flags: UInt8
    /// Flag `0x01`: the caller takes one response (a unary or client-streaming call). A handler's side whose method
    /// streams its responses ends such a call at once with status `invalidMessage`: the call could only wait for the
    /// stream's end, or fail at its second response. A version-1 receiver ignores it, as all flags.
    package static let takesOneResponse: UInt8 = 0x01
    /// Whether the name's bytes were valid UTF-8. When not, ``method`` holds them with each invalid sequence replaced
    /// by U+FFFD, for display only: names are matched byte for byte (PROTOCOL.md), so such a name matches none.
    package var methodIsValidUTF8: Bool

    /// The fixed bytes before the name.
    static let fixedLength = 1 + 8 + 1

    package init(method: String, timeoutNanoseconds: UInt64 = 0, flags: UInt8 = 0, methodIsValidUTF8: Bool = true) {
        self.method = method
        self.timeoutNanoseconds = timeoutNanoseconds
        self.flags = flags
        self.methodIsValidUTF8 = methodIsValidUTF8
    }
}

/// How a call, or one direction of it, ended.
///
/// ```
/// +------------+-----------------+------------------+-----------------+--------------+-------------------+
/// | status: u8 | code length: u8 | code (UTF-8)     | text length: u16| text (UTF-8) | details (rest)    |
/// +------------+-----------------+------------------+-----------------+--------------+-------------------+
/// ```
@usableFromInline
package struct CallStatus: Equatable, Sendable {
    /// The outcome.
    @usableFromInline
    package var code: Code
    /// The application's error code (``Code/applicationError``), 0 to 255 bytes of UTF-8; with ``Code/unavailable``,
    /// ``refusedUnstarted`` or empty; empty otherwise.
    package var errorCode: String
    /// A description for a person, 0 to 65,535 bytes of UTF-8.
    package var message: String
    /// The application error's details, encoded by the service's codec; empty for none.
    package var details: ByteBuffer

    /// The status byte. A receiver treats a value it does not know as ``handlerFailed``.
    @usableFromInline
    package enum Code: UInt8, Sendable {
        /// The call succeeded (or, from the caller: it sends no more messages).
        case ok = 0x00
        /// The handler threw an application error: ``CallStatus/errorCode`` and ``CallStatus/details`` say which.
        case applicationError = 0x01
        /// The peer serves no method of that name.
        case unknownMethod = 0x02
        /// The handler was cancelled on its side (its server shut down, for example).
        case cancelled = 0x03
        /// The call's deadline passed.
        case deadlineExceeded = 0x04
        /// A message of the call could not be decoded, or the call had the wrong shape (two requests for a
        /// unary method).
        case invalidMessage = 0x05
        /// The handler failed otherwise; the text says how.
        case handlerFailed = 0x06
        /// The peer is going away and takes no new calls.
        case unavailable = 0x07
        /// The peer has too many calls in progress on this connection.
        case resourceExhausted = 0x08
    }

    /// Success, with nothing else.
    package static let ok = CallStatus(code: .ok)

    /// The code of an ``Code/unavailable`` end that says the handler's side did not start a handler for the call (it
    /// refused it at its open, as it goes away): the caller may make the call again elsewhere, whatever its method,
    /// as gRPC retries a stream refused with `REFUSED_STREAM`. Without it, an unavailable end promises nothing (a
    /// stream the handler's side ended as it went away may have had its effect). PROTOCOL.md, call end.
    package static let refusedUnstarted = "refused"

    /// Whether this end says the handler's side did not start a handler for the call (``refusedUnstarted``).
    package var refusedUnstarted: Bool { self.code == .unavailable && self.errorCode == Self.refusedUnstarted }

    @usableFromInline
    package init(code: Code, errorCode: String = "", message: String = "", details: ByteBuffer = ByteBuffer()) {
        self.code = code
        self.errorCode = errorCode
        self.message = message
        self.details = details
    }
}

/// Why a caller gave a call up.
@usableFromInline
package enum CallCancelReason: UInt8, Sendable {
    /// The caller's task was cancelled.
    case cancelled = 0x00
    /// The caller's deadline passed.
    case deadlineExceeded = 0x01
}

extension CallFrame {
    /// Decodes the payload of a frame of `kind` (`0x06` to `0x0A`, `0x0F`), after its id.
    /// - Throws: ``SocketIPCError`` with code `protocolViolation` for a payload of the wrong shape.
    @usableFromInline
    package static func decode(_ kind: FrameKind, payload: inout ByteBuffer) throws -> CallFrame {
        switch kind {
        case .callOpen:
            guard let flags = payload.readInteger(as: UInt8.self),
                let timeout = payload.readInteger(as: UInt64.self),
                let nameLength = payload.readInteger(as: UInt8.self),
                payload.readableBytes == Int(nameLength),
                let name = payload.readBytes(length: Int(nameLength))
            else { throw Self.malformed(kind, payload: payload) }
            let method = String(validating: name, as: UTF8.self)
            return .open(
                CallOpen(
                    method: method ?? String(decoding: name, as: UTF8.self),
                    timeoutNanoseconds: timeout,
                    flags: flags,
                    methodIsValidUTF8: method != nil
                )
            )
        case .callMessage:
            return .message(payload)
        case .callEnd:
            guard let statusByte = payload.readInteger(as: UInt8.self),
                let codeLength = payload.readInteger(as: UInt8.self),
                payload.readableBytes >= Int(codeLength) + 2
            else { throw Self.malformed(kind, payload: payload) }
            // Escaped as they are read (PeerText): they end up in error messages and log lines. The message keeps
            // its newlines and tabs, as an application error's message may have them.
            let errorCode = PeerText.read(&payload, length: Int(codeLength))
            let textLength = Int(payload.readInteger(as: UInt16.self)!)
            guard payload.readableBytes >= textLength else { throw Self.malformed(kind, payload: payload) }
            let message = PeerText.read(&payload, length: textLength, limit: .max, keepingNewlines: true)
            let code = CallStatus.Code(rawValue: statusByte) ?? .handlerFailed
            return .end(CallStatus(code: code, errorCode: errorCode, message: message, details: payload))
        case .callCancel:
            guard payload.readableBytes == 1, let reason = payload.readInteger(as: UInt8.self) else {
                throw Self.malformed(kind, payload: payload)
            }
            return .cancel(CallCancelReason(rawValue: reason) ?? .cancelled)
        case .callCredit:
            guard payload.readableBytes == 4, let increment = payload.readInteger(as: UInt32.self) else {
                throw Self.malformed(kind, payload: payload)
            }
            return .credit(increment)
        case .callBlocked:
            guard payload.readableBytes == 4, let cost = payload.readInteger(as: UInt32.self) else {
                throw Self.malformed(kind, payload: payload)
            }
            return .blocked(cost)
        default:
            preconditionFailure("\(kind) is not a call frame")
        }
    }

    static func malformed(_ kind: FrameKind, payload: ByteBuffer) -> SocketIPCError {
        SocketIPCError(.protocolViolation, "received \(kind.nameWithArticle) frame whose payload is malformed")
    }
}

extension ByteBuffer {
    /// Writes call `id`'s frame, whole.
    package mutating func writeCallFrame(id: UInt32, _ frame: CallFrame) {
        switch frame {
        case .open(let open):
            let nameLength = Self.utf8Length(of: open.method, atMost: 255)
            self.writeFrameHeader(.callOpen, id: id, payloadLength: CallOpen.fixedLength + nameLength)
            self.writeInteger(open.flags)
            self.writeInteger(open.timeoutNanoseconds)
            self.writeInteger(UInt8(nameLength))
            self.writeUTF8(open.method, length: nameLength)
        case .message(var payload):
            self.writeFrameHeader(.callMessage, id: id, payloadLength: payload.readableBytes)
            self.writeBuffer(&payload)
        case .end(var status):
            let codeLength = Self.utf8Length(of: status.errorCode, atMost: 255)
            let textLength = Self.utf8Length(of: status.message, atMost: 65535)
            self.writeFrameHeader(
                .callEnd,
                id: id,
                payloadLength: 1 + 1 + codeLength + 2 + textLength + status.details.readableBytes
            )
            self.writeInteger(status.code.rawValue)
            self.writeInteger(UInt8(codeLength))
            self.writeUTF8(status.errorCode, length: codeLength)
            self.writeInteger(UInt16(textLength))
            self.writeUTF8(status.message, length: textLength)
            self.writeBuffer(&status.details)
        case .cancel(let reason):
            self.writeFrameHeader(.callCancel, id: id, payloadLength: 1)
            self.writeInteger(reason.rawValue)
        case .credit(let increment):
            self.writeFrameHeader(.callCredit, id: id, payloadLength: 4)
            self.writeInteger(increment)
        case .blocked(let cost):
            self.writeFrameHeader(.callBlocked, id: id, payloadLength: 4)
            self.writeInteger(cost)
        }
    }

    /// How many of `string`'s UTF-8 bytes fit in a field of at most `limit` bytes: all of them, or the longest prefix
    /// that ends where a Unicode scalar's encoding ends, so that a field cut short is still UTF-8 (a character of
    /// several scalars, a flag or an accented letter, may lose its last ones) (PROTOCOL.md: code,
    /// text and method name are UTF-8). Callers refuse a method name that does not fit before it gets here; a
    /// handler's error code or text beyond its field is cut.
    package static func utf8Length(of string: String, atMost limit: Int) -> Int {
        let utf8 = string.utf8
        guard utf8.count > limit else { return utf8.count }
        var length = limit
        // A byte 10xxxxxx continues the scalar before it: the prefix must end before that scalar starts.
        while length > 0, utf8[utf8.index(utf8.startIndex, offsetBy: length)] & 0xC0 == 0x80 { length -= 1 }
        return length
    }

    /// Writes the first `length` bytes of `string`'s UTF-8 (all of them, the usual case, through `writeString`'s
    /// contiguous copy; a prefix only for a string beyond its field's limit).
    mutating func writeUTF8(_ string: String, length: Int) {
        if length == string.utf8.count {
            self.writeString(string)
        } else {
            self.writeBytes(string.utf8.prefix(length))
        }
    }
}

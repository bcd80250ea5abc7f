import NIOCore
import SocketIPCCore

// Calls by name with encoded payloads, for tools that do not know the method's Swift types: a proxy, or a
// command-line client sending JSON it was given (as grpcurl does for gRPC).
extension Connection {
    /// Calls the method named `method` with `request` as its encoded request, and returns its encoded response.
    ///
    /// The bytes must be what the server's codec reads (JSON, by default). Errors are those of
    /// ``call(_:_:options:)``; a ``ServiceError``'s details stay encoded (``ServiceError/encodedDetails``).
    /// - Parameters:
    ///   - method: The method's name, 1 to 255 bytes of UTF-8 (``ServiceMethod/name``); another fails with
    ///     `invalidMessage` before anything is sent.
    ///   - request: The encoded request.
    ///   - timeout: The call's deadline, as ``CallOptions/timeout``; default none.
    /// - Returns: The encoded response.
    public func call(method: String, request: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        let options = CallOptions(timeout: timeout)
        return try await self.withOutgoingCall(method, options: options, takesOneResponse: true) { call in
            try await call.sendWithoutWaiting(request)
            call.finish()
            return try await Self.readSingleResponse(of: call, as: EncodedMessage.self, codec: PassthroughCodec())
                .bytes
        }
    }

    /// Calls the server-streaming method named `method` with `request` as its encoded request, and hands each
    /// encoded response to `body` as it comes; returns when the stream ends.
    /// - Throws: What ``serverStreaming(_:_:options:_:)`` throws, and what `body` throws (which cancels the call).
    public func serverStreaming(
        method: String,
        request: ByteBuffer,
        timeout: Duration? = nil,
        _ body: (ByteBuffer) async throws -> Void
    ) async throws {
        let options = CallOptions(timeout: timeout, codec: PassthroughCodec())
        try await self.withOutgoingCall(method, options: options) { call in
            try await call.sendWithoutWaiting(request)
            call.finish()
            for try await response in ServiceStream<EncodedMessage>(call: call, codec: PassthroughCodec()) {
                try await body(response.bytes)
            }
        }
    }
}

/// A message's bytes as they are, for ``PassthroughCodec``.
struct EncodedMessage: Codable, Sendable {
    var bytes: ByteBuffer

    init(bytes: ByteBuffer) { self.bytes = bytes }
    init(from decoder: any Decoder) throws {
        throw SocketIPCError(.invalidState, "EncodedMessage is read by PassthroughCodec only")
    }
    func encode(to encoder: any Encoder) throws {
        throw SocketIPCError(.invalidState, "EncodedMessage is written by PassthroughCodec only")
    }
}

/// A codec that hands ``EncodedMessage``s through untouched; used for untyped calls only.
struct PassthroughCodec: MessageCodec {
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        guard let message = value as? EncodedMessage else {
            throw SocketIPCError(.invalidState, "PassthroughCodec encodes EncodedMessage only")
        }
        return message.bytes
    }

    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        guard let value = EncodedMessage(bytes: buffer) as? Value else {
            throw SocketIPCError(.invalidState, "PassthroughCodec decodes EncodedMessage only")
        }
        return value
    }
}

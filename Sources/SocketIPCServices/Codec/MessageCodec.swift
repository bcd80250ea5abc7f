import NIOCore

/// How a service's requests, responses and error details become the bytes of call messages. ``JSONCodec`` is the
/// default; a service may use another (a binary format, a schema'd one), the same on both sides.
///
/// A codec that can write straight into a buffer implements ``encode(_:into:)`` too: SocketIPC then encodes each
/// message into a buffer it reuses on the event loop, instead of a new buffer per message (``JSONCodec`` saves the
/// buffer, not Foundation's own `Data`). A codec without it works as before: its buffer replaces the reused one.
public protocol MessageCodec: Sendable {
    /// Encodes `value` into a buffer.
    /// - Throws: Whatever the encoding throws (an `EncodingError`). A caller gets it as `invalidMessage`, with this
    ///   error as its cause; a handler's call ends with it as the handler's error.
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer
    /// Encodes `value` by appending its bytes to `buffer`, after its readable bytes (SocketIPC passes a cleared
    /// buffer that it reuses from message to message). Optional: the default calls ``encode(_:)``.
    /// - Throws: As ``encode(_:)``; what it may have written to `buffer` by then is discarded.
    func encode<Value: Encodable>(_ value: Value, into buffer: inout ByteBuffer) throws
    /// Decodes a `Value` from the readable bytes of `buffer`.
    /// - Throws: Whatever the decoding throws (a `DecodingError`); SocketIPC reports it as `invalidMessage`.
    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value
}

extension MessageCodec {
    /// Encodes `value` with ``encode(_:)``: an empty `buffer` is replaced by the encoded one (no copy), a non-empty
    /// one gets its bytes appended.
    /// - Throws: As ``encode(_:)``.
    public func encode<Value: Encodable>(_ value: Value, into buffer: inout ByteBuffer) throws {
        var encoded = try self.encode(value)
        if buffer.readableBytes == 0 {
            buffer = encoded
        } else {
            buffer.writeBuffer(&encoded)
        }
    }
}

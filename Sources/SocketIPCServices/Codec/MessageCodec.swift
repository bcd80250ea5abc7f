import NIOCore

/// How a service's requests, responses and error details become the bytes of call messages. ``JSONCodec`` is the
/// default; a service may use another (a binary format, a schema'd one), the same on both sides.
public protocol MessageCodec: Sendable {
    /// Encodes `value` into a buffer.
    /// - Throws: Whatever the encoding throws (an `EncodingError`); the call fails with it.
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer
    /// Decodes a `Value` from the readable bytes of `buffer`.
    /// - Throws: Whatever the decoding throws (a `DecodingError`); SocketIPC reports it as `invalidMessage`.
    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value
}

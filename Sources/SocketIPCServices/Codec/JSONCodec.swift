import Foundation
import NIOCore
import NIOFoundationCompat

/// The default ``MessageCodec``: JSON, UTF-8, through Foundation's `JSONEncoder` and `JSONDecoder`.
///
/// A top-level value of any `Codable` type is allowed (a string, a number, an optional), as RFC 8259 allows.
public struct JSONCodec: MessageCodec {
    private let makeEncoder: @Sendable () -> JSONEncoder
    private let makeDecoder: @Sendable () -> JSONDecoder

    /// Creates the codec.
    /// - Parameters:
    ///   - encoder: Makes the encoder for each value (a `JSONEncoder` is not `Sendable`); default a plain one.
    ///   - decoder: Makes the decoder for each value; default a plain one.
    public init(
        encoder: @escaping @Sendable () -> JSONEncoder = { JSONEncoder() },
        decoder: @escaping @Sendable () -> JSONDecoder = { JSONDecoder() }
    ) {
        self.makeEncoder = encoder
        self.makeDecoder = decoder
    }

    /// Encodes `value` as JSON.
    public func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        try self.makeEncoder().encodeAsByteBuffer(value, allocator: ByteBufferAllocator())
    }

    /// Decodes a `Value` from JSON.
    public func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        try self.makeDecoder().decode(Value.self, from: buffer)
    }
}

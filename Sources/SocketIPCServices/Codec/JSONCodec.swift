#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore
import SocketIPCRuntime

/// The default ``MessageCodec``: JSON, UTF-8, through Foundation's `JSONEncoder` and `JSONDecoder` (from FoundationEssentials where it exists, as on Linux).
///
/// A top-level value of any `Codable` type is allowed (a string, a number, an optional), as RFC 8259 allows. The
/// encoder and decoder are shared by every call that uses the codec (Foundation's are `Sendable`); configure them
/// before handing them over, and do not change them afterwards.
public struct JSONCodec: MessageCodec {
    private let encoder: JSONEncoder
    private let decoder: JSONDecoder

    /// Creates the codec.
    /// - Parameters:
    ///   - encoder: The encoder, with its strategies set; default a plain one.
    ///   - decoder: The decoder, with its strategies set; default a plain one.
    public init(encoder: JSONEncoder = JSONEncoder(), decoder: JSONDecoder = JSONDecoder()) {
        self.encoder = encoder
        self.decoder = decoder
    }

    /// Encodes `value` as JSON.
    public func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        try self.encoder.encodeAsBuffer(value)
    }

    /// Encodes `value` as JSON at the end of `buffer`.
    public func encode<Value: Encodable>(_ value: Value, into buffer: inout ByteBuffer) throws {
        try self.encoder.encode(value, appendingTo: &buffer)
    }

    /// Decodes a `Value` from JSON.
    public func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        try self.decoder.decode(Value.self, fromBuffer: buffer)
    }
}

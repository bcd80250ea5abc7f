#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore

// JSON straight between `Codable` values and `ByteBuffer`s, with the `JSONEncoder` and `JSONDecoder` of
// FoundationEssentials where it exists (Linux): the whole of Foundation (and ICU) would add several MiB to the resident
// memory of every process that links the library, which NIOFoundationCompat's helpers would pull in.

extension JSONEncoder {
    /// `value` as JSON, in a new buffer.
    /// - Throws: `EncodingError`, as `encode(_:)`.
    package func encodeAsBuffer<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        ByteBuffer(bytes: try self.encode(value))
    }

    /// Appends `value` as JSON to `buffer`.
    /// - Throws: `EncodingError`, as `encode(_:)`.
    package func encode<Value: Encodable>(_ value: Value, appendingTo buffer: inout ByteBuffer) throws {
        buffer.writeBytes(try self.encode(value))
    }
}

extension JSONDecoder {
    /// A `Value` decoded from the readable bytes of `buffer` (which are copied once).
    /// - Throws: `DecodingError`, as `decode(_:from:)`.
    package func decode<Value: Decodable>(_ type: Value.Type, fromBuffer buffer: ByteBuffer) throws -> Value {
        try self.decode(type, from: Data(buffer.readableBytesView))
    }
}

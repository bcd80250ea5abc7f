import Foundation
import SocketIPC

/// The demo service's codec: JSON with sorted keys (so that `demo.echo`'s output does not depend on hashing), and
/// at most ``maximumValueSize`` of it for a ``JSONValue``, which `demo.echo` and `demo.counter` take.
///
/// Any JSON value has no `Decodable` form but trying one kind after another, each failure a thrown `DecodingError`,
/// and it is held as a tree, as its encoding is: a 15 MiB request of `[{},{},…]` took a debug build of the server a
/// minute of CPU and 2.4 GB. A service with types of its own pays far less per byte; a demo has no need of more.
struct DemoCodec: MessageCodec {
    /// The largest `JSONValue` request decoded: 1 MiB.
    static var maximumValueSize: Int { 1 << 20 }

    private let json = JSONCodec(
        encoder: {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return encoder
        }()
    )

    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        try self.json.encode(value)
    }

    func encode<Value: Encodable>(_ value: Value, into buffer: inout ByteBuffer) throws {
        try self.json.encode(value, into: &buffer)
    }

    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        if Value.self == JSONValue.self, buffer.readableBytes > Self.maximumValueSize {
            throw DecodingError.dataCorrupted(
                .init(
                    codingPath: [],
                    debugDescription: "\(buffer.readableBytes) bytes of JSON; the demo service takes at most "
                        + "\(Self.maximumValueSize) (1 MiB)"
                )
            )
        }
        return try self.json.decode(type, from: buffer)
    }
}

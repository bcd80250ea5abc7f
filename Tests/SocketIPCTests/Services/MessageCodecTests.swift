import NIOCore
import NIOPosix
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

@testable import SocketIPCRuntime

/// A server-streaming method whose handler writes one string of each size asked, `"a"`, `"b"`, … repeated.
private enum Strings: ServiceMethod {
    static let name = "test.strings"
    typealias Request = [Int]
    typealias Response = String
}

/// The string the handler of ``Strings`` writes at `index` for `size`.
private func text(_ index: Int, size: Int) -> String {
    String(repeating: String(UnicodeScalar(UInt8(97 + index % 26))), count: size)
}

/// A codec that implements only ``MessageCodec/encode(_:)`` (JSON underneath), as codecs written before
/// `encode(_:into:)` existed do.
private struct EncodeOnlyCodec: MessageCodec {
    let json = JSONCodec()
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer { try self.json.encode(value) }
    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        try self.json.decode(type, from: buffer)
    }
}

@Suite("Services: codecs and the reused encoding buffer", .timeLimit(.minutes(5)), .limitedConcurrency)
struct MessageCodecTests {
    @Test("a codec without encode(into:) still encodes into a buffer: an empty one is replaced, a non-empty one appended to")
    func defaultEncodeInto() throws {
        let codec = EncodeOnlyCodec()
        var empty = ByteBuffer()
        try codec.encode(["a": 1], into: &empty)
        #expect(String(buffer: empty) == #"{"a":1}"#)

        var started = ByteBuffer(string: "prefix:")
        try codec.encode("x", into: &started)
        #expect(String(buffer: started) == #"prefix:"x""#)
    }

    @Test("JSONCodec.encode(into:) appends after what the buffer holds the JSON that encode(_:) makes")
    func jsonEncodeInto() throws {
        let codec = JSONCodec()
        var buffer = ByteBuffer(string: "[")
        try codec.encode("value ü", into: &buffer)
        #expect(String(buffer: buffer) == "[" + String(buffer: try codec.encode("value ü")))

        // An object's keys come in no fixed order from FoundationEssentials' encoder: compare the values.
        let value = SetValue.Request(key: "key", value: "ü")
        var object = ByteBuffer(string: "[")
        try codec.encode(value, into: &object)
        #expect(object.readString(length: 1) == "[")
        let decoded = try codec.decode(SetValue.Request.self, from: object)
        #expect(decoded.key == value.key && decoded.value == value.value)
    }

    @Test(
        "every message of a stream arrives intact while the encoding buffer is reused, for sizes on both sides of what it keeps",
        arguments: [false, true]
    )
    func sizesThroughReusedBuffer(encodeOnly: Bool) async throws {
        let codec: any MessageCodec = encodeOnly ? EncodeOnlyCodec() : JSONCodec()
        var router = ServiceRouter(codec: codec)
        router.registerServerStreaming(Strings.self) { sizes, writer, _ in
            for (index, size) in sizes.enumerated() { try await writer.write(text(index, size: size)) }
        }
        let kept = EventLoopBufferPool.maximumEncodingCapacity
        // Small after large and large after small, around the largest buffer kept and the queue's copy threshold.
        let sizes = [0, 1, 100, kept - 20, kept + 20, 3, 40_000, 5, 70_000, 64, kept, 2, 200, 1]
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let received = try await connection.serverStreaming(Strings.self, sizes, options: CallOptions(codec: codec)) {
                responses in
                var received: [String] = []
                for try await response in responses { received.append(response) }
                return received
            }
            #expect(received.count == sizes.count)
            for (index, size) in sizes.enumerated() where index < received.count {
                #expect(received[index] == text(index, size: size), "message \(index) of \(size) bytes")
            }
        }
    }

    @Test("an event loop keeps one encoding buffer of up to 16 KiB, cleared when taken; elsewhere there is none")
    func poolKeepsSmallBuffers() throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try loop.submit {
            let pool = EventLoopBufferPool.shared(for: loop)
            _ = pool.takeEncoding()
            #expect(pool.takeEncoding() == nil)

            var small = ByteBuffer()
            small.writeString("hello")
            let capacity = small.capacity
            pool.recycleEncoding(small)
            let taken = try #require(pool.takeEncoding())
            #expect(taken.readableBytes == 0)
            #expect(taken.capacity == capacity)
            #expect(pool.takeEncoding() == nil)

            var large = ByteBuffer()
            large.writeRepeatingByte(0, count: EventLoopBufferPool.maximumEncodingCapacity + 1)
            pool.recycleEncoding(large)
            #expect(pool.takeEncoding() == nil)
        }.wait()
    }

    @Test("a small slice of a large buffer (what a codec may return) is not kept: clear() would widen it to all of it")
    func poolRefusesSlicesOfLargeBuffers() throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try loop.submit {
            let pool = EventLoopBufferPool.shared(for: loop)
            _ = pool.takeEncoding()
            var large = ByteBuffer()
            large.writeRepeatingByte(1, count: 4 << 20)
            let slice = try #require(large.getSlice(at: 0, length: 4))
            #expect(slice.capacity <= EventLoopBufferPool.maximumEncodingCapacity)
            pool.recycleEncoding(slice)
            #expect(pool.takeEncoding() == nil)
        }.wait()
    }
}

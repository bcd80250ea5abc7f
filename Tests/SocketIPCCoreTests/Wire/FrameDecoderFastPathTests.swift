import NIOCore
import Testing

@testable import SocketIPCCore

/// The read loop's fast path for messages, requests and replies must agree with the full decoder on every input: the
/// same frame and the same bytes consumed when it takes one, and the buffer untouched when it leaves a frame (valid
/// or not) to the full decoder.
@Suite("Frame decoder fast path")
struct FrameDecoderFastPathTests {
    /// A decoder past the hello, with a small maximum so that the limit's edges are cheap to reach.
    static func decoder(maximumPayload: Int = 64) throws -> FrameDecoder {
        var decoder = FrameDecoder(maximumPayload: maximumPayload)
        var hello = ByteBuffer()
        Hello.write(into: &hello)
        _ = try decoder.next(from: &hello)
        #expect(decoder.helloReceived)
        return decoder
    }

    /// Checks the fast path against `next(from:)` on `bytes`; returns whether the fast path took a frame.
    @discardableResult
    static func agree(on bytes: [UInt8], decoder: FrameDecoder) -> Bool {
        var fast = ByteBuffer(bytes: bytes)
        var full = ByteBuffer(bytes: bytes)
        var fullDecoder = decoder
        let fullFrame = try? fullDecoder.next(from: &full)
        guard let data = decoder.nextDataFrame(from: &fast) else {
            #expect(fast.readerIndex == 0, "the fast path consumed bytes of a frame it left: \(bytes)")
            if let fullFrame {
                switch fullFrame {
                case .message, .request, .reply, .call(_, .message):
                    Issue.record("the fast path left a whole data frame to the full decoder: \(bytes)")
                default: break
                }
            }
            return false
        }
        let expected: Frame? =
            switch data.kind {
            case .message: .message(data.payload)
            case .request: .request(id: data.id, payload: data.payload)
            case .reply: .reply(id: data.id, payload: data.payload)
            case .callMessage: .call(id: data.id, .message(data.payload))
            default: nil
            }
        #expect(expected != nil && expected == fullFrame, "fast \(String(describing: expected)), full \(String(describing: fullFrame))")
        #expect(fast.readerIndex == full.readerIndex)
        return true
    }

    @Test("whole messages, requests, replies and call messages at every payload size up to the limit are taken as the decoder takes them")
    func dataFrames() throws {
        let decoder = try Self.decoder()
        for size in 0...64 {
            let payload = ByteBuffer(repeating: UInt8(size), count: size)
            let frames: [Frame] = [
                .message(payload), .request(id: 7, payload: payload), .reply(id: 0xFFFF_FFFF, payload: payload),
                .call(id: 3, .message(payload)),
            ]
            for frame in frames {
                var buffer = ByteBuffer()
                buffer.writeFrame(frame)
                buffer.writeFrame(.message(ByteBuffer(string: "next")))
                #expect(Self.agree(on: Array(buffer.readableBytesView), decoder: decoder))
            }
        }
    }

    @Test("every prefix of a frame, and frames of other kinds, are left to the full decoder untouched")
    func leftAlone() throws {
        let decoder = try Self.decoder()
        var frames: [Frame] = [
            .message(ByteBuffer(string: "hello")), .request(id: 1, payload: ByteBuffer(string: "ping")),
            .reply(id: 1, payload: ByteBuffer()), .errorReply(id: 2, message: "no"), .goAway(.normal, message: "bye"),
        ]
        frames.append(.message(ByteBuffer(repeating: 1, count: 64)))
        for frame in frames {
            var buffer = ByteBuffer()
            buffer.writeFrame(frame)
            let bytes = Array(buffer.readableBytesView)
            for length in 0..<bytes.count {
                #expect(!Self.agree(on: Array(bytes[..<length]), decoder: decoder))
            }
            Self.agree(on: bytes, decoder: decoder)
        }
    }

    @Test("frames the decoder refuses (length 0, too short for an id, above the limit, unknown kinds) are left to it")
    func refusedFrames() throws {
        let decoder = try Self.decoder()
        let refused: [[UInt8]] = [
            [0, 0, 0, 0, 1],  // length 0
            [0, 0, 0, 4, 2, 0, 0, 0],  // a request too short for its id
            [0, 0, 0, 4, 3, 0, 0, 0, 1],  // a reply too short for its id
            [0, 0, 0, 66] + [1] + [UInt8](repeating: 0, count: 65),  // a message one byte above the limit
            [0, 0, 0, 70] + [2, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 65),  // a request one byte above it
            [0xFF, 0xFF, 0xFF, 0xFF, 1],  // the largest length a frame can claim
            [0, 0, 0, 1, 0],  // kind 0
            [0, 0, 0, 4, 7, 0, 0, 0],  // a call message too short for its id
            [0, 0, 0, 1, 0x7F],  // an unknown kind
        ]
        for bytes in refused {
            #expect(!Self.agree(on: bytes, decoder: decoder))
            var full = ByteBuffer(bytes: bytes)
            var fullDecoder = decoder
            #expect(throws: SocketIPCError.self) { try fullDecoder.next(from: &full) }
        }
    }

    @Test("a call message from a peer that did not set the calls flag is left to the full decoder, which refuses it")
    func callMessageWithoutCalls() throws {
        var decoder = FrameDecoder(maximumPayload: 64)
        var hello = ByteBuffer()
        Hello.write(into: &hello, flags: [])
        _ = try decoder.next(from: &hello)
        var frame = ByteBuffer()
        frame.writeCallFrame(id: 3, .message(ByteBuffer(string: "m")))
        let bytes = Array(frame.readableBytesView)
        #expect(!Self.agree(on: bytes, decoder: decoder))
        var full = ByteBuffer(bytes: bytes)
        #expect(throws: SocketIPCError.self) { try decoder.next(from: &full) }
    }

    @Test("a run of frames read through one window taken before the first is what the decoder reads, frame by frame")
    func runThroughOneWindow() throws {
        let decoder = try Self.decoder()
        var buffer = ByteBuffer()
        var expected: [Frame] = []
        for size in 0...64 {
            let payload = ByteBuffer(repeating: UInt8(truncatingIfNeeded: size), count: size)
            let frame: Frame =
                switch size % 4 {
                case 0: .message(payload)
                case 1: .request(id: UInt32(size), payload: payload)
                case 2: .reply(id: UInt32(size), payload: payload)
                default: .call(id: UInt32(size), .message(payload))
                }
            buffer.writeFrame(frame)
            expected.append(frame)
        }
        // A frame the fast path leaves (an error reply) in the middle, and half a frame at the end.
        buffer.writeFrame(.errorReply(id: 9, message: "no"))
        expected.append(.errorReply(id: 9, message: "no"))
        buffer.writeFrame(.message(ByteBuffer(string: "last")))
        expected.append(.message(ByteBuffer(string: "last")))
        buffer.writeBytes([0, 0, 0, 9, 1])

        var fullDecoder = decoder
        let window = ReadableBytesWindow(buffer)
        var decoded: [Frame] = []
        while true {
            if let data = decoder.nextDataFrame(from: &buffer, window: window) {
                switch data.kind {
                case .message: decoded.append(.message(data.payload))
                case .request: decoded.append(.request(id: data.id, payload: data.payload))
                case .reply: decoded.append(.reply(id: data.id, payload: data.payload))
                default: decoded.append(.call(id: data.id, .message(data.payload)))
                }
                continue
            }
            guard let frame = try fullDecoder.next(from: &buffer) else { break }
            decoded.append(frame)
        }
        #expect(decoded == expected)
        #expect(buffer.readableBytes == 5)
    }

    @Test("a window gives no bytes for its buffer once it was written to, or for one read back behind the window")
    func staleWindow() throws {
        let decoder = try Self.decoder()
        var buffer = ByteBuffer()
        buffer.writeFrame(.message(ByteBuffer(string: "one")))
        let window = ReadableBytesWindow(buffer)
        #expect(window.bytes(of: buffer)?.count == buffer.readableBytes)

        var written = buffer
        written.writeFrame(.message(ByteBuffer(string: "two")))
        #expect(window.bytes(of: written) == nil)
        #expect(decoder.nextDataFrame(from: &written, window: window) == nil)
        #expect(written.readerIndex == 0)

        var read = buffer
        read.moveReaderIndex(forwardBy: 2)
        let later = ReadableBytesWindow(read)
        #expect(later.bytes(of: buffer) == nil, "the reader index is behind the window's")
        let empty = ByteBuffer()
        #expect((ReadableBytesWindow(empty).bytes(of: empty)?.count ?? 0) == 0)
    }

    @Test("before the hello, nothing takes the fast path")
    func beforeHello() {
        let decoder = FrameDecoder(maximumPayload: 64)
        var buffer = ByteBuffer()
        buffer.writeFrame(.message(ByteBuffer(string: "early")))
        #expect(decoder.nextDataFrame(from: &buffer) == nil)
        #expect(buffer.readerIndex == 0)
    }
}

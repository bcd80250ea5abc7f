import NIOCore
import Testing

@testable import SocketIPCCore

/// Differential checks of the read loop's window (one look at a read's bytes for many frames) against the full
/// decoder alone: random streams of valid, refused and truncated frames of every kind, cut into random reads,
/// decoded as `ConnectionChannelHandler.decode` does (the start of a frame kept from an earlier read completed by the
/// full decoder, then the rest of the read through one window), must hand out the same frames and end with the same
/// error as the full decoder reading the whole stream at once. The payload slices handed out are written to, as a
/// handler may, and must never change the bytes the window still looks at.
@Suite("Readable bytes window: differential against the full decoder")
struct ReadableBytesWindowDifferentialTests {
    /// SplitMix64: reproducible from the seed printed on failure.
    struct Random: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func decoder(maximumPayload: Int, flags: HelloFlags) throws -> FrameDecoder {
        var decoder = FrameDecoder(maximumPayload: maximumPayload)
        var hello = ByteBuffer()
        Hello.write(into: &hello, flags: flags)
        _ = try decoder.next(from: &hello)
        return decoder
    }

    /// One frame's bytes: mostly valid frames of every kind, sometimes with a length, kind or size that a decoder
    /// refuses.
    static func randomFrame(_ random: inout Random, maximumPayload: Int) -> [UInt8] {
        let size = Int.random(in: 0...(maximumPayload + 3), using: &random)
        let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
        var buffer = ByteBuffer()
        let id = UInt32.random(in: 0...UInt32.max, using: &random)
        switch Int.random(in: 0..<16, using: &random) {
        case 0, 1, 2: buffer.writeFrame(.message(ByteBuffer(bytes: payload)))
        case 3, 4: buffer.writeFrame(.request(id: id, payload: ByteBuffer(bytes: payload)))
        case 5, 6: buffer.writeFrame(.reply(id: id, payload: ByteBuffer(bytes: payload)))
        case 7, 8: buffer.writeFrame(.call(id: id, .message(ByteBuffer(bytes: payload))))
        case 9: buffer.writeFrame(.errorReply(id: id, message: String(repeating: "e", count: size)))
        case 10: buffer.writeFrame(.ping(id: id))
        case 11: buffer.writeFrame(.pong(id: id))
        case 12: buffer.writeFrame(.goAway(.normal, message: String(repeating: "g", count: max(size - 1, 0))))
        case 13: buffer.writeFrame(.call(id: id, .credit(7)))
        default:
            // A data frame header with a made-up length or kind: too short, too long, length 0, unknown kinds.
            let length = UInt32(
                [0, 1, 2, 3, 4, 5, 8, 9, maximumPayload, maximumPayload + 1, maximumPayload + 2, maximumPayload + 5,
                 maximumPayload + 6, Int(UInt32.max)].randomElement(using: &random)!
            )
            buffer.writeInteger(length)
            buffer.writeInteger(UInt8.random(in: 0...15, using: &random))
            buffer.writeBytes(payload.prefix(Int(min(length, 16))))
        }
        return Array(buffer.readableBytesView)
    }

    /// A frame taken from the bytes as the read loop hands it out.
    static func frame(_ data: FrameDecoder.DataFrame) -> Frame {
        switch data.kind {
        case .message: .message(data.payload)
        case .request: .request(id: data.id, payload: data.payload)
        case .reply: .reply(id: data.id, payload: data.payload)
        default: .call(id: data.id, .message(data.payload))
        }
    }

    /// A copy of `frame` (the handler keeps a copy; it writes over the slice it was handed).
    static func copy(_ frame: Frame) -> Frame {
        var buffer = ByteBuffer()
        buffer.writeFrame(frame)
        var decoder = try! Self.decoder(maximumPayload: Int(UInt32.max), flags: [.calls, .descriptors, .sharedPayloads])
        return try! decoder.next(from: &buffer)!
    }

    /// What a handler given `frame` does in the worst case: keeps a copy, then writes over the slice it was given.
    static func scribble(on frame: Frame, into delivered: inout [Frame]) {
        delivered.append(Self.copy(frame))
        switch frame {
        case .message(var payload), .request(_, var payload), .reply(_, var payload), .call(_, .message(var payload)):
            if payload.readableBytes > 0 {
                payload.setRepeatingByte(0xEE, count: payload.readableBytes, at: payload.readerIndex)
            }
            payload.writeString("scribble")
            payload.moveReaderIndex(to: 0)
        default:
            break
        }
    }

    /// Decodes `stream` cut at `cuts` as `ConnectionChannelHandler.decode` does; returns the frames handed out and
    /// the error that ended the stream, if any.
    static func decodeAsReadLoop(
        _ stream: [UInt8],
        cuts: [Int],
        decoder start: FrameDecoder
    ) -> (frames: [Frame], error: SocketIPCError.Code?) {
        var decoder = start
        var delivered: [Frame] = []
        var partial: FrameAssembler?
        var begin = 0
        for end in cuts.filter({ $0 < stream.count }) + [stream.count] where end > begin {
            // A read: its own buffer, with room behind the bytes (as NIO's read buffers have).
            var incoming = ByteBufferAllocator().buffer(capacity: (end - begin) + 64)
            incoming.writeBytes(stream[begin..<end])
            begin = end
            let original = Array(incoming.readableBytesView)
            let originalReader = incoming.readerIndex
            do {
                var leftover: FrameAssembler?
                if var kept = partial.take() {
                    while true {
                        if let frame = try decoder.next(from: &kept.bytes) {
                            Self.scribble(on: frame, into: &delivered)
                            continue
                        }
                        guard kept.readableBytes > 0, incoming.readableBytes > 0 else { break }
                        let missing = max(decoder.bytesNeeded(toComplete: kept.bytes) - kept.readableBytes, 1)
                        kept.append(incoming.readSlice(length: min(missing, incoming.readableBytes))!)
                    }
                    if kept.readableBytes > 0 { leftover = kept }
                }
                if leftover == nil {
                    let window = ReadableBytesWindow(incoming)
                    while true {
                        if let data = decoder.nextDataFrame(from: &incoming, window: window) {
                            Self.scribble(on: Self.frame(data), into: &delivered)
                            continue
                        }
                        guard let frame = try decoder.next(from: &incoming) else { break }
                        Self.scribble(on: frame, into: &delivered)
                    }
                }
                if incoming.readableBytes > 0 {
                    if leftover != nil {
                        leftover!.append(incoming)
                    } else if incoming.readableBytes <= 4096 {
                        var copy = ByteBufferAllocator().buffer(capacity: max(incoming.readableBytes, 64))
                        copy.writeImmutableBuffer(incoming)
                        leftover = FrameAssembler(copy)
                    } else {
                        leftover = FrameAssembler(incoming)
                    }
                }
                partial = leftover
            } catch let error as SocketIPCError {
                return (delivered, error.code)
            } catch {
                Issue.record("unexpected error \(error)")
                return (delivered, nil)
            }
            // The read's own bytes are as they came, however its slices were written to.
            incoming.moveReaderIndex(to: originalReader)
            #expect(Array(incoming.readableBytesView) == original, "a handler's write reached the read buffer")
        }
        return (delivered, nil)
    }

    /// The full decoder alone, on the whole stream at once.
    static func decodeAtOnce(
        _ stream: [UInt8],
        decoder start: FrameDecoder
    ) -> (frames: [Frame], error: SocketIPCError.Code?) {
        var decoder = start
        var buffer = ByteBuffer(bytes: stream)
        var frames: [Frame] = []
        do {
            while let frame = try decoder.next(from: &buffer) { frames.append(frame) }
        } catch let error as SocketIPCError {
            return (frames, error.code)
        } catch {
            return (frames, nil)
        }
        return (frames, nil)
    }

    @Test("random streams cut into random reads: the window and the full decoder hand out the same", arguments: 0..<8)
    func randomStreams(batch: Int) throws {
        var random = Random(state: UInt64(batch) &* 0x1234_5678_9ABC_DEF1 &+ 17)
        for round in 0..<400 {
            let maximumPayload = [0, 1, 4, 5, 9, 16, 64, 300].randomElement(using: &random)!
            let flags: HelloFlags = Bool.random(using: &random) ? [.calls] : []
            let decoder = try Self.decoder(maximumPayload: maximumPayload, flags: flags)
            var stream: [UInt8] = []
            for _ in 0..<Int.random(in: 1...24, using: &random) {
                stream += Self.randomFrame(&random, maximumPayload: maximumPayload)
            }
            if Bool.random(using: &random) {
                // Garbage or half a frame at the end.
                let extra = Int.random(in: 1...12, using: &random)
                stream += (0..<extra).map { _ in UInt8.random(in: 0...255, using: &random) }
            }
            var cuts = Set<Int>()
            let cutCount = Int.random(in: 0...max(1, stream.count / 3), using: &random)
            for _ in 0..<cutCount { cuts.insert(Int.random(in: 1...stream.count, using: &random)) }
            let expected = Self.decodeAtOnce(stream, decoder: decoder)
            let got = Self.decodeAsReadLoop(stream, cuts: cuts.sorted(), decoder: decoder)
            #expect(
                got.frames == expected.frames && got.error == expected.error,
                "batch \(batch)/\(round): max \(maximumPayload) flags \(flags.rawValue) \(cuts.sorted()) \(stream)"
            )
        }
    }

    @Test("valid frames of every kind cut at every byte boundary, and one read per byte")
    func everyBoundary() throws {
        let decoder = try Self.decoder(maximumPayload: 64, flags: [.calls])
        var buffer = ByteBuffer()
        let frames: [Frame] = [
            .message(ByteBuffer(string: "one")), .errorReply(id: 1, message: "no"),
            .request(id: 2, payload: ByteBuffer(repeating: 2, count: 64)), .ping(id: 3),
            .reply(id: 4, payload: ByteBuffer()), .goAway(.normal, message: "soon"),
            .call(id: 5, .message(ByteBuffer(string: "c"))),
            .pong(id: 6), .message(ByteBuffer()),
        ]
        for frame in frames { buffer.writeFrame(frame) }
        let stream = Array(buffer.readableBytesView)
        for cut in 0...stream.count {
            let got = Self.decodeAsReadLoop(stream, cuts: [cut], decoder: decoder)
            #expect(got.frames == frames && got.error == nil, "cut at \(cut)")
        }
        let perByte = Self.decodeAsReadLoop(stream, cuts: Array(1..<stream.count), decoder: decoder)
        #expect(perByte.frames == frames && perByte.error == nil)
    }

    @Test("a run longer than 4096 bytes kept where it lies, then completed by the next read")
    func largeRestKeptInPlace() throws {
        let decoder = try Self.decoder(maximumPayload: 100_000, flags: [.calls])
        var buffer = ByteBuffer()
        var frames: [Frame] = []
        for index in 0..<50 {
            let payload = ByteBuffer(repeating: UInt8(index), count: 3000 + index)
            let frame: Frame = .request(id: UInt32(index), payload: payload)
            buffer.writeFrame(frame)
            frames.append(frame)
        }
        let stream = Array(buffer.readableBytesView)
        for cut in stride(from: 1, to: stream.count, by: 977) {
            let got = Self.decodeAsReadLoop(stream, cuts: [cut, cut + 5000], decoder: decoder)
            #expect(got.frames == frames && got.error == nil, "cut at \(cut)")
        }
    }
}

import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// The read loop looks at a read's bytes once (ReadableBytesWindow) and takes data frames through that look: a raw
/// peer's frames, cut anywhere and mixed with frames of other kinds, reach the handler exactly as sent, in order,
/// however the handler writes over the payloads it is handed; a peer that breaks the protocol after valid frames gets
/// those frames handed out, then the going-away it has earned, and only its connection closes.
@Suite("Read window against a hostile raw peer", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct ReadWindowHostilePeerTests {
    /// Records every message and request as `m:<hex>` / `q:<hex>`, writes over the payload it was handed (as a
    /// handler may: the write must copy, never reach the bytes still being decoded), and echoes requests.
    struct ScribblingHandler: ConnectionHandler, Sendable {
        let log: Recorder
        let answerLater: Bool

        static func hex(_ buffer: ByteBuffer) -> String {
            buffer.readableBytesView.map { String(format: "%02x", $0) }.joined()
        }

        static func scribble(_ buffer: ByteBuffer) {
            var buffer = buffer
            if buffer.readableBytes > 0 {
                buffer.setRepeatingByte(0xEE, count: buffer.readableBytes, at: buffer.readerIndex)
            }
            buffer.writeString("scribbled over")
        }

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            self.log.items.withLock { $0.append("m:" + Self.hex(message)) }
            Self.scribble(message)
        }

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            self.log.items.withLock { $0.append("q:" + Self.hex(request)) }
            let answer = request
            Self.scribble(request)
            if self.answerLater {
                reply.complete {
                    try await Task.sleep(for: .milliseconds(1))
                    return answer
                }
            } else {
                reply.succeed(answer)
            }
        }
    }

    /// A frame the server sent.
    struct Sent: Equatable {
        var kind: UInt8
        var body: [UInt8]
    }

    /// The server's hello and the frames after it.
    static func parse(_ received: [UInt8]) throws -> [Sent] {
        try #require(received.count >= 8)
        #expect(Array(received[..<8]) == serverHelloBytes)
        var frames: [Sent] = []
        var offset = 8
        while offset + 5 <= received.count {
            let length = received[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
            try #require(offset + 4 + length <= received.count, "a frame cut short")
            frames.append(Sent(kind: received[offset + 4], body: Array(received[(offset + 5)..<(offset + 4 + length)])))
            offset += 4 + length
        }
        #expect(offset == received.count)
        return frames
    }

    static func be(_ id: UInt32) -> [UInt8] { withUnsafeBytes(of: id.bigEndian) { Array($0) } }

    /// A stream mixing every kind a version 1 peer with the calls flag may send (call messages for no call are
    /// ignored, error replies and replies to unknown ids too, a pong nobody waited for too), what the handler must
    /// see, and the frames the server must answer with (replies and pongs), in order.
    static func mixedStream() -> (bytes: [UInt8], log: [String], answers: [Sent]) {
        var bytes: [UInt8] = []
        var log: [String] = []
        var answers: [Sent] = []
        bytes += frameBytes(kind: 0x01, payload: Array("one".utf8)); log.append("m:6f6e65")
        bytes += frameBytes(kind: 0x02, id: 1, payload: [0xAB, 0xCD]); log.append("q:abcd")
        answers.append(Sent(kind: 0x03, body: be(1) + [0xAB, 0xCD]))
        bytes += frameBytes(kind: 0x04, id: 99, payload: Array("no".utf8))
        bytes += frameBytes(kind: 0x0B, id: 5, payload: [])
        answers.append(Sent(kind: 0x0C, body: be(5)))
        bytes += frameBytes(kind: 0x01, payload: []); log.append("m:")
        bytes += frameBytes(kind: 0x03, id: 77, payload: [1, 2])
        bytes += frameBytes(kind: 0x07, id: 9, payload: Array("call".utf8))
        bytes += frameBytes(kind: 0x0C, id: 3, payload: [])
        let big = (0..<64).map { UInt8($0) }
        bytes += frameBytes(kind: 0x02, id: 2, payload: big)
        log.append("q:" + big.map { String(format: "%02x", $0) }.joined())
        answers.append(Sent(kind: 0x03, body: be(2) + big))
        bytes += frameBytes(kind: 0x05, id: nil, payload: [0x00] + Array("bye".utf8))
        return (bytes, log, answers)
    }

    /// Connects, writes `pieces` after a hello with the calls flag, half-closes and reads until the server closes.
    static func exchange(path: String, pieces: [[UInt8]], flags: UInt8 = 0x01, helloApart: Bool = true)
        async throws -> [UInt8]
    {
        let socket = try await RawSocket.connect(to: path)
        defer { socket.close() }
        let hello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, flags, 0x00, 0x00]
        var pieces = pieces
        if helloApart { pieces.insert(hello, at: 0) } else { pieces[0] = hello + pieces[0] }
        for piece in pieces { try? await socket.send(pieces: [piece]) }
        socket.shutdownWrite()
        return try await socket.readUntilClosed()
    }

    /// Connects, writes `pieces` after a hello with the calls flag while reading, and returns the frames the server
    /// sent once `done` says they are all there (without half-closing: a framed server drops what it kept at EOF).
    static func exchangeWithoutEOF(path: String, pieces: [[UInt8]], done: @escaping @Sendable ([Sent]) -> Bool)
        async throws -> [Sent]
    {
        let socket = try await RawSocket.connect(to: path)
        defer { socket.close() }
        let hello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x01, 0x00, 0x00]
        async let sending: Void = socket.send(pieces: [hello] + pieces)
        var received = try await socket.read(exactly: 8)
        while true {
            let frames = try Self.parse(received)
            if done(frames) {
                try await sending
                return frames
            }
            let header = try await socket.read(exactly: 4)
            try #require(header.count == 4, "the server closed early: \(frames.count) frames")
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            let body = try await socket.read(exactly: length)
            try #require(body.count == length, "the server closed early")
            received += header + body
        }
    }

    static func answers(in frames: [Sent]) -> [Sent] {
        frames.filter { $0.kind == 0x03 || $0.kind == 0x0C }
    }

    @Test("a mixed stream split into two writes at every byte boundary, and written byte by byte")
    func everyBoundary() async throws {
        let log = Recorder()
        let (stream, expectedLog, expectedAnswers) = Self.mixedStream()
        try await withFramedTestServer(makeHandler: { ScribblingHandler(log: log, answerLater: false) }) { _, path in
            var splits: [[[UInt8]]] = (0...stream.count).map { [Array(stream[..<$0]), Array(stream[$0...])] }
            splits.append(stream.map { [$0] })
            for (index, pieces) in splits.enumerated() {
                for helloApart in [true, false] {
                    log.items.withLock { $0.removeAll() }
                    let received = try await Self.exchange(path: path, pieces: pieces, helloApart: helloApart)
                    let frames = try Self.parse(received)
                    #expect(log.items.withLock { $0 } == expectedLog, "split \(index) \(helloApart)")
                    #expect(Self.answers(in: frames) == expectedAnswers, "split \(index) \(helloApart)")
                    #expect(!frames.contains { $0.kind == 0x05 && $0.body.first != 0x00 }, "split \(index): \(frames)")
                }
            }
        }
    }

    @Test("3000 frames in one write, with the peer's requests pausing the read (maximum 4 unanswered)")
    func manyFramesOneWrite() async throws {
        let log = Recorder()
        var stream: [UInt8] = []
        var expectedLog: [String] = []
        var expectedReplies = 0
        for index in 0..<3000 {
            let payload = (0..<(index % 200)).map { UInt8(truncatingIfNeeded: $0 &+ index) }
            let hex = payload.map { String(format: "%02x", $0) }.joined()
            switch index % 5 {
            case 0, 1:
                stream += frameBytes(kind: 0x01, payload: payload); expectedLog.append("m:" + hex)
            case 2:
                stream += frameBytes(kind: 0x02, id: UInt32(index), payload: payload); expectedLog.append("q:" + hex)
                expectedReplies += 1
            case 3:
                stream += frameBytes(kind: 0x0B, id: UInt32(index), payload: [])
            default:
                stream += frameBytes(kind: 0x04, id: UInt32(index), payload: Array("x".utf8))
            }
        }
        let replies = expectedReplies
        try await withFramedTestServer(
            configure: { $0.connection.maximumConcurrentRequests = 4 },
            makeHandler: { ScribblingHandler(log: log, answerLater: true) }
        ) { _, path in
            let chunks = stride(from: 0, to: stream.count, by: 4093).map {
                Array(stream[$0..<min($0 + 4093, stream.count)])
            }
            for pieces in [[stream], chunks] {
                log.items.withLock { $0.removeAll() }
                let frames = try await Self.exchangeWithoutEOF(path: path, pieces: pieces) { frames in
                    frames.filter { $0.kind == 0x03 }.count >= replies && frames.filter { $0.kind == 0x0C }.count >= 600
                }
                #expect(log.items.withLock { $0 } == expectedLog)
                #expect(frames.filter { $0.kind == 0x03 }.count == expectedReplies)
                #expect(frames.filter { $0.kind == 0x0C }.count == 600)
                #expect(!frames.contains { $0.kind == 0x05 && $0.body.first != 0x00 })
            }
        }
    }

    /// What the server answers a peer that sends `good` and then `bad` (with a maximum of 16), split at `split`: the
    /// log of what the handler got, and the going-away reason.
    static func refused(path: String, log: Recorder, good: [UInt8], bad: [UInt8], split: Int, flags: UInt8 = 0x01)
        async throws -> (log: [String], reason: UInt8?)
    {
        log.items.withLock { $0.removeAll() }
        let stream = good + bad
        let received = try await Self.exchange(
            path: path, pieces: [Array(stream[..<split]), Array(stream[split...])], flags: flags
        )
        let frames = try Self.parse(received)
        let goAways = frames.filter { $0.kind == 0x05 }
        #expect(goAways.count <= 1)
        return (log.items.withLock { $0 }, goAways.first?.body.first)
    }

    @Test("valid frames then a refused one, in one write or split anywhere: those, then going-away; others unaffected")
    func garbageAfterValidFrames() async throws {
        let log = Recorder()
        let sixteen = [UInt8](repeating: 0x5A, count: 16)
        let good =
            frameBytes(kind: 0x01, payload: sixteen)  // a message of exactly the maximum
            + frameBytes(kind: 0x02, id: 1, payload: sixteen)  // a request of exactly the maximum
            + frameBytes(kind: 0x0B, id: 2, payload: [])
            + frameBytes(kind: 0x01, payload: [1])
        let goodLog = ["m:" + String(repeating: "5a", count: 16), "q:" + String(repeating: "5a", count: 16), "m:01"]
        let cases: [(bad: [UInt8], reason: UInt8)] = [
            ([0, 0, 0, 18, 0x01] + [UInt8](repeating: 0, count: 17), 0x02),  // a message one byte over
            ([0, 0, 0, 22, 0x02, 0, 0, 0, 3] + [UInt8](repeating: 0, count: 17), 0x02),  // a request one byte over
            ([0, 0, 0, 22, 0x07, 0, 0, 0, 3] + [UInt8](repeating: 0, count: 17), 0x02),  // a call message one over
            ([0, 0, 0, 22], 0x02),  // a length no kind could make valid
            ([0xFF, 0xFF, 0xFF, 0xFF, 0x01], 0x02),
            ([0, 0, 0, 0, 0x01], 0x01),  // length 0
            ([0, 0, 0, 4, 0x02, 0, 0, 0], 0x01),  // a request too short for its id
            ([0, 0, 0, 4, 0x03, 0, 0, 0], 0x01),  // a reply too short for its id
            ([0, 0, 0, 4, 0x07, 0, 0, 0], 0x01),  // a call message too short for its id
            ([0, 0, 0, 1, 0x05], 0x01),  // a going-away without its reason
            ([0, 0, 0, 1, 0x00], 0x01),  // kind 0
            ([0, 0, 0, 1, 0x7F], 0x01),  // an unknown kind
            ([0x47, 0x45, 0x54, 0x20, 0x2F], 0x02),  // "GET /": a length of 0x47455420
        ]
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = 16 },
            makeHandler: { ScribblingHandler(log: log, answerLater: false) }
        ) { _, path in
            for (bad, reason) in cases {
                let stream = good + bad
                let splits = [0, 1, good.count - 1, good.count, good.count + 1, good.count + 4, good.count + 5]
                for split in splits + [stream.count] where split <= stream.count {
                    let result = try await Self.refused(path: path, log: log, good: good, bad: bad, split: split)
                    #expect(result.log == goodLog, "bad \(bad.prefix(9)) split \(split)")
                    #expect(result.reason == reason, "bad \(bad.prefix(9)) split \(split)")
                }
            }
            // The server still serves everybody else.
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "fine")) }
            #expect(String(buffer: reply) == "fine")
        }
    }

    @Test("a call message from a peer whose hello did not set the calls flag is refused after the frames before it")
    func callMessageWithoutCallsFlag() async throws {
        let log = Recorder()
        let good = frameBytes(kind: 0x01, payload: [7]) + frameBytes(kind: 0x02, id: 1, payload: [8])
        let bad = frameBytes(kind: 0x07, id: 9, payload: [9]) + frameBytes(kind: 0x01, payload: [10])
        try await withFramedTestServer(makeHandler: { ScribblingHandler(log: log, answerLater: false) }) { _, path in
            for split in 0...(good.count + bad.count) {
                let refused = try await Self.refused(path: path, log: log, good: good, bad: bad, split: split, flags: 0)
                #expect(refused.log == ["m:07", "q:08"], "split \(split)")
                #expect(refused.reason == 0x01, "split \(split)")
                let accepted = try await Self.refused(
                    path: path, log: log, good: good, bad: bad, split: split, flags: 1
                )
                #expect(accepted.log == ["m:07", "q:08", "m:0a"], "split \(split)")
                #expect(accepted.reason == nil, "split \(split)")
            }
        }
    }

    @Test("frames after the peer's going-away with an error reason, in the same read or later, are not handed out")
    func nothingAfterFailedGoAway() async throws {
        let log = Recorder()
        let good = frameBytes(kind: 0x01, payload: [1]) + frameBytes(kind: 0x02, id: 1, payload: [2])
        let bad = goAwayBytes(reason: 0x02, text: "too big") + frameBytes(kind: 0x01, payload: [3])
            + frameBytes(kind: 0x02, id: 2, payload: [4])
        try await withFramedTestServer(makeHandler: { ScribblingHandler(log: log, answerLater: false) }) { _, path in
            for split in 0...(good.count + bad.count) {
                let result = try await Self.refused(path: path, log: log, good: good, bad: bad, split: split)
                #expect(result.log == ["m:01", "q:02"], "split \(split)")
                #expect(result.reason == nil, "split \(split)")
            }
        }
    }
}

import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// The server does what PROTOCOL.md says however a raw client splits its bytes across writes (issue 9, section 7):
/// each test writes the bytes up to the one that decides, split at every position, and nothing more, so the server
/// can only answer if it decided at that byte.
@Suite("The wire protocol whatever the read boundaries", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct ReadBoundaryTests {
    /// Writes the hello and `bytes` split at `split` (two writes), and returns everything the server sends until it
    /// closes.
    static func exchange(
        path: String,
        _ bytes: [UInt8],
        splitAt split: Int,
        sayHello: Bool = true
    ) async throws -> [UInt8] {
        let socket = try await RawSocket.connect(to: path)
        defer { socket.close() }
        let first = (sayHello ? helloBytes : []) + bytes[..<split]
        try await socket.send(pieces: [first])
        // The server may have closed already if the first piece decided it (that is what some tests expect): then
        // this write fails, and what counts is what the server sent.
        try? await socket.send(pieces: [Array(bytes[split...])])
        return try await socket.readUntilClosed()
    }

    /// The reason byte of the going-away frame that follows the server's hello in `received`, checking its framing.
    static func goAwayReason(in received: [UInt8]) throws -> UInt8 {
        try #require(received.count >= 8 + 6)
        #expect(Array(received[..<8]) == serverHelloBytes)
        let length = received[8..<12].reduce(0) { $0 << 8 | Int($1) }
        #expect(received.count == 12 + length, "one going-away frame after the hello, and nothing else")
        #expect(received[12] == 0x05)
        return received[13]
    }

    @Test("with a maximum of 16, a frame of length 0x12 is refused at its kind byte", arguments: 1...4)
    func tooLargeAtKindByte(split: Int) async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = 16 },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let received = try await Self.exchange(path: path, [0x00, 0x00, 0x00, 0x12, 0x01], splitAt: split)
            #expect(try Self.goAwayReason(in: received) == 0x02)
        }
    }

    @Test("a maximum of Int.max means the largest payload a frame can carry: requests are served, and no length overflows")
    func unlimitedMaximum() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = .max },
            makeHandler: { EchoHandler() }
        ) { _, path in
            var options = ClientConfiguration()
            options.connection.maximumMessageSize = .max
            let reply = try await Client.withConnection(to: path, configuration: options) { connection in
                try await connection.request(ByteBuffer(string: "hi"))
            }
            #expect(String(buffer: reply) == "hi")
            // The largest length field there is, for a message (1-byte header): a payload of 4 GiB - 2 bytes,
            // more than any frame may carry (4 GiB - 6), refused at the kind byte.
            let received = try await Self.exchange(path: path, [0xff, 0xff, 0xff, 0xff, 0x01], splitAt: 4)
            #expect(try Self.goAwayReason(in: received) == 0x02)
        }
    }

    @Test("with the default maximum, a message of length 0x01000002 is refused at its kind byte", arguments: 1...4)
    func defaultMaximumAtKindByte(split: Int) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let received = try await Self.exchange(path: path, [0x01, 0x00, 0x00, 0x02, 0x01], splitAt: split)
            #expect(try Self.goAwayReason(in: received) == 0x02)
        }
    }

    @Test("a bad magic is refused at the first byte that differs, however the hello was split", arguments: 1...3)
    func badMagicAtFirstDifference(split: Int) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let received = try await Self.exchange(path: path, [0x53, 0x49, 0x50, 0x58], splitAt: split, sayHello: false)
            #expect(try Self.goAwayReason(in: received) == 0x01)
        }
    }

    @Test(
        "after the client's going-away with a reason other than 0x00 the server closes and answers nothing more",
        arguments: 1...6
    )
    func closesAfterFailedGoAway(split: Int) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let request = frameBytes(kind: 0x02, id: 1, payload: Array("after".utf8))
            let received = try await Self.exchange(path: path, [0x00, 0x00, 0x00, 0x02, 0x05, 0x02] + request, splitAt: split)
            #expect(received == serverHelloBytes)
        }
    }

    @Test("after the client's going-away 0x00 the server answers the requests it has, then closes")
    func answersThenClosesAfterNormalGoAway() async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        try await withFramedTestServer(makeHandler: { HoldingEchoHandler(held: heldContinuation) }) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            let request = frameBytes(kind: 0x02, id: 9, payload: Array("hold".utf8))
            try await socket.send(pieces: [helloBytes + request + goAwayBytes(reason: 0x00, text: "bye")])
            var replies = held.makeAsyncIterator()
            let reply = try #require(await replies.next())
            reply.succeed(ByteBuffer(string: "done"))
            let received = try await socket.readUntilClosed()
            #expect(received == serverHelloBytes + frameBytes(kind: 0x03, id: 9, payload: Array("done".utf8)))
        }
    }

    @Test("the server's answers in PROTOCOL.md's 'Trying it by hand' are byte for byte what it sends", arguments: [
        "A frame that claims almost 4 GiB", "Something that is not a SocketIPC peer",
    ])
    func documentedAnswers(section: String) async throws {
        let documented = try Self.documentedDump(after: section)
        let sent: [UInt8] =
            section.hasPrefix("A frame")
            ? helloBytes + [0xff, 0xff, 0xff, 0xff] : Array("GET / HTTP/1.0\r\n\r\n".utf8)
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let received = try await Self.exchange(path: path, sent, splitAt: sent.count, sayHello: false)
            #expect(ProtocolDocument.hex(received) == ProtocolDocument.hex(documented))
        }
    }

    /// The bytes of the first `xxd` dump in PROTOCOL.md after the paragraph that starts with `paragraph`.
    static func documentedDump(after paragraph: String) throws -> [UInt8] {
        let text = try String(contentsOf: ProtocolDocument.url(), encoding: .utf8)
        let start = try #require(text.range(of: "\n" + paragraph))
        var bytes: [UInt8] = []
        var inDump = false
        for line in text[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("00000000: ") { inDump = true }
            guard inDump else { continue }
            guard let colon = line.firstIndex(of: ":"), line.first?.isHexDigit == true else { break }
            // `xxd`: offset, a colon, up to 8 groups of 4 hex digits, two spaces, the text.
            let hexPart = line[line.index(colon, offsetBy: 2)...].prefix(39)
            let digits = hexPart.filter { $0.isHexDigit }
            var index = digits.startIndex
            while index < digits.endIndex {
                let next = digits.index(index, offsetBy: 2)
                bytes.append(try #require(UInt8(digits[index..<next], radix: 16)))
                index = next
            }
        }
        try #require(!bytes.isEmpty, "no xxd dump after '\(paragraph)' in PROTOCOL.md")
        return bytes
    }
}

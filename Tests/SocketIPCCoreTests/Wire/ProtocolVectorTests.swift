import Foundation
import NIOCore
import Testing

@testable import SocketIPCCore
import SocketIPCTestSupport

/// Checks the framed codec against the test vectors of PROTOCOL.md.
///
/// The vectors' bytes are read from PROTOCOL.md itself at run time, so the document and the codec cannot drift apart.
/// What each vector decodes to, and how each invalid one must fail, is kept here as well: a byte changed in the
/// document that still decodes to *something* fails the suite, and so does a vector added to only one of the two.
@Suite("Protocol test vectors (PROTOCOL.md)")
struct ProtocolVectorTests {
    // MARK: - What the vectors mean

    /// What a `valid` or `accepted` vector decodes to.
    enum Decoded: Equatable, Sendable {
        case hello
        case frame(Frame)
    }

    /// How a `reject` vector must fail: the error the decoder throws, the going-away reason that puts on the wire,
    /// and the byte of the vector (counting from 1) at which the decoder refuses when fed one byte at a time.
    struct Rejection: Sendable {
        var code: SocketIPCError.Code
        var reason: GoAwayReason
        var refusedAtByte: Int
    }

    /// The vectors that the encoder produces and the decoder reads back.
    static let valid: [String: Decoded] = [
        "hello": .hello,
        "message-empty": .frame(.message(ByteBuffer())),
        "message-hi": .frame(.message(ByteBuffer(string: "hi"))),
        "request-1-ping": .frame(.request(id: 1, payload: ByteBuffer(string: "ping"))),
        "reply-1-pong": .frame(.reply(id: 1, payload: ByteBuffer(string: "pong"))),
        "error-reply-7-boom": .frame(.errorReply(id: 7, message: "boom")),
        "going-away-normal-bye": .frame(.goAway(.normal, message: "bye")),
        "going-away-too-large": .frame(.goAway(.messageTooLarge, message: "")),
        "going-away-resource-exhausted": .frame(.goAway(.resourceExhausted, message: "")),
        "request-max-id-empty": .frame(.request(id: 0xFFFF_FFFF, payload: ByteBuffer())),
        "error-reply-utf8": .frame(.errorReply(id: 0x0102_0304, message: "d\u{ED}a")),
        // Calls, after a hello that set the calls flag.
        "hello-calls": .hello,
        "call-open-kv-get": .frame(.call(id: 1, .open(CallOpen(method: "kv.get", timeoutNanoseconds: 5_000_000_000)))),
        "call-open-takes-one-response": .frame(
            .call(id: 1, .open(CallOpen(method: "kv.get", flags: CallOpen.takesOneResponse)))
        ),
        "call-message-json": .frame(.call(id: 1, .message(ByteBuffer(string: #"{"key":"a"}"#)))),
        "call-end-ok": .frame(.call(id: 1, .end(.ok))),
        "call-end-application-error": .frame(
            .call(
                id: 1,
                .end(
                    CallStatus(
                        code: .applicationError,
                        errorCode: "notFound",
                        message: "no key a",
                        details: ByteBuffer(string: #"{"key":"a"}"#)
                    )
                )
            )
        ),
        "call-end-unavailable-refused": .frame(
            .call(
                id: 3,
                .end(CallStatus(code: .unavailable, errorCode: "refused", message: "no new calls now..."))
            )
        ),
        "call-end-unknown-method": .frame(
            .call(id: 2, .end(CallStatus(code: .unknownMethod, message: "no method x")))
        ),
        "call-cancel-deadline": .frame(.call(id: 1, .cancel(.deadlineExceeded))),
        "call-credit-32k": .frame(.call(id: 1, .credit(32768))),
        "ping-7": .frame(.ping(id: 7)),
        "pong-7": .frame(.pong(id: 7)),
        // Descriptors, after a hello that set the calls and descriptors flags.
        "hello-descriptors": .hello,
        "descriptors-2": .frame(.descriptors(count: 2)),
        // Shared payloads, after a hello that set the calls, descriptors and shared-payloads flags.
        "hello-shared-payloads": .hello,
        "shared-payload-message-1m": .frame(.sharedPayload(kind: .message, id: 0, length: 1_048_576)),
        "shared-payload-reply-9": .frame(.sharedPayload(kind: .reply, id: 9, length: 262_144)),
        // Strict credit, after a hello that set the calls and strict-credit flags.
        "hello-strict-credit": .hello,
        "hello-descriptor-credit": .hello,
        "call-blocked-1m": .frame(.call(id: 1, .blocked(1_048_585))),
    ]

    /// The vectors that the decoder must read but the encoder never produces.
    static let accepted: [String: Decoded] = [
        "hello-flags-set": .hello,
        "going-away-unknown-reason": .frame(.goAway(.protocolViolation, message: "")),
        "call-end-unknown-status": .frame(.call(id: 1, .end(CallStatus(code: .handlerFailed)))),
        "ping-with-payload": .frame(.ping(id: 7)),
    ]

    /// The vectors that the decoder must refuse.
    static let rejected: [String: Rejection] = [
        // At the first byte that differs from the magic, without waiting for the whole hello.
        "hello-wrong-magic": Rejection(code: .notSocketIPCPeer, reason: .protocolViolation, refusedAtByte: 4),
        "hello-version-2": Rejection(code: .unsupportedVersion, reason: .unsupportedVersion, refusedAtByte: 8),
        "frame-unknown-kind-09": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        "frame-length-0": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 4),
        "request-too-short-for-id": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        "going-away-without-reason": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        // On the length field alone, before any payload.
        "frame-length-over-maximum": Rejection(code: .messageTooLarge, reason: .messageTooLarge, refusedAtByte: 4),
        "frame-length-ffffffff": Rejection(code: .messageTooLarge, reason: .messageTooLarge, refusedAtByte: 4),
        // Calls: from a version 1 peer, their kinds are unknown; from a peer that speaks them, malformed payloads.
        "call-open-from-version-1-peer": Rejection(
            code: .protocolViolation,
            reason: .protocolViolation,
            refusedAtByte: 5
        ),
        "frame-unknown-kind-0d": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        "call-credit-too-short": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 12),
        "call-open-name-overruns": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 25),
        "descriptors-from-peer-without-flag": Rejection(
            code: .protocolViolation,
            reason: .protocolViolation,
            refusedAtByte: 5
        ),
        "descriptors-count-0": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 6),
        "descriptors-two-bytes": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 7),
        "shared-payload-without-flag": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        "shared-payload-going-away": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 18),
        "shared-payload-over-maximum": Rejection(code: .messageTooLarge, reason: .messageTooLarge, refusedAtByte: 18),
        "call-blocked-without-flag": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 5),
        "call-blocked-too-short": Rejection(code: .protocolViolation, reason: .protocolViolation, refusedAtByte: 12),
    ]

    static let validNames = valid.keys.sorted()
    static let decodableNames = valid.keys.sorted() + accepted.keys.sorted()
    static let rejectedNames = rejected.keys.sorted()

    // MARK: - Tests

    @Test("PROTOCOL.md lists exactly the vectors this suite knows, with the same results")
    func documentMatchesSuite() throws {
        let documented = try Self.documentedVectors()
        let known = Set(Self.valid.keys).union(Self.accepted.keys).union(Self.rejected.keys)
        #expect(Set(documented.keys).subtracting(known).isEmpty, "vectors in PROTOCOL.md that this suite does not know")
        #expect(known.subtracting(documented.keys).isEmpty, "vectors this suite knows that PROTOCOL.md lacks")
        for (name, vector) in documented {
            switch vector.result {
            case .valid:
                #expect(Self.valid[name] != nil, "PROTOCOL.md calls \(name) valid")
            case .accepted:
                #expect(Self.accepted[name] != nil, "PROTOCOL.md calls \(name) accepted")
            case .reject(let reason, let code):
                let rejection = try #require(Self.rejected[name], "PROTOCOL.md rejects \(name)")
                #expect(rejection.reason.rawValue == reason, "the going-away reason of \(name)")
                #expect(rejection.code.description == code, "the error code of \(name)")
            }
        }
        // Every vector assumes the default maximum payload.
        #expect(FrameDecoder.defaultMaximumPayload == 16 * 1024 * 1024)
    }

    @Test("encoding produces exactly the documented bytes", arguments: ProtocolVectorTests.validNames)
    func encodes(name: String) throws {
        let vector = try Self.vector(named: name)
        var buffer = ByteBuffer()
        switch try #require(Self.valid[name]) {
        case .hello:
            let flags: HelloFlags =
                switch name {
                case "hello": []
                case "hello-calls": [.calls]
                case "hello-descriptors": [.calls, .descriptors]
                case "hello-shared-payloads": [.calls, .descriptors, .sharedPayloads]
                case "hello-descriptor-credit": [.calls, .descriptors, .sharedPayloads, .strictCredit, .descriptorCredit]
                default: Hello.flags
                }
            Hello.write(into: &buffer, flags: flags)
        case .frame(let frame):
            buffer.writeFrame(frame)
        }
        #expect(ProtocolDocument.hex(buffer.readableBytesView) == ProtocolDocument.hex(vector.bytes))
    }

    @Test(
        "decoding the whole vector yields its value and consumes every byte",
        arguments: ProtocolVectorTests.decodableNames
    )
    func decodesWhole(name: String) throws {
        let (stream, expected) = try Self.streamAndFrames(name)
        let outcome = try Self.decode(stream, pieceEnds: [stream.count])
        #expect(outcome.frames == expected)
        #expect(outcome.helloReceived)
        #expect(outcome.unreadBytes == 0)
    }

    @Test(
        "decoding the vector split anywhere, or fed one byte at a time, yields the same value",
        arguments: ProtocolVectorTests.decodableNames
    )
    func decodesInPieces(name: String) throws {
        let (stream, expected) = try Self.streamAndFrames(name)
        var splits = (0...stream.count).map { [$0, stream.count] }  // two pieces, split at every position
        splits.append(Array(1...stream.count))  // one byte at a time into a growing buffer
        // The frame comes out as soon as its last byte is there, and not before; nothing is left over.
        let wanted = Outcome(
            frames: expected,
            bytesFedAtEachFrame: expected.map { _ in stream.count },
            helloReceived: true,
            unreadBytes: 0
        )
        for pieceEnds in splits {
            let outcome = try Self.decode(stream, pieceEnds: pieceEnds)
            #expect(outcome == wanted, "pieces ending at \(pieceEnds)")
            if outcome != wanted { return }  // one split is enough to show the failure
        }
    }

    @Test("decoding an invalid vector throws the documented error", arguments: ProtocolVectorTests.rejectedNames)
    func rejectsWhole(name: String) throws {
        let vector = try Self.vector(named: name)
        let rejection = try #require(Self.rejected[name])
        let stream = Self.stream(for: vector)
        let error = try #require(throws: SocketIPCError.self) { try Self.decode(stream, pieceEnds: [stream.count]) }
        #expect(error.code == rejection.code)
        #expect(GoAwayReason(code: error.code) == rejection.reason, "the going-away reason sent for \(error.code)")
    }

    @Test(
        "fed one byte at a time, the decoder refuses an invalid vector at the expected byte, with the same error",
        arguments: ProtocolVectorTests.rejectedNames
    )
    func rejectsByteByByte(name: String) throws {
        let vector = try Self.vector(named: name)
        let rejection = try #require(Self.rejected[name])
        let stream = Self.stream(for: vector)
        var decoder = FrameDecoder(maximumPayload: FrameDecoder.defaultMaximumPayload, localFlags: Hello.knownFlags)
        var buffer = ByteBuffer()
        for (index, byte) in stream.enumerated() {
            buffer.writeInteger(byte)
            let fedOfVector = index + 1 - (stream.count - vector.bytes.count)
            do {
                let frame = try decoder.next(from: &buffer)
                #expect(frame == nil, "a frame came out of an invalid vector after \(fedOfVector) of its bytes")
            } catch {
                let error = try #require(error as? SocketIPCError)
                #expect(error.code == rejection.code)
                #expect(fedOfVector == rejection.refusedAtByte, "refused after \(fedOfVector) bytes of the vector")
                return
            }
        }
        Issue.record("the decoder accepted all \(vector.bytes.count) bytes of \(name)")
    }

    // MARK: - Decoding

    /// What decoding a byte stream produced.
    struct Outcome: Equatable {
        var frames: [Frame] = []
        /// For each frame, how many bytes of the stream had been fed when it came out.
        var bytesFedAtEachFrame: [Int] = []
        var helloReceived = false
        var unreadBytes = 0
    }

    /// Feeds `stream` to a new decoder (with the default maximum payload) in pieces ending at `pieceEnds`, appending
    /// each piece to one growing buffer and taking every whole frame after each, as the connection's channel handler
    /// does with the socket's reads.
    static func decode(_ stream: [UInt8], pieceEnds: [Int]) throws -> Outcome {
        // A decoder that knows every flag: what the peer's hello sets decides which kinds exist.
        var decoder = FrameDecoder(maximumPayload: FrameDecoder.defaultMaximumPayload, localFlags: Hello.knownFlags)
        var buffer = ByteBuffer()
        var outcome = Outcome()
        var fed = 0
        for end in pieceEnds {
            buffer.writeBytes(stream[fed..<end])
            fed = end
            while let frame = try decoder.next(from: &buffer) {
                outcome.frames.append(frame)
                outcome.bytesFedAtEachFrame.append(fed)
            }
        }
        outcome.helloReceived = decoder.helloReceived
        outcome.unreadBytes = buffer.readableBytes
        return outcome
    }

    /// The bytes of a vector as the receiver reads them: after a hello when the vector follows one.
    static func stream(for vector: Vector) -> [UInt8] {
        switch vector.after {
        case .nothing:
            return vector.bytes
        case .hello:
            var hello = ByteBuffer()
            Hello.write(into: &hello, flags: [])
            return Array(hello.readableBytesView) + vector.bytes
        case .callsHello:
            var hello = ByteBuffer()
            Hello.write(into: &hello, flags: [.calls])
            return Array(hello.readableBytesView) + vector.bytes
        case .descriptorsHello:
            var hello = ByteBuffer()
            Hello.write(into: &hello, flags: [.calls, .descriptors])
            return Array(hello.readableBytesView) + vector.bytes
        case .sharedHello:
            var hello = ByteBuffer()
            Hello.write(into: &hello, flags: [.calls, .descriptors, .sharedPayloads])
            return Array(hello.readableBytesView) + vector.bytes
        case .strictHello:
            var hello = ByteBuffer()
            Hello.write(into: &hello, flags: [.calls, .strictCredit])
            return Array(hello.readableBytesView) + vector.bytes
        }
    }

    /// A decodable vector's stream, and the frames it must decode to (none for a hello).
    static func streamAndFrames(_ name: String) throws -> (stream: [UInt8], frames: [Frame]) {
        let vector = try Self.vector(named: name)
        let decoded = try #require(Self.valid[name] ?? Self.accepted[name])
        switch decoded {
        case .hello:
            #expect(vector.after == .nothing, "a hello is the first thing on a connection")
            return (Self.stream(for: vector), [])
        case .frame(let frame):
            #expect(vector.after != .nothing, "a frame follows a hello")
            return (Self.stream(for: vector), [frame])
        }
    }

    // MARK: - Reading PROTOCOL.md

    /// One vector as PROTOCOL.md states it: a table row `` | `name` | `after` | `hex` | prose | `result` | `` in the
    /// "Test vectors" section.
    struct Vector: Sendable {
        enum After: String, Sendable {
            /// The bytes are the first on the connection.
            case nothing
            /// The bytes follow a valid version 1 hello with no flags: the peer speaks version 1's frames only.
            case hello
            /// The bytes follow a valid hello with the calls flag (`0x01`): the peer speaks frames `0x06` to `0x0C`.
            case callsHello = "calls-hello"
            /// The bytes follow a valid hello with the calls and descriptors flags (`0x03`): kind `0x0D` exists too.
            case descriptorsHello = "descriptors-hello"
            /// The bytes follow a hello with the calls, descriptors and shared-payloads flags (`0x07`): kind `0x0E`
            /// exists too.
            case sharedHello = "shared-hello"
            /// The bytes follow a hello with the calls and strict-credit flags (`0x09`): kind `0x0F` exists too.
            case strictHello = "strict-hello"
        }

        enum Result: Equatable, Sendable {
            case valid
            case accepted
            case reject(reason: UInt8, code: String)
        }

        var name: String
        var after: After
        var bytes: [UInt8]
        var result: Result
    }

    struct DocumentError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// The vector `name` from PROTOCOL.md.
    static func vector(named name: String) throws -> Vector {
        try #require(try Self.documentedVectors()[name], "PROTOCOL.md has no test vector named \(name)")
    }

    /// Every vector of PROTOCOL.md's "Test vectors" section, by name.
    static func documentedVectors() throws -> [String: Vector] {
        let url = try ProtocolDocument.url()
        let text = try String(contentsOf: url, encoding: .utf8)
        var inSection = false
        var vectors: [String: Vector] = [:]
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.hasPrefix("## ") {
                inSection = line == "## Test vectors"
                continue
            }
            guard inSection, line.hasPrefix("| `") else { continue }
            let vector = try Self.parseRow(line)
            guard vectors.updateValue(vector, forKey: vector.name) == nil else {
                throw DocumentError("\(url.path) names two test vectors \(vector.name)")
            }
        }
        guard !vectors.isEmpty else { throw DocumentError("\(url.path) has no '## Test vectors' section with vectors") }
        return vectors
    }

    /// Parses `` | `name` | `after` | `hex` | prose | `result` | ``.
    static func parseRow(_ row: Substring) throws -> Vector {
        let cells = row.split(separator: "|", omittingEmptySubsequences: false)
            .dropFirst().dropLast()
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard cells.count == 5 else { throw DocumentError("a test vector row needs 5 cells: \(row)") }
        func code(_ cell: String) throws -> String {
            guard cell.count >= 2, cell.hasPrefix("`"), cell.hasSuffix("`") else {
                throw DocumentError("expected a cell in backticks, found '\(cell)' in: \(row)")
            }
            return String(cell.dropFirst().dropLast())
        }
        let name = try code(cells[0])
        guard let after = Vector.After(rawValue: try code(cells[1])) else {
            throw DocumentError("vector \(name): 'after' must be `nothing`, `hello` or `calls-hello`, not \(cells[1])")
        }
        return Vector(
            name: name,
            after: after,
            bytes: try Self.parseHex(try code(cells[2]), vector: name),
            result: try Self.parseResult(try code(cells[4]), vector: name)
        )
    }

    static func parseHex(_ text: String, vector: String) throws -> [UInt8] {
        let digits = Array(text.filter { $0 != " " })
        guard !digits.isEmpty, digits.count.isMultiple(of: 2) else {
            throw DocumentError("vector \(vector): '\(text)' is not a whole number of hex bytes")
        }
        return try stride(from: 0, to: digits.count, by: 2).map { index in
            guard let byte = UInt8(String(digits[index...index + 1]), radix: 16) else {
                throw DocumentError("vector \(vector): '\(text)' is not hex")
            }
            return byte
        }
    }

    static func parseResult(_ text: String, vector: String) throws -> Vector.Result {
        let words = text.split(separator: " ")
        switch words.first {
        case "valid" where words.count == 1:
            return .valid
        case "accepted" where words.count == 1:
            return .accepted
        case "reject" where words.count == 3 && words[1].hasPrefix("0x"):
            guard let reason = UInt8(words[1].dropFirst(2), radix: 16) else { break }
            return .reject(reason: reason, code: String(words[2]))
        default:
            break
        }
        throw DocumentError("vector \(vector): result must be `valid`, `accepted` or `reject 0xRR code`, not '\(text)'")
    }
}

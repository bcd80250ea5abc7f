import NIOCore
import Testing

@testable import SocketIPCCore

/// Call frames carry strings in length-prefixed fields (PROTOCOL.md, "Calls"): a method name of at most 255 bytes, an
/// error code of at most 255, a status text of at most 65,535. What fits is written whole; what does not is cut to
/// the field's limit, and the frame stays well formed.
@Suite("Call frames: strings and their length fields")
struct CallFrameWritingTests {
    /// Writes `frame` for call 7 and decodes it back from its payload, checking the header on the way.
    static func roundTrip(_ frame: CallFrame) throws -> CallFrame {
        var buffer = ByteBuffer()
        buffer.writeCallFrame(id: 7, frame)
        let length = buffer.readInteger(as: UInt32.self)
        #expect(length.map(Int.init) == buffer.readableBytes)
        let kindByte = buffer.readInteger(as: UInt8.self)
        let kind = try #require(kindByte.flatMap(FrameKind.init(rawValue:)))
        #expect(kind == frame.kind)
        let id = buffer.readInteger(as: UInt32.self)
        #expect(id == 7)
        return try CallFrame.decode(kind, payload: &buffer)
    }

    @Test("a method name, error code and status text within their limits arrive whole, non-ASCII ones too")
    func withinLimits() throws {
        let method = "kv.wätch-" + String(repeating: "m", count: 200)
        guard case .open(let open) = try Self.roundTrip(.open(CallOpen(method: method, timeoutNanoseconds: 5))) else {
            Issue.record("not an open frame")
            return
        }
        #expect(open.method == method)
        #expect(open.timeoutNanoseconds == 5)

        let status = CallStatus(
            code: .applicationError,
            errorCode: "not-found-ü",
            message: String(repeating: "t", count: 65_000) + "é",
            details: ByteBuffer(string: "{}")
        )
        guard case .end(let ended) = try Self.roundTrip(.end(status)) else {
            Issue.record("not an end frame")
            return
        }
        #expect(ended.code == .applicationError)
        #expect(ended.errorCode == status.errorCode)
        #expect(ended.message == status.message)
        #expect(ended.details == status.details)
    }

    @Test("an empty status (ok) is the 4 bytes of its fields and nothing else")
    func emptyStatus() throws {
        var buffer = ByteBuffer()
        buffer.writeCallFrame(id: 1, .end(.ok))
        #expect(Array(buffer.readableBytesView) == [0, 0, 0, 9, 0x08, 0, 0, 0, 1, 0, 0, 0, 0])
    }

    @Test("strings beyond their fields' limits are cut to 255 and 65,535 bytes, and the frame still decodes")
    func beyondLimits() throws {
        guard case .open(let open) = try Self.roundTrip(.open(CallOpen(method: String(repeating: "x", count: 300)))) else {
            Issue.record("not an open frame")
            return
        }
        #expect(open.method == String(repeating: "x", count: 255))

        let status = CallStatus(
            code: .applicationError,
            errorCode: String(repeating: "c", count: 300),
            message: String(repeating: "m", count: 70_000),
            details: ByteBuffer(string: "d")
        )
        guard case .end(let ended) = try Self.roundTrip(.end(status)) else {
            Issue.record("not an end frame")
            return
        }
        #expect(ended.errorCode == String(repeating: "c", count: 255))
        #expect(ended.message == String(repeating: "m", count: 65_535))
        #expect(ended.details == ByteBuffer(string: "d"))
    }

    @Test("a string cut at its field's limit ends where a Unicode scalar ends: a multi-byte scalar across the limit is left out whole, so the field stays UTF-8")
    func cutAtCharacterBoundary() throws {
        // "é" is 2 bytes and "€" 3: each would straddle the limit. Before, the field ended with the character's
        // first byte(s), which is not UTF-8 (decoded, U+FFFD).
        guard case .open(let open) = try Self.roundTrip(.open(CallOpen(method: String(repeating: "x", count: 254) + "ü"))) else {
            Issue.record("not an open frame")
            return
        }
        #expect(open.method == String(repeating: "x", count: 254))
        let status = CallStatus(
            code: .applicationError,
            errorCode: String(repeating: "c", count: 254) + "é",
            message: String(repeating: "m", count: 65_533) + "€",
            details: ByteBuffer()
        )
        guard case .end(let ended) = try Self.roundTrip(.end(status)) else {
            Issue.record("not an end frame")
            return
        }
        #expect(ended.errorCode == String(repeating: "c", count: 254))
        #expect(ended.message == String(repeating: "m", count: 65_533))
        #expect(ByteBuffer.utf8Length(of: "ab€", atMost: 4) == 2)
        #expect(ByteBuffer.utf8Length(of: "ab€", atMost: 5) == 5)
        #expect(ByteBuffer.utf8Length(of: "€", atMost: 2) == 0)
    }
}

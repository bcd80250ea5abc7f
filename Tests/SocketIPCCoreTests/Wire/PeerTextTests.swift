import NIOCore
import Testing

@testable import SocketIPCCore

/// A peer's text (going-away, error reply, call status) is kept short and escaped as it is decoded (found by a review
/// of hostile servers: terminal escapes and forged log lines reached error messages and logs, and a 16 MiB going-away
/// text was kept whole).
@Suite("A peer's text is made safe as it is read")
struct PeerTextTests {
    /// A decoder past the hello, taking payloads up to 16 MiB.
    static func decoder() throws -> FrameDecoder {
        var decoder = FrameDecoder(maximumPayload: 16 << 20)
        var hello = ByteBuffer()
        Hello.write(into: &hello)
        _ = try decoder.next(from: &hello)
        return decoder
    }

    @Test("controls, DEL, C1 controls, bidirectional overrides and separators are escaped; printable text is kept")
    func escapes() {
        let hostile = "\u{1B}]0;PWNED\u{07}\u{1B}[31mRED\r\nerror: forged\u{9B}2J\u{7F}\u{202E}\u{2028}é €"
        let escaped = PeerText.escaped(hostile)
        #expect(escaped == #"\x1b]0;PWNED\x07\x1b[31mRED\x0d\x0aerror: forged\u{009b}2J\x7f\u{202e}\u{2028}é €"#)
        #expect(PeerText.escaped("a\nb\tc", keepingNewlines: true) == "a\nb\tc")
        #expect(PeerText.escaped(#"C:\x "quoted""#) == #"C:\x "quoted""#)
        // Format characters that ordinary text has stay: the zero-width joiner of an emoji sequence, Persian's
        // non-joiner, a soft hyphen.
        #expect(PeerText.escaped("👨\u{200D}👩\u{200D}👧 می\u{200C}خواهم co\u{AD}operate") == "👨\u{200D}👩\u{200D}👧 می\u{200C}خواهم co\u{AD}operate")
        // A cut at 4 KiB falls at a character's start.
        var long = ByteBuffer(string: String(repeating: "a", count: PeerText.limit - 1) + "é" + "bbb")
        let cut = PeerText.read(&long, length: long.readableBytes)
        #expect(cut == String(repeating: "a", count: PeerText.limit - 1) + "… (\(PeerText.limit + 4) bytes in all)")
        #expect(long.readableBytes == 0)
    }

    @Test("a going-away's text of 16 MiB keeps 4 KiB and says how long it was; the frame is consumed whole")
    func longGoAwayCapped() throws {
        var decoder = try Self.decoder()
        let length = (16 << 20) - 1
        var bytes = ByteBuffer()
        bytes.writeInteger(UInt32(2 + length))
        bytes.writeInteger(UInt8(0x05))
        bytes.writeInteger(UInt8(0x01))
        bytes.writeRepeatingByte(UInt8(ascii: "a"), count: length)
        bytes.writeBytes([0, 0, 0, 2, 0x01, 0x21])  // a message "!" after it
        guard case .goAway(let reason, let message) = try decoder.next(from: &bytes) else {
            Issue.record("not a going-away")
            return
        }
        #expect(reason == .protocolViolation)
        #expect(message == String(repeating: "a", count: PeerText.limit) + "… (\(length) bytes in all)")
        guard case .message(let payload) = try decoder.next(from: &bytes) else {
            Issue.record("the frame after it was not found whole")
            return
        }
        #expect(payload.readableBytesView.elementsEqual([0x21]))
    }

    @Test("an error reply's text is escaped; a call's status message keeps its newlines and tabs, its code does not")
    func errorReplyAndCallEnd() throws {
        var decoder = try Self.decoder()
        let text = Array("bad\u{1B}[2J\nline".utf8)
        var bytes = ByteBuffer()
        bytes.writeInteger(UInt32(5 + text.count))
        bytes.writeInteger(UInt8(0x04))
        bytes.writeInteger(UInt32(7))
        bytes.writeBytes(text)
        guard case .errorReply(7, let message) = try decoder.next(from: &bytes) else {
            Issue.record("not an error reply")
            return
        }
        #expect(message == #"bad\x1b[2J\x0aline"#)

        let code = Array("no\nt".utf8)
        let status = Array("two\nlines\u{07}".utf8)
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(0x01))  // application error
        payload.writeInteger(UInt8(code.count))
        payload.writeBytes(code)
        payload.writeInteger(UInt16(status.count))
        payload.writeBytes(status)
        guard case .end(let end) = try CallFrame.decode(.callEnd, payload: &payload) else {
            Issue.record("not a call end")
            return
        }
        #expect(end.errorCode == #"no\x0at"#)
        #expect(end.message == "two\nlines\\x07")
    }
}

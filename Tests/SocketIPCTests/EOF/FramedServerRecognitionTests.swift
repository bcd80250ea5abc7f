import NIOCore
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// What an EOF-style client read back tells it about a framed server (PROTOCOL.md: a side may send frames right after
/// its own hello, so the going-away may come after other frames).
@Suite("A framed server's answer to an EOF-style client is recognised")
struct FramedServerRecognitionTests {
    /// `hex` (spaces ignored) as bytes.
    static func bytes(_ hex: String) -> ByteBuffer { ByteBuffer(bytes: ProtocolDocument.bytes(hex: hex)) }

    @Test("a hello alone, and a hello and a going-away")
    func helloAndGoAway() {
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000"))?.protocolVersion == 1)
        let answer = FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000004 05 01 6869"))
        #expect(answer == .init(protocolVersion: 1, goAwayReason: 1, goAwayText: "hi"))
    }

    @Test("a hello, a message frame the server sent at once, then a going-away (found by a review: taken for an acknowledgement)")
    func frameBeforeGoAway() {
        let bytes = Self.bytes("53495043 01 09 0000  00000003 01 6f6b  00000002 05 01")
        #expect(FramedServerRecognition.recognize(bytes) == .init(protocolVersion: 1, goAwayReason: 1, goAwayText: nil))
        #expect(FramedServerRecognition.error(for: bytes, path: "/tmp/s.sock")?.code == .wrongStyle)
    }

    @Test("a hello and frames cut short, without a going-away")
    func framesCutShort() {
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000003 01 6f"))?.goAwayReason == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  0000"))?.protocolVersion == 1)
    }

    @Test("an EOF-style server's acknowledgement that starts with SIPC is one: an echo of text, whole frames and no going-away, an unknown kind (found by a review of the first fix)")
    func acknowledgementsStartingWithMagic() {
        #expect(FramedServerRecognition.recognize(ByteBuffer(string: "SIPC is great")) == nil)
        #expect(FramedServerRecognition.recognize(ByteBuffer(string: "SIPC-protocol doc v1")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000003 01 6f6b")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000003 7f 6f6b")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  7fffffff 01")) == nil)
    }

    @Test("anything else is an acknowledgement: no magic, a frame of length 0, a going-away without its reason")
    func notFramed() {
        #expect(FramedServerRecognition.recognize(Self.bytes("00000004")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("4f4b0a")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000000 01")) == nil)
        #expect(FramedServerRecognition.recognize(Self.bytes("53495043 01 00 0000  00000001 05")) == nil)
    }
}

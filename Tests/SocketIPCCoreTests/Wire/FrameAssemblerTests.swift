import NIOCore
import Testing

@testable import SocketIPCCore

/// A frame gathered from many small reads costs about its own size in memory (issue 9, section 3).
@Suite("Frame assembly")
struct FrameAssemblerTests {
    @Test("bytes appended one at a time occupy less than twice their number, plus a small start")
    func oneByteAtATime() {
        var assembler = FrameAssembler(ByteBufferAllocator().buffer(capacity: 64))
        var worst = 0.0
        for count in 1...20_000 {
            assembler.append(ByteBuffer(bytes: [UInt8(truncatingIfNeeded: count)]))
            if count >= 64 { worst = max(worst, Double(assembler.bytes.capacity) / Double(count)) }
        }
        #expect(assembler.readableBytes == 20_000)
        #expect(worst <= 2.0, "the buffer held up to \(worst) bytes of capacity per byte")
    }

    @Test("a request fed to the decoder through the assembler one byte at a time decodes whole")
    func decodesAfterAssembly() throws {
        let payload = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var frame = ByteBuffer()
        frame.writeFrame(.request(id: 3, payload: ByteBuffer(bytes: payload)))
        var decoder = FrameDecoder(maximumPayload: 1 << 20)
        var hello = ByteBuffer()
        Hello.write(into: &hello)
        #expect(try decoder.next(from: &hello) == nil)
        var assembler = FrameAssembler(ByteBuffer())
        var decoded: Frame?
        while let byte = frame.readSlice(length: 1) {
            assembler.append(byte)
            if let next = try decoder.next(from: &assembler.bytes) { decoded = next }
        }
        #expect(decoded == .request(id: 3, payload: ByteBuffer(bytes: payload)))
        #expect(assembler.readableBytes == 0)
    }
}

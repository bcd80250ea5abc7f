import NIOCore
import Testing

@testable import SocketIPCCore

/// The scanner that finds descriptors frames (`0x0D`) in a byte stream for the relay, fed in pieces of any size.
@Suite("Descriptor frame scanner")
struct DescriptorFrameScannerTests {
    /// A hello with the descriptors flag, a message, a descriptors frame for 2, a request, a descriptors frame for 1 and
    /// a message; the two descriptors frames start at 17 and 36 and end (their count byte) at 22 and 41.
    static let stream: [UInt8] = {
        var buffer = ByteBuffer()
        Hello.write(into: &buffer, flags: [.calls, .descriptors])
        buffer.writeFrame(.message(ByteBuffer(string: "hi")))  // 8..<15
        buffer.writeFrame(.descriptors(count: 2))  // 15..<21
        buffer.writeFrame(.request(id: 7, payload: ByteBuffer(string: "abcd")))  // 21..<34
        buffer.writeFrame(.descriptors(count: 1))  // 34..<40
        buffer.writeFrame(.message(ByteBuffer(string: "x")))  // 40..<46
        return Array(buffer.readableBytesView)
    }()

    /// Scans `stream` in pieces ending at `ends`; returns the absolute starts and (end, count) of what was found.
    static func scan(_ stream: [UInt8], ends: [Int]) -> (starts: [Int], ends: [Int], counts: [Int], flags: HelloFlags?) {
        var scanner = DescriptorFrameScanner()
        var starts: [Int] = []
        var lasts: [Int] = []
        var counts: [Int] = []
        var from = 0
        for end in ends {
            let found = stream[from..<end].withUnsafeBytes { scanner.scan($0) }
            for frame in found {
                if let start = frame.start { starts.append(from + start) }
                if let last = frame.end { lasts.append(from + last) }
                if let count = frame.count { counts.append(count) }
            }
            from = end
        }
        return (starts, lasts, counts, scanner.helloFlags)
    }

    @Test("finds each descriptors frame's first and last byte and its count, however the stream is split")
    func everySplit() {
        let stream = Self.stream
        var splits = (0...stream.count).map { [$0, stream.count] }
        splits.append(Array(1...stream.count))
        for ends in splits {
            let result = Self.scan(stream, ends: ends)
            #expect(result.starts == [15, 34], "split \(ends)")
            #expect(result.ends == [20, 39], "split \(ends)")
            #expect(result.counts == [2, 1], "split \(ends)")
            #expect(result.flags == [.calls, .descriptors])
        }
    }

    @Test("a header cut by the end of a piece is reported as incomplete, so a sender holds it back")
    func incompleteHeader() {
        var scanner = DescriptorFrameScanner()
        let found = Self.stream[0..<17].withUnsafeBytes { scanner.scan($0) }
        #expect(found.isEmpty)
        #expect(scanner.incompleteHeaderBytes == 2)
        #expect(scanner.mayBeInsideDescriptorsFrame)
        let rest = Self.stream[17..<21].withUnsafeBytes { scanner.scan($0) }
        #expect(rest == [.init(start: -2, end: 3, count: 2)])
        #expect(!scanner.mayBeInsideDescriptorsFrame)
    }

    @Test("a frame of length 0 stops the scanner; nothing after it is found")
    func brokenStream() {
        var buffer = ByteBuffer()
        Hello.write(into: &buffer, flags: [.descriptors])
        buffer.writeBytes([0, 0, 0, 0, 0x0D])
        buffer.writeFrame(.descriptors(count: 1))
        var scanner = DescriptorFrameScanner()
        let found = buffer.readableBytesView.withUnsafeBytes { scanner.scan($0) }
        #expect(found.isEmpty)
        #expect(scanner.isBroken)
    }

    @Test("a length that claims gigabytes is only counted down, never allocated")
    func hugeLength() {
        var buffer = ByteBuffer()
        Hello.write(into: &buffer, flags: [.descriptors])
        buffer.writeBytes([0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        buffer.writeBytes([UInt8](repeating: 0x0D, count: 1000))  // payload of that message, not frames
        var scanner = DescriptorFrameScanner()
        let found = buffer.readableBytesView.withUnsafeBytes { scanner.scan($0) }
        #expect(found.isEmpty)
        #expect(!scanner.mayBeInsideDescriptorsFrame)
    }
}

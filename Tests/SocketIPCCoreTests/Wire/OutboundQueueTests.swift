import NIOCore
import Testing

@testable import SocketIPCCore

/// The outbound queue stores small frames through a window on its coalescing buffer: what it hands out must be the
/// frames' bytes in order, whatever mix of frames, buffer growth and copies of the queue came before.
@Suite("Outbound queue")
struct OutboundQueueTests {
    /// The bytes of `batch`, in the order a flush writes them.
    static func bytes(of batch: OutboundQueue.Batch) -> [UInt8] {
        var all = ByteBuffer()
        for var buffer in batch.buffers { all.writeBuffer(&buffer) }
        return Array(all.readableBytesView)
    }

    /// The wire bytes of `frames`, written one by one with the reference writer.
    static func expected(_ frames: [Frame]) -> [UInt8] {
        var buffer = ByteBuffer()
        for frame in frames { buffer.writeFrame(frame) }
        return Array(buffer.readableBytesView)
    }

    @Test("thousands of small frames, through several coalescing buffers, come out whole and in order")
    func manySmallFrames() {
        var queue = OutboundQueue()
        var frames: [Frame] = []
        for index in 0..<5_000 {
            let payload = ByteBuffer(repeating: UInt8(truncatingIfNeeded: index), count: index % 97)
            let frame: Frame = index % 3 == 0 ? .request(id: UInt32(index), payload: payload) : .message(payload)
            frames.append(frame)
            switch frame {
            case .request(let id, let payload): queue.appendFrame(.request, id: id, payload: payload, spareBuffer: { nil })
            case .message(let payload): queue.appendFrame(.message, id: 0, payload: payload, spareBuffer: { nil })
            default: Issue.record("unexpected frame")
            }
        }
        let expected = Self.expected(frames)
        #expect(queue.byteCount == expected.count)
        #expect(Self.bytes(of: queue.takeAll()) == expected)
        #expect(queue.isEmpty && queue.byteCount == 0)
    }

    @Test("a copy of the queue keeps its own frames: neither copy stores through the other's window")
    func copiesStayApart() {
        var original = OutboundQueue()
        original.appendFrame(.message, id: 0, payload: ByteBuffer(string: "shared"), spareBuffer: { nil })
        original.appendFrame(.message, id: 0, payload: ByteBuffer(string: "also shared"), spareBuffer: { nil })
        var copy = original
        original.appendFrame(.message, id: 0, payload: ByteBuffer(string: "original only"), spareBuffer: { nil })
        copy.appendFrame(.request, id: 9, payload: ByteBuffer(string: "copy only"), spareBuffer: { nil })
        original.appendFrame(.message, id: 0, payload: ByteBuffer(string: "original again"), spareBuffer: { nil })
        let shared: [Frame] = [.message(ByteBuffer(string: "shared")), .message(ByteBuffer(string: "also shared"))]
        #expect(
            Self.bytes(of: copy.takeAll())
                == Self.expected(shared + [.request(id: 9, payload: ByteBuffer(string: "copy only"))])
        )
        #expect(
            Self.bytes(of: original.takeAll())
                == Self.expected(
                    shared + [
                        .message(ByteBuffer(string: "original only")), .message(ByteBuffer(string: "original again")),
                    ]
                )
        )
    }

    @Test("frames around a large payload, a descriptors frame and raw bytes keep their order")
    func mixedFrames() {
        var queue = OutboundQueue()
        let large = ByteBuffer(repeating: 0x5A, count: OutboundQueue.largePayloadThreshold)
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "one"), spareBuffer: { nil })
        queue.appendFrame(.message, id: 0, payload: large, spareBuffer: { nil })
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "two"), spareBuffer: { nil })
        queue.appendDescriptorsFrame(count: 2, spareBuffer: { nil })
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "three"), spareBuffer: { nil })
        var goAway = ByteBuffer()
        goAway.writeFrame(.goAway(.normal, message: "bye"))
        queue.appendRaw(goAway)
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "four"), spareBuffer: { nil })
        var expected = Self.expected([
            .message(ByteBuffer(string: "one")), .message(large), .message(ByteBuffer(string: "two")),
        ])
        expected += [0, 0, 0, 2, FrameKind.descriptors.rawValue, 2]
        expected += Self.expected([.message(ByteBuffer(string: "three")), .goAway(.normal, message: "bye")])
        expected += Self.expected([.message(ByteBuffer(string: "four"))])
        #expect(Self.bytes(of: queue.takeAll()) == expected)
    }

    @Test("a spare buffer handed in is written from its writer index, and a queue refilled after a flush starts afresh")
    func spareBufferAndRefill() {
        var queue = OutboundQueue()
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "first"), spareBuffer: { nil })
        let first = queue.takeAll()
        var spare = first.tail!
        spare.clear()
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "second"), spareBuffer: { spare })
        queue.appendFrame(.message, id: 0, payload: ByteBuffer(string: "third"), spareBuffer: { nil })
        #expect(
            Self.bytes(of: queue.takeAll())
                == Self.expected([.message(ByteBuffer(string: "second")), .message(ByteBuffer(string: "third"))])
        )
    }

    @Test("call control frames written into the coalescing buffer sit between windowed frames in order, counted")
    func callControlFrames() {
        var queue = OutboundQueue()
        let longName = String(repeating: "n", count: 200)
        let controls: [CallFrame] = [
            .open(CallOpen(method: longName, timeoutNanoseconds: 5)),
            .end(CallStatus(code: .ok)),
            .credit(65_536),
            .cancel(.deadlineExceeded),
        ]
        var expected = ByteBuffer()
        for (index, control) in controls.enumerated() {
            let message = ByteBuffer(string: "message \(index)")
            queue.appendFrame(.callMessage, id: UInt32(index), payload: message, spareBuffer: { nil })
            expected.writeCallFrame(id: UInt32(index), .message(message))
            queue.appendCallControlFrame(id: UInt32(index), control, spareBuffer: { nil })
            expected.writeCallFrame(id: UInt32(index), control)
        }
        #expect(queue.byteCount == expected.readableBytes)
        #expect(Self.bytes(of: queue.takeAll()) == Array(expected.readableBytesView))
    }
}

import NIOCore
import Testing

@testable import SocketIPCCore

/// A call's inbound queue holds one message without allocating, and must stay first in, first out when it moves to
/// a ring for more.
@Suite("Inbound messages of a call")
struct InboundMessagesTests {
    @Test("appends and pops, interleaved in every pattern up to eight messages, come out in order")
    func firstInFirstOut() {
        // Each bit of `pattern` says whether step `i` appends (1) or pops (0).
        for pattern in 0..<(1 << 12) {
            var queue = InboundMessages()
            var model: [ByteBuffer] = []
            var next = 0
            for step in 0..<12 {
                if pattern & (1 << step) != 0 {
                    let message = ByteBuffer(string: "m\(next)")
                    next += 1
                    queue.append(message)
                    model.append(message)
                } else {
                    let popped = queue.popFirst()
                    let expected = model.isEmpty ? nil : model.removeFirst()
                    #expect(popped == expected, "pattern \(pattern), step \(step)")
                }
                #expect(queue.count == model.count)
            }
            queue.removeAll()
            #expect(queue.count == 0 && queue.popFirst() == nil)
        }
    }
}

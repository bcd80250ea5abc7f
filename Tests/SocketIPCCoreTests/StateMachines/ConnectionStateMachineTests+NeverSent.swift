import NIOCore
import Testing

@testable import SocketIPCCore

extension ConnectionStateMachineTests {
    @Test("never sent: what was still queued at the close, and what the socket refused, from its first byte on; nothing while open, nor what was handed on")
    func neverSent() {
        var machine = Self.machine()
        let first = machine.nextOutboundOffset
        _ = machine.enqueueCallControlFrame(id: 1, .open(CallOpen(method: "a", timeoutNanoseconds: 0)), spareBuffer: { nil })
        let second = machine.nextOutboundOffset
        #expect(second > first)
        // Flushed: handed to the socket (or the channel), so it may have left.
        guard case .write(let batch, _, _) = machine.flush() else {
            Issue.record("nothing to flush")
            return
        }
        #expect(batch.buffers.reduce(0) { $0 + $1.readableBytes } == second - first)
        _ = machine.enqueueCallControlFrame(id: 3, .open(CallOpen(method: "b", timeoutNanoseconds: 0)), spareBuffer: { nil })
        let third = machine.nextOutboundOffset
        #expect(!machine.neverSent(from: second), "nothing is known while the connection is open")
        _ = machine.closed(error: nil)
        #expect(!machine.neverSent(from: first), "flushed before the close")
        #expect(machine.neverSent(from: second), "still queued at the close")
        #expect(machine.neverSent(from: third))

        // The socket refused the last 10 bytes of a flush for good: from there on, nothing left.
        var refusing = Self.machine()
        _ = refusing.enqueueCallControlFrame(id: 1, .open(CallOpen(method: "a", timeoutNanoseconds: 0)), spareBuffer: { nil })
        let taken = refusing.nextOutboundOffset
        _ = refusing.flush()
        refusing.sendRefused(unwrittenBytes: 10)
        refusing.sendRefused(unwrittenBytes: 1)  // later refusals do not move it
        _ = refusing.closed(error: nil)
        #expect(refusing.neverSent(from: taken - 10))
        #expect(!refusing.neverSent(from: taken - 11))
    }
}

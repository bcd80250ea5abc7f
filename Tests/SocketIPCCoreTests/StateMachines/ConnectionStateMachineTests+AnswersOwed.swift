import NIOCore
import Testing

@testable import SocketIPCCore

extension ConnectionStateMachineTests {
    @Test("answers a peer asks for: only an unwritable channel counts, 10,000 then refused, and the count starts again once it is writable")
    func answersOwed() {
        var machine = Self.machine(highWatermark: 1024)
        // A read batch's answers fill this side's own queue far above its watermark before the batch ends and
        // flushes: that is not the peer failing to read, so nothing is counted (an honest pipelining peer).
        let answer = ByteBuffer(repeating: 0x61, count: 1024)
        var counted = 0
        for _ in 0..<20_000 {
            if !machine.answerOwed() { counted += 1 }
            _ = machine.enqueue(.reply, id: 1, payload: answer, spareBuffer: { nil })
        }
        #expect(counted == 0)
        // The channel holds more than its watermark that the peer has not taken: now they count.
        _ = machine.writabilityChanged(false)
        var allowed = 0
        while machine.answerOwed() && allowed <= 20_000 { allowed += 1 }
        #expect(allowed == Int(Machine.maximumAnswersOwedUnread))
        // The peer read: the count starts again.
        _ = machine.writabilityChanged(true)
        _ = machine.writabilityChanged(false)
        let again = machine.answerOwed()
        #expect(again)
    }
}

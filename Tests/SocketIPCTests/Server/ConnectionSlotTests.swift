import Synchronization
import Testing

@testable import SocketIPCRuntime

/// A connection's place in the server's admission count, held by its channel and by handler work that outlives it.
@Suite("ConnectionSlot")
struct ConnectionSlotTests {
    @Test("released once, when the last of its holders lets go: the channel's close alone does not free it while a handler holds it")
    func releasedWhenTheLastHolderLetsGo() {
        let releases = Atomic<Int>(0)
        let slot = ConnectionSlot(released: { releases.add(1, ordering: .relaxed) })
        slot.hold()  // an EOF-style collecting handler starts
        slot.release()  // its client closed: the channel lets go
        #expect(releases.load(ordering: .relaxed) == 0)
        slot.release()  // the handler ends
        #expect(releases.load(ordering: .relaxed) == 1)

        let plain = ConnectionSlot(released: { releases.add(1, ordering: .relaxed) })
        plain.release()
        #expect(releases.load(ordering: .relaxed) == 2)
    }
}

import NIOCore
import Testing

@testable import SocketIPCCore

/// The per-call state: credit both ways, what waits, and how a call fails; with plain values for the waiters.
@Suite("CallStateMachine")
struct CallStateMachineTests {
    typealias Machine = CallStateMachine<String, String>

    static func message(_ size: Int) -> ByteBuffer { ByteBuffer(repeating: 0x61, count: size) }
    static let cost = Machine.frameCost(payloadLength: 1000)

    @Test("a sender sends while its credit is above zero, and the message that takes it below zero still goes")
    func sendCredit() throws {
        var machine = Machine()
        var sent = 0
        while case .send = machine.reserveSend(payloadLength: 1000, orWait: "writer") { sent += 1 }
        // 65,536 bytes of credit, 1,009 bytes a message: the 65th takes it below zero.
        #expect(sent == (Machine.initialWindow + Self.cost - 1) / Self.cost)
        #expect(machine.availableSendCredit <= 0)
        // Waiting now; credit resumes the waiter and takes its message's cost.
        let before = machine.availableSendCredit
        guard case .resume(let resumed) = machine.creditReceived(UInt32(Self.cost)) else { throw Unexpected() }
        #expect(resumed == "writer")
        #expect(machine.availableSendCredit == before + Self.cost - Self.cost)
        // Not enough credit to go above zero: nobody to resume.
        guard case .none = machine.creditReceived(1) else { throw Unexpected() }
    }

    @Test("after stopReceiving, messages are dropped as they arrive but still cost credit; no credit is given back")
    func stopReceiving() throws {
        var machine = Machine()
        guard case .none = machine.messageReceived(Self.message(100)) else { throw Unexpected() }
        #expect(machine.stopReceiving() == true, "one message was held")
        #expect(machine.acceptsMessages == false)
        // Dropped, not held: nothing to read.
        var received = 0
        while case .none = machine.messageReceived(Self.message(1000)) { received += 1 }
        #expect(received == (Machine.initialWindow - Machine.frameCost(payloadLength: 100) + Self.cost - 1) / Self.cost)
        guard case .wait = machine.poll() else { throw Unexpected() }
        // Beyond the credit it is still a violation.
        guard case .violation = machine.messageReceived(Self.message(1)) else { throw Unexpected() }
        // The peer's end still arrives.
        guard case .none = machine.endReceived(.ok) else { throw Unexpected() }
        guard case .end = machine.poll() else { throw Unexpected() }
        var fresh = Machine()
        #expect(fresh.stopReceiving() == false)
    }

    @Test("credit that would take the window above 2^31 - 1 bytes is a violation, and leaves the window as it was")
    func creditBeyondTheMaximumWindow() throws {
        var machine = Machine()
        let room = Machine.maximumWindow - Machine.initialWindow
        guard case .none = machine.creditReceived(UInt32(room)) else { throw Unexpected() }
        #expect(machine.availableSendCredit == Machine.maximumWindow)
        guard case .violation = machine.creditReceived(1) else { throw Unexpected() }
        guard case .violation = machine.creditReceived(.max) else { throw Unexpected() }
        #expect(machine.availableSendCredit == Machine.maximumWindow)
        // Sending makes room again.
        guard case .send = machine.reserveSend(payloadLength: 991, orWait: "writer") else { throw Unexpected() }
        guard case .none = machine.creditReceived(1000) else { throw Unexpected() }
        #expect(machine.availableSendCredit == Machine.maximumWindow)
    }

    @Test("a receiver refuses a message its peer had no credit for, and gives credit back once a quarter of the window is read")
    func receiveCredit() throws {
        var machine = Machine()
        var received = 0
        while true {
            let action = machine.messageReceived(Self.message(1000))
            if case .violation = action { break }
            received += 1
            #expect(received < 1000)
        }
        #expect(received == (Machine.initialWindow + Self.cost - 1) / Self.cost)
        // Reading gives credit back in one grant once a quarter of the window is consumed.
        var granted = 0
        for _ in 0..<received {
            if case .message(_, let credit) = machine.next(orWait: "reader") { granted += credit }
        }
        #expect(granted >= Machine.grantThreshold)
        #expect(granted % Self.cost == 0)
        // The peer may send again.
        if case .violation = machine.messageReceived(Self.message(1000)) { Issue.record("credit was given back") }
    }

    @Test("a caller's end keeps only its code (a hostile caller's details are not held for the call's life); a handler's end keeps its error and details")
    func callersEndKeepsNothingElse() throws {
        let details = ByteBuffer(repeating: 0x44, count: 1 << 20)
        let withEverything = CallStatus(code: .ok, errorCode: "code", message: "text", details: details)
        var handling = Machine()
        _ = handling.endReceived(withEverything, fromCaller: true)
        guard case .end(let kept) = handling.next(orWait: "reader") else { throw Failure("the end stays") }
        #expect(kept.code == .ok && kept.errorCode.isEmpty && kept.message.isEmpty && kept.details.readableBytes == 0)

        var calling = Machine()
        let failed = CallStatus(code: .applicationError, errorCode: "code", message: "text", details: details)
        _ = calling.endReceived(failed, fromCaller: false)
        guard case .end(let status) = calling.next(orWait: "reader") else { throw Failure("the end stays") }
        #expect(status.code == .applicationError && status.errorCode == "code" && status.details == details)
    }

    @Test("a waiting reader gets the next message or the end; a failure reaches every waiter and every later call")
    func readersAndFailure() throws {
        var machine = Machine()
        guard case .wait = machine.next(orWait: "reader") else { throw Failure("a reader with nothing to read waits") }
        guard case .deliver("reader", _) = machine.messageReceived(Self.message(3)) else {
            throw Failure("the message goes to the waiting reader")
        }
        guard case .wait = machine.next(orWait: "reader2") else { throw Failure("waits again") }
        guard case .end("reader2", .ok) = machine.endReceived(.ok) else { throw Failure("the end goes to the reader") }
        guard case .end(.ok) = machine.next(orWait: "reader3") else { throw Failure("the end stays") }

        var failing = Machine()
        _ = failing.next(orWait: "reader")
        _ = failing.reserveSend(payloadLength: Machine.initialWindow * 2, orWait: "w0")
        _ = failing.reserveSend(payloadLength: 1, orWait: "writer")
        let action = failing.fail(CancellationError())
        #expect(action.readWaiter == "reader")
        #expect(action.writeWaiter == "writer")
        guard case .fail = failing.next(orWait: "later") else { throw Failure("later reads fail") }
        guard case .fail = failing.reserveSend(payloadLength: 1, orWait: "later") else { throw Failure("so do sends") }
        #expect(failing.endOutbound() == .none, "a failed call sends no end")
    }

    @Test("a failure that keeps what was received (the connection closed) still hands out the messages, then the end or the failure; one that does not (a cancel) drops them")
    func failureKeepingReceived() throws {
        for ended in [true, false] {
            var machine = Machine()
            _ = machine.messageReceived(Self.message(1))
            _ = machine.messageReceived(Self.message(2))
            if ended { _ = machine.endReceived(.ok) }
            _ = machine.fail(CancellationError(), keepingReceived: true)
            guard case .message(let first, _) = machine.poll(), first.readableBytes == 1 else { throw Failure("first") }
            guard case .message(let second, _) = machine.poll(), second.readableBytes == 2 else { throw Failure("second") }
            switch machine.poll() {
            case .end(.ok) where ended, .fail where !ended: break
            default: throw Failure("then the end if it came, else the failure (ended: \(ended))")
            }
        }
        var dropping = Machine()
        _ = dropping.messageReceived(Self.message(1))
        _ = dropping.fail(CancellationError())
        guard case .fail = dropping.poll() else { throw Failure("a cancel drops what was received") }
    }

    struct Failure: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    @Test("a second reader or writer while one waits fails at once, and the first still gets what it waits for")
    func oneWaiterEachWay() throws {
        var machine = Machine()
        guard case .wait = machine.next(orWait: "first reader") else { throw Unexpected() }
        guard case .fail(let readError) = machine.next(orWait: "second reader") else { throw Unexpected() }
        #expect((readError as? SocketIPCError)?.code == .invalidState)
        guard case .deliver(let reader, _) = machine.messageReceived(Self.message(10)) else { throw Unexpected() }
        #expect(reader == "first reader")

        while case .send = machine.reserveSend(payloadLength: 1000, orWait: "first writer") {}
        guard case .fail(let writeError) = machine.reserveSend(payloadLength: 10, orWait: "second writer") else {
            throw Unexpected()
        }
        #expect((writeError as? SocketIPCError)?.code == .invalidState)
        guard case .resume(let writer) = machine.creditReceived(UInt32(Machine.initialWindow)) else { throw Unexpected() }
        #expect(writer == "first writer")
    }

    struct Unexpected: Error {}
}

/// A payload kept beyond its read does not keep the read buffer it is a slice of (found by a review: a peer that sent
/// each small message in a read of its own made a server hold 1 MiB per message queued).
@Suite("Payloads kept apart from their read buffers")
struct CompactedPayloadTests {
    /// A slice of `length` bytes of a 1 MiB read buffer.
    static func slice(_ length: Int) -> ByteBuffer {
        var read = ByteBufferAllocator().buffer(capacity: 1 << 20)
        read.writeRepeatingByte(0x61, count: 1 << 20)
        read.moveReaderIndex(forwardBy: 100)
        return read.readSlice(length: length)!
    }

    @Test("a small slice of a large buffer is copied; a slice that fills most of its buffer, or a small buffer, is not")
    func compactedCopiesOnlyWhatWastes() {
        let small = Self.slice(10)
        #expect(small.storageCapacity == 1 << 20)
        let copied = small.compacted()
        #expect(copied == small)
        #expect(copied.storageCapacity < 4096)
        let large = Self.slice(600 * 1024)
        #expect(large.compacted().storageCapacity == 1 << 20, "kept: the buffer is mostly this payload")
        let own = ByteBuffer(string: "hello")
        #expect(own.compacted().storageCapacity == own.storageCapacity)
    }

    @Test("a call message queued for its consumer is kept as a copy; one handed to a waiting reader is not copied")
    func queuedMessageCompacted() throws {
        var machine = CallStateMachine<String, String>()
        guard case .none = machine.messageReceived(Self.slice(10)) else { throw CallStateMachineTests.Unexpected() }
        guard case .message(let queued, _) = machine.poll() else { throw CallStateMachineTests.Unexpected() }
        #expect(queued.readableBytes == 10)
        #expect(queued.storageCapacity < 4096, "queued as a slice of the 1 MiB read buffer")
        guard case .wait = machine.next(orWait: "reader") else { throw CallStateMachineTests.Unexpected() }
        guard case .deliver(let waiter, let delivered) = machine.messageReceived(Self.slice(10)) else {
            throw CallStateMachineTests.Unexpected()
        }
        #expect(waiter == "reader")
        #expect(delivered.storageCapacity == 1 << 20, "handed over at once: no copy")
    }
}

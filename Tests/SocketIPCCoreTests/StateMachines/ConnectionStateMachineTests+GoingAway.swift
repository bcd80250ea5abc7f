import NIOCore
import Testing

@testable import SocketIPCCore

// Going away in either direction, and the close.
extension ConnectionStateMachineTests {
    @Test("going away while a reply is being sent: whichever comes last closes, and the reply is still written")
    func goAwayWhileAnswering() throws {
        // The reply comes after the going-away: the answer closes.
        var machine = Self.machine()
        let ticket = machine.requestReceived(id: 1).ticket
        #expect(machine.goAway(frame: Self.goAwayFrame()) == .scheduleFlush)
        #expect(machine.isGoingAway)
        let answered = Self.answer(1, ticket, on: &machine)
        #expect(answered.close)
        #expect(
            try #require(Self.flush(&machine)).bytes
                == Self.bytes(.goAway(.normal, message: "bye"), .reply(id: 1, payload: ByteBuffer(string: "a1")))
        )

        // The reply comes first: the going-away closes.
        var other = Self.machine()
        let otherTicket = other.requestReceived(id: 1).ticket
        #expect(!Self.answer(1, otherTicket, on: &other).close)
        #expect(other.goAway(frame: Self.goAwayFrame()) == .close)
        #expect(
            try #require(Self.flush(&other)).bytes
                == Self.bytes(.reply(id: 1, payload: ByteBuffer(string: "a1")), .goAway(.normal, message: "bye"))
        )
    }

    @Test("drain, then close: after going away the connection closes once both sides' requests are done")
    func drainThenClose() throws {
        var machine = Self.machine()
        let first = machine.requestReceived(id: 1).ticket
        let second = machine.requestReceived(id: 2).ticket
        _ = Self.register(5, "mine", on: &machine)
        #expect(machine.goAway(frame: Self.goAwayFrame()) == .none)  // the request's flush is still due
        #expect(!Self.answer(1, first, on: &machine).close)
        #expect(try #require(Self.resumed(machine.finishRequest(id: 5))).close == false)
        #expect(Self.answer(2, second, on: &machine).close)
        #expect(!machine.hasRequestsInFlight)
        // Still open until the channel closes: the flush writes the answers first.
        #expect(machine.isOpen)
        #expect(Self.flush(&machine) != nil)
    }

    @Test("going away with nothing in flight closes at once; going away again queues no second frame")
    func goAwayIdle() throws {
        var machine = Self.machine()
        #expect(machine.goAway(frame: Self.goAwayFrame("one")) == .close)
        #expect(machine.goAway(frame: Self.goAwayFrame("two")) == .none)
        #expect(try #require(Self.flush(&machine)).bytes == Self.goAwayFrame("one"))
    }

    @Test(
        "the peer goes away with requests pending: reason 0x00 lets them finish, another reason fails them with it",
        arguments: [true, false]
    )
    func peerGoesAway(isNormal: Bool) throws {
        var machine = Self.machine()
        _ = Self.register(1, "request 1", timer: 11, on: &machine)
        let error = SocketIPCError(isNormal ? .peerGoingAway : .unauthorized, "the peer is going away")
        #expect(machine.peerIsGoingAway(isNormal: isNormal, error: error) == .none)
        #expect(machine.peerGoingAwayError == error)
        // No new request either way.
        #expect(Self.failure(Self.register(2, "request 2", on: &machine)) as? SocketIPCError == error)
        if isNormal {
            #expect(machine.isGoingAway)
            let finished = try #require(Self.resumed(machine.finishRequest(id: 1)))
            #expect(finished.close)
            guard case .fail(_, _, let closeError) = machine.closed(error: nil) else {
                Issue.record("the close failed nothing")
                return
            }
            // An orderly close after an orderly going-away is just closed.
            #expect(closeError == .closed)
        } else {
            // The channel handler closes at once; the pending request fails with the peer's reason, not the I/O
            // error of the close.
            let reset = SocketIPCError(.connectionClosed, "reset")
            guard case .fail(let requests, _, let closeError) = machine.closed(error: reset) else {
                Issue.record("the close failed nothing")
                return
            }
            #expect(requests.map(\.continuation) == ["request 1"])
            #expect(requests.map(\.timer) == [11])
            #expect(closeError == error)
        }
    }

    @Test("after this side went away new requests fail with connectionClosed; going away after the peer queues nothing")
    func requestsRefusedWhileGoingAway() throws {
        var machine = Self.machine()
        _ = machine.requestReceived(id: 1)
        _ = machine.goAway(frame: Self.goAwayFrame())
        let refused = try #require(Self.failure(Self.register(1, "request", on: &machine)) as? SocketIPCError)
        #expect(refused.code == .connectionClosed)
        #expect(refused.message == "the connection is closing: this side has announced it is going away")

        var other = Self.machine()
        let ticket = other.requestReceived(id: 1).ticket
        let error = SocketIPCError(.peerGoingAway, "the peer is going away")
        #expect(other.peerIsGoingAway(isNormal: true, error: error) == .none)
        #expect(other.goAway(frame: Self.goAwayFrame()) == .none)
        #expect(other.queuedBytes == 0)
        #expect(Self.answer(1, ticket, on: &other).close)
    }

    @Test("the close fails every request and writer once, drops what is queued, and fails everything after it")
    func closeFailsEverything() throws {
        var machine = Self.machine(highWatermark: 8)
        _ = Self.register(1, "request 1", timer: 11, on: &machine)
        _ = Self.register(2, "request 2", on: &machine)
        #expect(machine.waitForWritability("writer", id: 1) == .wait)
        guard case .fail(let requests, let writers, let error) = machine.closed(error: nil) else {
            Issue.record("the close failed nothing")
            return
        }
        #expect(Set(requests.map(\.continuation)) == ["request 1", "request 2"])
        #expect(writers == ["writer"])
        #expect(error == .closed)
        #expect(machine.queuedBytes == 0)
        guard case .none = machine.closed(error: nil) else {
            Issue.record("the close failed something twice")
            return
        }
        #expect(machine.checkWritable() == .fail(.closed))
        #expect(machine.waitForWritability("late writer", id: 2) == .fail(.closed))
        #expect(Self.failure(Self.register(3, "late", on: &machine)) as? SocketIPCError == .closed)
        #expect(Self.resumed(machine.finishRequest(id: 1)) == nil)
        let nothing = Machine.AnswerAction(scheduleFlush: false, resumeReading: false, close: false)
        #expect(Self.answer(9, ReplyTicket.none, on: &machine) == nothing)
        #expect(machine.goAway(frame: Self.goAwayFrame()) == .none)
        let late = machine.requestReceived(id: 10)
        #expect(late.unanswered == 0)
        #expect(late.ticket == .none)
    }
}

import NIOCore
import Testing

@testable import SocketIPCCore

/// Strict credit (hello flag `0x08`): a call message only within its credit, a sender short of credit parks its
/// message and says so (call blocked, `0x0F`), and a receiver gives credit beyond its window only to a reader that
/// waits with nothing to read.
@Suite("CallStateMachine with strict credit")
struct CallStateMachineStrictCreditTests {
    typealias Machine = CallStateMachine<String, String>
    typealias Unexpected = CallStateMachineTests.Unexpected

    static func message(_ size: Int) -> ByteBuffer { ByteBuffer(repeating: 0x61, count: size) }
    static let maximumCost = Machine.frameCost(payloadLength: 16 * 1024 * 1024)

    // MARK: - Receiving

    @Test("a message above half the window that costs more than the credit left is a violation, even while the credit is above zero; none goes once the credit is spent")
    func messageBeyondCredit() throws {
        var machine = Machine(strictCredit: true)
        // 64 KiB of credit: one message of exactly that cost fits, and leaves none.
        guard case .none = machine.messageReceived(Self.message(Machine.initialWindow - 9)) else { throw Unexpected() }
        guard case .violation = machine.messageReceived(Self.message(0)) else { throw Unexpected() }

        var fresh = Machine(strictCredit: true)
        guard case .violation = fresh.messageReceived(Self.message(Machine.initialWindow)) else {
            throw Unexpected()
        }
        // Version 1's rule lets the same message go, alone.
        var version1 = Machine()
        guard case .none = version1.messageReceived(Self.message(Machine.initialWindow)) else { throw Unexpected() }
    }

    @Test("a blocked peer gets its credit only once the reader waits with nothing to read, and exactly what it lacks")
    func creditForAWaitingReader() throws {
        var machine = Machine(strictCredit: true)
        guard case .none = machine.messageReceived(Self.message(1000)) else { throw Unexpected() }
        let cost = Machine.frameCost(payloadLength: 1 << 20)
        // Nobody reads yet: nothing.
        #expect(machine.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)
        // The reader takes the message it has (no grant: less than a quarter of the window was read) ...
        guard case .message(_, credit: 0) = machine.next(orWait: "reader") else { throw Unexpected() }
        // ... then waits with nothing to read: now the peer gets what it lacks for its message.
        guard case .wait(let credit) = machine.next(orWait: "reader") else { throw Unexpected() }
        #expect(credit == cost - (Machine.initialWindow - Machine.frameCost(payloadLength: 1000)))
        // And the message fits, exactly.
        guard case .deliver("reader", let delivered) = machine.messageReceived(Self.message(1 << 20)) else {
            throw Unexpected()
        }
        #expect(delivered.readableBytes == 1 << 20)
        guard case .violation = machine.messageReceived(Self.message(0)) else { throw Unexpected() }
    }

    @Test("a reader already waiting gives the credit as the blocked frame arrives, once; nothing for a call that ended")
    func blockedWhileTheReaderWaits() throws {
        var machine = Machine(strictCredit: true)
        guard case .wait(credit: 0) = machine.next(orWait: "reader") else { throw Unexpected() }
        let cost = Machine.initialWindow * 3
        #expect(machine.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .grant(cost - Machine.initialWindow))
        // Asked again (a stale frame): the peer has that credit already.
        #expect(machine.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)

        var ended = Machine(strictCredit: true)
        guard case .none = ended.endReceived(.ok) else { throw Unexpected() }
        #expect(ended.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)
        var stopped = Machine(strictCredit: true)
        _ = stopped.stopReceiving()
        #expect(stopped.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)
    }

    @Test("a blocked cost above what a message of the maximum size costs is a violation; version 1 ignores the frame")
    func blockedBeyondTheMaximum() throws {
        var machine = Machine(strictCredit: true)
        #expect(machine.blockedReceived(cost: Self.maximumCost + 1, maximumCost: Self.maximumCost) == .violation)
        #expect(machine.blockedReceived(cost: Self.maximumCost, maximumCost: Self.maximumCost) == .none)
        var version1 = Machine()
        guard case .wait(credit: 0) = version1.next(orWait: "reader") else { throw Unexpected() }
        #expect(version1.blockedReceived(cost: 100_000, maximumCost: Self.maximumCost) == .none)
    }

    @Test("credit given back as messages are read settles a blocked peer that no longer lacks any")
    func readingSettlesTheBlockedPeer() throws {
        var machine = Machine(strictCredit: true)
        for _ in 0..<60 {
            guard case .none = machine.messageReceived(Self.message(1000)) else { throw Unexpected() }
        }
        #expect(machine.blockedReceived(cost: 20_000, maximumCost: Self.maximumCost) == .none)
        var granted = 0
        while case .message(_, let credit) = machine.poll() { granted += credit }
        #expect(granted > 0)
        // The credit given back covers the blocked message: waiting gives nothing more.
        guard case .wait(credit: 0) = machine.next(orWait: "reader") else { throw Unexpected() }
    }

    // MARK: - Sending

    @Test("a message beyond the credit is parked, the next send waits, and credit that covers it sends it first")
    func parking() throws {
        var machine = Machine(strictCredit: true)
        guard case .send = machine.reserveSend(payloadLength: 60_000, orWait: "w0") else { throw Unexpected() }
        let parkedCost = Machine.frameCost(payloadLength: 100_000)
        guard case .park(cost: parkedCost) = machine.reserveSend(payloadLength: 100_000, orWait: "w1") else {
            throw Unexpected()
        }
        #expect(machine.hasParkedMessage)
        let coveredAtOnce = machine.parkedAnnounced()
        #expect(!coveredAtOnce, "the credit does not cover it yet")
        // Behind the parked message, even a small one waits.
        guard case .wait = machine.reserveSend(payloadLength: 10, orWait: "w2") else { throw Unexpected() }
        // Not enough yet.
        guard case .none = machine.creditReceived(50_000) else { throw Unexpected() }
        let left = machine.availableSendCredit
        // Enough: the parked message goes (its cost taken), and only then the waiting writer goes on, its cost taken.
        guard case .sendParked = machine.creditReceived(UInt32(parkedCost - left + 100)) else { throw Unexpected() }
        #expect(machine.availableSendCredit == 100)
        #expect(machine.hasParkedMessage, "on its way: the end and the next send still wait for it")
        let after = machine.parkedSent()
        guard case .resume("w2")? = after.writer else { throw Unexpected() }
        #expect(!after.sendEnd)
        #expect(!machine.hasParkedMessage)
        #expect(machine.availableSendCredit == 100 - 19)
    }

    @Test("the end waits for the parked message; a failure drops both")
    func endAfterParked() throws {
        var machine = Machine(strictCredit: true)
        guard case .park = machine.reserveSend(payloadLength: 70_000, orWait: "w") else { throw Unexpected() }
        let coveredAtOnce = machine.parkedAnnounced()
        #expect(!coveredAtOnce)
        #expect(machine.endOutbound() == .afterParked)
        guard case .sendParked = machine.creditReceived(10_000) else { throw Unexpected() }
        #expect(machine.parkedSent().sendEnd)

        var failing = Machine(strictCredit: true)
        guard case .park = failing.reserveSend(payloadLength: 70_000, orWait: "w") else { throw Unexpected() }
        #expect(failing.endOutbound() == .afterParked)
        _ = failing.fail(CancellationError())
        #expect(!failing.hasParkedMessage)
        guard case .none = failing.creditReceived(10_000) else { throw Unexpected() }
    }

    @Test("a message of up to half the window goes while the credit is above zero, as with version 1's rule, on both sides; a larger one waits, then tries again and parks")
    func smallMessagesOvershoot() throws {
        var machine = Machine(strictCredit: true)
        guard case .send = machine.reserveSend(payloadLength: Machine.initialWindow - 9 - 5, orWait: "w") else {
            throw Unexpected()
        }
        #expect(machine.availableSendCredit == 5)
        // Costs 19, more than the 5 bytes left: it goes, as version 1's would, and takes the credit below zero.
        guard case .send = machine.reserveSend(payloadLength: 10, orWait: "w") else { throw Unexpected() }
        #expect(machine.availableSendCredit == -14)
        guard case .wait = machine.reserveSend(payloadLength: 10, orWait: "w") else { throw Unexpected() }
        guard case .none = machine.creditReceived(14) else { throw Unexpected() }
        guard case .resume("w") = machine.creditReceived(1) else { throw Unexpected() }

        // A message above half the window, with no credit: waits; once there is some, it tries again and parks.
        let large = Machine.initialWindow / 2
        guard case .wait = machine.reserveSend(payloadLength: large, orWait: "w") else { throw Unexpected() }
        guard case .retry("w") = machine.creditReceived(50) else { throw Unexpected() }
        guard case .park(cost: large + 9) = machine.reserveSend(payloadLength: large, orWait: "w") else {
            throw Unexpected()
        }

        // The receiver: a small message may take the credit below zero, a large one may not.
        var receiver = Machine(strictCredit: true)
        guard case .none = receiver.messageReceived(Self.message(Machine.initialWindow - 9 - 5)) else {
            throw Unexpected()
        }
        guard case .none = receiver.messageReceived(Self.message(10)) else { throw Unexpected() }
        guard case .violation = receiver.messageReceived(Self.message(1)) else { throw Unexpected() }
        var fresh = Machine(strictCredit: true)
        guard case .none = fresh.messageReceived(Self.message(40_000)) else { throw Unexpected() }
        guard case .violation = fresh.messageReceived(Self.message(40_000)) else { throw Unexpected() }
    }

    @Test("credit that comes before the call-blocked frame is queued does not send the parked message; the announcement does")
    func creditBeforeTheAnnouncement() throws {
        var machine = Machine(strictCredit: true)
        guard case .park(let cost) = machine.reserveSend(payloadLength: 70_000, orWait: "w") else { throw Unexpected() }
        guard case .none = machine.creditReceived(10_000) else { throw Unexpected() }
        let covered = machine.parkedAnnounced()
        #expect(covered, "covered: its cost is taken, and the caller sends it now")
        #expect(machine.availableSendCredit == Machine.initialWindow + 10_000 - cost)
        let again = machine.parkedAnnounced()
        #expect(!again, "once")
        let after = machine.parkedSent()
        #expect(after.writer == nil)
    }

    @Test("after credit given for a blocked message, the next message must be that one: another cost is a violation")
    func grantedCreditServesTheAnnouncedMessage() throws {
        var machine = Machine(strictCredit: true)
        guard case .wait = machine.next(orWait: "reader") else { throw Unexpected() }
        let cost = Machine.frameCost(payloadLength: 1 << 20)
        #expect(machine.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .grant(cost - Machine.initialWindow))
        // 1 MiB of credit spent on small messages instead would be held beyond the window.
        guard case .violation = machine.messageReceived(Self.message(10)) else { throw Unexpected() }

        var honest = Machine(strictCredit: true)
        guard case .wait = honest.next(orWait: "reader") else { throw Unexpected() }
        _ = honest.blockedReceived(cost: cost, maximumCost: Self.maximumCost)
        guard case .deliver = honest.messageReceived(Self.message(1 << 20)) else { throw Unexpected() }
        // Consumed, it gives back the window, not the credit given beyond it: the window stays 64 KiB.
        #expect(honest.delivered(Self.message(1 << 20)) == Machine.initialWindow)
        #expect(honest.peerCredit == Machine.initialWindow)
        guard case .none = honest.messageReceived(Self.message(10)) else { throw Unexpected() }
        guard case .violation = honest.messageReceived(Self.message(Machine.initialWindow)) else { throw Unexpected() }
    }

    @Test("a caller whose producer is held up by credit gives a blocked handler its credit, reading or not; a handler's side gives it only to a reader")
    func callerGrantsWhileWriting() throws {
        let cost = Machine.frameCost(payloadLength: 1 << 20)
        var caller = Machine(strictCredit: true, grantsWhileWriting: true)
        // The handler says it is blocked on a large message (its last, its end behind it); the caller does not read.
        #expect(caller.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)
        // The caller's own large message is parked: now it gives the credit.
        guard case .park = caller.reserveSend(payloadLength: 1 << 20, orWait: "w") else { throw Unexpected() }
        #expect(caller.creditForBlockedPeerWhileWriting() == cost - Machine.initialWindow)
        // Blocked again while the caller waits behind its parked message: at once.
        guard case .none = caller.messageReceived(Self.message(1 << 20)) else { throw Unexpected() }
        guard case .wait = caller.reserveSend(payloadLength: 10, orWait: "w2") else { throw Unexpected() }

        var handler = Machine(strictCredit: true)
        guard case .park = handler.reserveSend(payloadLength: 1 << 20, orWait: "w") else { throw Unexpected() }
        #expect(handler.blockedReceived(cost: cost, maximumCost: Self.maximumCost) == .none)
        #expect(handler.creditForBlockedPeerWhileWriting() == 0)
    }

    @Test("trySend parks as reserveSend does, and waits without keeping anything")
    func trySend() throws {
        var machine = Machine(strictCredit: true)
        guard case .park = try machine.trySend(payloadLength: 100_000) else { throw Unexpected() }
        guard case .wait = try machine.trySend(payloadLength: 1) else { throw Unexpected() }
        #expect(!machine.hasWaiters)
    }
}

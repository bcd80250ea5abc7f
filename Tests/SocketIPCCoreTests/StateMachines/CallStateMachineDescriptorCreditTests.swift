import NIOCore
import Testing

@testable import SocketIPCCore

/// Descriptor credit (hello flag `0x10`): each descriptor a call message carries costs
/// ``CallStateMachine/descriptorCost`` bytes of credit, so that a receiver's window bounds the descriptors it holds
/// per call as it bounds the bytes, and a sender within credit never passes more than its receiver keeps.
@Suite("CallStateMachine with descriptor credit")
struct CallStateMachineDescriptorCreditTests {
    typealias Machine = CallStateMachine<String, String>
    typealias Unexpected = CallStateMachineTests.Unexpected

    static func message(_ size: Int) -> ByteBuffer { ByteBuffer(repeating: 0x61, count: size) }

    /// Sends messages of `size` bytes with one descriptor each until the machine says to wait; returns how many went.
    static func sendUntilWaiting(_ machine: inout Machine, size: Int, limit: Int = 10_000) throws -> Int {
        for sent in 0..<limit {
            switch try machine.trySend(payloadLength: size, descriptors: 1) {
            case .send: continue
            case .wait: return sent
            case .park, .fail: throw Unexpected()
            }
        }
        return limit
    }

    @Test("a message's descriptors add to its cost only when both hellos set the flag")
    func cost() {
        let charged = Machine(strictCredit: true, chargesDescriptors: true)
        #expect(charged.cost(payloadLength: 40, descriptors: 3) == 9 + 40 + 3 * 1024)
        let version1 = Machine(strictCredit: true)
        #expect(version1.cost(payloadLength: 40, descriptors: 3) == 9 + 40)
    }

    @Test(
        "a sender of small messages with a descriptor each stops within a window of descriptors (64 KiB / 1,024); without the flag the bytes alone stop it",
        arguments: [true, false]
    )
    func senderStopsWithinTheWindow(strict: Bool) throws {
        var charged = Machine(strictCredit: strict, chargesDescriptors: true)
        let sent = try Self.sendUntilWaiting(&charged, size: 40)
        // Each costs 1,073 bytes: 61 leave 83 bytes of credit, above zero, so one more goes.
        #expect(sent == 62)
        #expect(sent <= Machine.descriptorsHeldWithinCredit(maximumPerMessage: 1))

        var uncharged = Machine(strictCredit: strict)
        #expect(try Self.sendUntilWaiting(&uncharged, size: 40) == 1338)  // 65,536 / 49, rounded up
    }

    @Test("a receiver refuses a message whose descriptors take it beyond the credit, and counts a peer without the flag by its bytes")
    func receiverCountsDescriptors() throws {
        var charged = Machine(strictCredit: true, chargesDescriptors: true)
        for _ in 0..<62 {
            guard case .none = charged.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }
        }
        guard case .violation = charged.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }

        var uncharged = Machine(strictCredit: true)
        for _ in 0..<200 {
            guard case .none = uncharged.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }
        }
    }

    @Test("the reader gives the descriptors' credit back as it takes them, a quarter of the window at a time")
    func creditComesBackForDescriptors() throws {
        var receiver = Machine(strictCredit: true, chargesDescriptors: true)
        var sender = Machine(strictCredit: true, chargesDescriptors: true)
        #expect(try Self.sendUntilWaiting(&sender, size: 40) == 62)
        for _ in 0..<62 {
            guard case .none = receiver.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }
        }
        var granted: [Int] = []
        for _ in 0..<62 {
            guard case .message(let message, let credit) = receiver.next(orWait: "reader") else { throw Unexpected() }
            // The message's bytes alone never reach a quarter of the window; with its descriptor they do.
            #expect(credit == 0)
            #expect(message.readableBytes == 40)
            let forDescriptors = receiver.descriptorsConsumed(1)
            if forDescriptors > 0 { granted.append(forDescriptors) }
        }
        // A grant once 16 KiB were consumed: every 16th message (16 × 1,073 = 17,168 bytes), three times in 62.
        #expect(granted == [17_168, 17_168, 17_168])
        // The sender goes on with what came back, and the receiver takes what it sends.
        for credit in granted { _ = sender.creditReceived(UInt32(credit)) }
        #expect(try Self.sendUntilWaiting(&sender, size: 40) == 48)
        for _ in 0..<48 {
            guard case .none = receiver.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }
        }
        guard case .violation = receiver.messageReceived(Self.message(40), descriptors: 1) else { throw Unexpected() }
    }

    @Test("a message whose descriptors take it above half the window and the credit is parked, and the credit it lacks given to a waiting reader")
    func manyDescriptorsPark() throws {
        var sender = Machine(strictCredit: true, chargesDescriptors: true)
        guard case .send = try sender.trySend(payloadLength: 10, descriptors: 1) else { throw Unexpected() }
        // 70 descriptors cost 71,699 bytes with 10 of payload: above half the window, and above the credit left.
        guard case .park(let cost) = try sender.trySend(payloadLength: 10, descriptors: 70) else { throw Unexpected() }
        #expect(cost == 9 + 10 + 70 * 1024)

        var receiver = Machine(strictCredit: true, chargesDescriptors: true)
        guard case .none = receiver.messageReceived(Self.message(10), descriptors: 1) else { throw Unexpected() }
        let maximumCost = Machine.frameCost(payloadLength: 1 << 20) + 253 * Machine.descriptorCost
        #expect(receiver.blockedReceived(cost: cost, maximumCost: maximumCost) == .none)
        guard case .message = receiver.next(orWait: "reader") else { throw Unexpected() }
        #expect(receiver.descriptorsConsumed(1) == 0)
        // The reader waits with nothing to read: the peer gets exactly what it lacks for its message.
        guard case .wait(let credit) = receiver.next(orWait: "reader") else { throw Unexpected() }
        #expect(credit == cost - (Machine.initialWindow - (9 + 10 + 1024)))
        guard case .deliver("reader", _) = receiver.messageReceived(Self.message(10), descriptors: 70) else {
            throw Unexpected()
        }
    }
}

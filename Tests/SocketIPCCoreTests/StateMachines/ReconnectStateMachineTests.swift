import Testing

@testable import SocketIPCCore

/// The reconnecting client's life, with plain values for its connection and waiters.
@Suite("ReconnectStateMachine and ConnectionBackoff")
struct ReconnectStateMachineTests {
    final class FakeConnection {}
    typealias Machine = ReconnectStateMachine<FakeConnection, String>

    static let refused = SocketIPCError(.connectionRefused, "no server")

    @Test("failures back off; a success resets the count; a lost connection reconnects at once; waiters get the connection")
    func lifecycle() throws {
        var machine = Machine(backoff: ConnectionBackoff(initialDelay: .milliseconds(100), jitter: 0))
        guard case .connect(attempt: 1) = machine.start() else { throw Failure("starts by connecting") }
        #expect(machine.waitForConnection(id: 1, waiter: "call", excluding: nil).isWait)
        let (first, _) = machine.connectFailed(Self.refused, random: 0.5)
        guard case .retry(let delay1, retry: 1, _) = first else { throw Failure("retries") }
        #expect(delay1 == .milliseconds(100))
        guard case .connect(attempt: 2) = machine.retryDue() else { throw Failure("connects again") }
        let (second, _) = machine.connectFailed(Self.refused, random: 0.5)
        guard case .retry(let delay2, retry: 2, _) = second else { throw Failure("retries again") }
        #expect(delay2 == .milliseconds(160))
        _ = machine.retryDue()
        let connection = FakeConnection()
        #expect(machine.connected(connection) == ["call"])
        guard case .ready(let ready) = machine.waitForConnection(id: 2, waiter: "next", excluding: nil), ready === connection
        else { throw Failure("ready") }
        // A caller that saw this connection lost waits for the next one.
        #expect(machine.waitForConnection(id: 3, waiter: "retry", excluding: connection).isWait)
        guard case .connect(attempt: 1) = machine.connectionLost(connection) else { throw Failure("reconnects at once") }
        let (third, _) = machine.connectFailed(Self.refused, random: 0.5)
        guard case .retry(let delay3, retry: 1, _) = third else { throw Failure("the count started again") }
        #expect(delay3 == .milliseconds(100))
        _ = machine.retryDue()
        #expect(machine.connected(FakeConnection()) == ["retry"])
        let (toClose, failed) = machine.shutdown()
        #expect(toClose != nil)
        #expect(failed.isEmpty)
        guard case .fail = machine.waitForConnection(id: 4, waiter: "late", excluding: nil) else {
            throw Failure("a shut-down client fails calls")
        }
    }

    @Test("a refusal fails for good, and fails the waiters with it")
    func refusal() throws {
        var machine = Machine(backoff: ConnectionBackoff())
        _ = machine.start()
        _ = machine.waitForConnection(id: 1, waiter: "call", excluding: nil)
        let (action, failed) = machine.connectFailed(SocketIPCError(.unauthorized, "no"), random: 0)
        guard case .fail(let error) = action else { throw Failure("fails") }
        #expect(error.code == .unauthorized)
        #expect(failed == ["call"])
        #expect(machine.removeWaiter(id: 1) == nil)
    }

    @Test("backoff grows by its multiplier up to its maximum, spread by its jitter")
    func backoff() {
        let backoff = ConnectionBackoff(initialDelay: .seconds(1), maximumDelay: .seconds(10), multiplier: 2, jitter: 0.2)
        #expect(backoff.delay(beforeRetry: 1, random: 0.5) == .seconds(1))
        #expect(backoff.delay(beforeRetry: 3, random: 0.5) == .seconds(4))
        #expect(backoff.delay(beforeRetry: 30, random: 0.5) == .seconds(10))
        #expect(backoff.delay(beforeRetry: 1, random: 0) == .milliseconds(800))
        #expect(backoff.delay(beforeRetry: 1, random: 1) == .milliseconds(1200))
    }

    struct Failure: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }
}

extension ReconnectStateMachine.WaitAction {
    var isWait: Bool {
        if case .wait = self { return true }
        return false
    }
}

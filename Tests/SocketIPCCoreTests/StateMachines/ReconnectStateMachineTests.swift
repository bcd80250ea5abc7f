import Testing

@testable import SocketIPCCore

/// The reconnecting client's life, with plain values for its connection and waiters.
@Suite("ReconnectStateMachine and ConnectionBackoff")
struct ReconnectStateMachineTests {
    final class FakeConnection {}
    typealias Machine = ReconnectStateMachine<FakeConnection, String>

    static let refused = SocketIPCError(.connectionRefused, "no server")

    @Test("failures back off; a connection lost after it proved stable reconnects at once and resets the count; waiters get the connection")
    func lifecycle() throws {
        let start = ContinuousClock.now
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
        #expect(machine.connected(connection, at: start) == ["call"])
        guard case .ready(let ready) = machine.waitForConnection(id: 2, waiter: "next", excluding: nil), ready === connection
        else { throw Failure("ready") }
        // A caller that saw this connection lost waits for the next one.
        #expect(machine.waitForConnection(id: 3, waiter: "retry", excluding: connection).isWait)
        // Up for a second: stable.
        guard case .connect(attempt: 1) = machine.connectionLost(connection, at: start + .seconds(1), error: nil, random: 0.5)
        else { throw Failure("reconnects at once") }
        let (third, _) = machine.connectFailed(Self.refused, random: 0.5)
        guard case .retry(let delay3, retry: 1, _) = third else { throw Failure("the count started again") }
        #expect(delay3 == .milliseconds(100))
        _ = machine.retryDue()
        #expect(machine.connected(FakeConnection(), at: start + .seconds(6)) == ["retry"])
        let (toClose, failed) = machine.shutdown()
        #expect(toClose != nil)
        #expect(failed.isEmpty)
        guard case .fail = machine.waitForConnection(id: 4, waiter: "late", excluding: nil) else {
            throw Failure("a shut-down client fails calls")
        }
    }

    @Test("the last attempt's error is kept while the next attempt connects, for a call that finds no connection in time to name, and dropped once one succeeds")
    func lastConnectError() throws {
        var machine = Machine(backoff: ConnectionBackoff(initialDelay: .milliseconds(100), jitter: 0))
        _ = machine.start()
        #expect(machine.lastConnectError == nil)
        _ = machine.connectFailed(Self.refused, random: 0.5)
        guard case .connect(attempt: 2) = machine.retryDue() else { throw Failure("connects again") }
        #expect(machine.lastConnectError?.message == "no server")
        _ = machine.connected(FakeConnection(), at: .now)
        #expect(machine.lastConnectError == nil)
    }

    @Test("readyConnection gives the ready connection unless excluded, and keeps no waiter either way")
    func readyConnectionKeepsNothing() throws {
        var machine = Machine(backoff: ConnectionBackoff(initialDelay: .milliseconds(100), jitter: 0))
        _ = machine.start()
        #expect(machine.readyConnection(excluding: nil) == nil, "none while connecting")
        let connection = FakeConnection()
        _ = machine.connected(connection, at: .now)
        #expect(machine.readyConnection(excluding: nil) === connection)
        #expect(machine.readyConnection(excluding: connection) == nil)
        // Nothing was kept for those asks: a shutdown fails no waiter.
        #expect(machine.shutdown().failedWaiters.isEmpty)
        #expect(machine.readyConnection(excluding: nil) == nil, "none once shut down")
    }

    @Test("a connection lost before it proved stable counts as a failure: a server that closes right after the handshake is retried with growing waits, not in a loop")
    func flappingServerBacksOff() throws {
        var time = ContinuousClock.now
        var machine = Machine(backoff: ConnectionBackoff(initialDelay: .milliseconds(100), maximumDelay: .seconds(5), jitter: 0))
        guard case .connect(attempt: 1) = machine.start() else { throw Failure("starts by connecting") }
        var delays: [Duration] = []
        for _ in 0..<4 {
            let connection = FakeConnection()
            _ = machine.connected(connection, at: time)
            time += .milliseconds(900)
            let closed = SocketIPCError(.peerGoingAway, "the server is shutting down")
            guard case .retry(let delay, _, let error) = machine.connectionLost(connection, at: time, error: closed, random: 0.5)
            else { throw Failure("a quick loss is retried after a wait") }
            #expect(error.code == .peerGoingAway)
            delays.append(delay)
            time += delay
            guard case .connect = machine.retryDue() else { throw Failure("connects after the wait") }
        }
        #expect(delays == [.milliseconds(100), .milliseconds(160), .milliseconds(256), .nanoseconds(409_600_000)])
        // A connection that stays up for a second resets the count: its loss reconnects at once, and the next quick
        // loss waits the initial delay again.
        let stable = FakeConnection()
        _ = machine.connected(stable, at: time)
        time += .seconds(1)
        guard case .connect(attempt: 1) = machine.connectionLost(stable, at: time, error: nil, random: 0.5) else {
            throw Failure("a stable connection's loss reconnects at once")
        }
        let quick = FakeConnection()
        _ = machine.connected(quick, at: time)
        guard case .retry(let delay, retry: 1, _) = machine.connectionLost(quick, at: time + .milliseconds(1), error: nil, random: 0.5)
        else { throw Failure("the count started again") }
        #expect(delay == .milliseconds(100))
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

    @Test("a refusal marked retryable (the socket file's mode, not the server's policy) is retried with the backoff, and the waiters keep waiting")
    func retryableRefusal() throws {
        var machine = Machine(backoff: ConnectionBackoff(initialDelay: .milliseconds(100), jitter: 0))
        _ = machine.start()
        _ = machine.waitForConnection(id: 1, waiter: "call", excluding: nil)
        let denied = SocketIPCError(.unauthorized, "no permission to connect")
        let (action, failed) = machine.connectFailed(denied, retryable: true, random: 0.5)
        guard case .retry(let delay, retry: 1, let error) = action else { throw Failure("retries") }
        #expect(delay == .milliseconds(100))
        #expect(error.code == .unauthorized)
        #expect(failed.isEmpty)
        guard case .connect(attempt: 2) = machine.retryDue() else { throw Failure("connects again") }
        #expect(machine.connected(FakeConnection(), at: .now) == ["call"])
    }

    @Test("a duration for a person to read is rounded to the millisecond (found by a review: 'within 2.999998718 seconds')")
    func roundedText() {
        #expect(Duration.nanoseconds(2_999_998_718).roundedText == "3 seconds")
        #expect(Duration.milliseconds(2_500).roundedText == "2.5 seconds")
        #expect(Duration.milliseconds(250).roundedText == "0.25 seconds")
        #expect(Duration.seconds(1).roundedText == "1 second")
        #expect(Duration.milliseconds(1_001).roundedText == "1.001 seconds")
        #expect(Duration.zero.roundedText == "0 seconds")
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

    @Test("backoff settings out of range give a delay between zero and 100 years, never a trap (found by a review: the first retry crashed the client)")
    func backoffOutOfRange() {
        let longest = Duration.longestWait
        let cases: [(ConnectionBackoff, Int, Double)] = [
            (ConnectionBackoff(initialDelay: .seconds(Int64.max)), 1, 0.5),
            (ConnectionBackoff(initialDelay: .seconds(400 * 365 * 86_400), maximumDelay: .seconds(Int64.max)), 1, 0.5),
            (ConnectionBackoff(maximumDelay: .seconds(Int64.max)), 200, 0.5),
            (ConnectionBackoff(jitter: .nan), 2, 0.5),
            (ConnectionBackoff(multiplier: .nan), 3, 0.5),
            (ConnectionBackoff(multiplier: .infinity, jitter: .infinity), 3, 0.5),
            (ConnectionBackoff(initialDelay: .seconds(-5), maximumDelay: .seconds(-1)), 2, 0.5),
            (ConnectionBackoff(), 2, .nan),
            (ConnectionBackoff(initialDelay: .zero, multiplier: .infinity), 3, 0.5),
        ]
        for (backoff, retry, random) in cases {
            let delay = backoff.delay(beforeRetry: retry, random: random)
            #expect(delay >= .zero && delay <= longest, "\(backoff) retry \(retry): \(delay)")
        }
        #expect(ConnectionBackoff(jitter: .nan).delay(beforeRetry: 1, random: 0.9) == .milliseconds(50), "no jitter")
        #expect(ConnectionBackoff(initialDelay: .zero, multiplier: .infinity).delay(beforeRetry: 3, random: 0.5) == .zero)
        #expect(Duration.seconds(Int64.max).asWait == longest)
        #expect(Duration.seconds(-1).asWait == .zero)
        #expect(Duration.seconds(3).asWait == .seconds(3))
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

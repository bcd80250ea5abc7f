/// A reconnecting client's connection, as a value without I/O: whether it is connecting, ready, waiting to retry
/// after a failure, failed for good or shut down; and the calls waiting for a connection.
///
/// ```
///           start()                     connected(_:at:)
///   idle -----------> connecting -------------------------> ready
///                       ^    |  connectFailed (retryable)      |  connectionLost: at once after a
///                       |    v                                 |  stable connection, else as a failure
///            retryDue() |  waiting(retry, error) <-------------+--> connecting
///                       +----/   connectFailed (not retryable) -> failed(error)
///   shutdown() from any state -> shutDown
/// ```
///
/// A failed attempt is retried, since a later one may succeed (no server yet, the server shutting down or gone, a
/// timeout), except when it never will: a refusal by the server's policy, a peer that does not speak the protocol
/// or this version of it, an invalid path. Consecutive failures back off (``ConnectionBackoff``). A connection that was
/// ready and is lost is retried at once, as gRPC's client does, if it had stayed up for at least
/// ``stableConnection`` (1 s, or the backoff's ``ConnectionBackoff/maximumDelay`` if shorter); one lost sooner counts
/// as a failure and is retried after the backoff, the count going on from the failures before it. So a server that
/// completes the handshake and closes at once (a crash loop, or a hostile one) is not reconnected to in a tight
/// loop: only a connection that proved stable resets the count.
///
/// - `Connection`: the runtime's connection (compared by identity).
/// - `Waiter`: what waits for a connection (the runtime's continuation).
package struct ReconnectStateMachine<Connection: AnyObject, Waiter> {
    /// Where the client is.
    package enum State {
        case idle
        case connecting(attempt: Int)
        case ready(Connection)
        case waiting(retry: Int, error: SocketIPCError)
        case failed(SocketIPCError)
        case shutDown
    }

    /// What the driver (the client's `run()`) does next.
    package enum Action {
        /// Connect; `attempt` counts from 1 since the last success.
        case connect(attempt: Int)
        /// Wait `delay`, then report ``retryDue()``.
        case retry(after: Duration, retry: Int, error: SocketIPCError)
        /// Stop: the client shut down (close `connection` if there is one).
        case stop
        /// Stop with `error`: the client cannot connect, ever.
        case fail(SocketIPCError)
        /// Do nothing: another driver runs, or ran and ended (failed); the client's state is that driver's.
        case alreadyRunning
    }

    /// How long a connection must have been up for its loss to reset the count of failures: 1 s.
    package static var stableConnection: Duration { .seconds(1) }

    package private(set) var state: State = .idle
    /// Why the last attempt to connect failed, until one succeeds: what a call that found no connection in time
    /// names, also while the next attempt is under way.
    package private(set) var lastConnectError: SocketIPCError?
    private var waiters: [Int: (waiter: Waiter, excluding: Connection?)] = [:]
    private var failures = 0
    /// When the ready connection became ready.
    private var readySince: ContinuousClock.Instant?
    private let backoff: ConnectionBackoff

    package init(backoff: ConnectionBackoff) {
        self.backoff = backoff
    }

    /// The driver starts: ``Action/connect(attempt:)`` the first time, ``Action/stop`` after a shutdown, and
    /// ``Action/alreadyRunning`` while another driver runs or after it failed.
    package mutating func start() -> Action {
        switch self.state {
        case .idle:
            self.state = .connecting(attempt: 1)
            return .connect(attempt: 1)
        case .shutDown:
            return .stop
        case .connecting, .ready, .waiting, .failed:
            return .alreadyRunning
        }
    }

    /// A connection is ready at `now`: the waiters to resume with it. The count of failures goes on until the
    /// connection has proved stable (``connectionLost(_:at:error:random:)``).
    package mutating func connected(_ connection: Connection, at now: ContinuousClock.Instant) -> [Waiter] {
        guard case .connecting = self.state else { return [] }
        self.state = .ready(connection)
        self.lastConnectError = nil
        self.readySince = now
        let ready = self.waiters.filter { $0.value.excluding !== connection }
        for id in ready.keys { self.waiters[id] = nil }
        return ready.values.map(\.waiter)
    }

    /// An attempt failed with `error`; `random` in `0..<1` places the retry in the jitter's range.
    /// - Parameter retryable: Whether to retry after `error` whatever its code (the socket file's refusal of this
    ///   process, which says `unauthorized` as the server's policy does, but which a server that starts again may
    ///   lift by making its socket anew).
    package mutating func connectFailed(
        _ error: SocketIPCError,
        retryable: Bool = false,
        random: Double
    ) -> (Action, failedWaiters: [Waiter]) {
        guard case .connecting = self.state else { return (.stop, []) }
        self.lastConnectError = error
        guard retryable || !Self.failsForGood(error) else {
            self.state = .failed(error)
            let waiters = self.waiters.values.map(\.waiter)
            self.waiters = [:]
            return (.fail(error), waiters)
        }
        self.failures += 1
        self.state = .waiting(retry: self.failures, error: error)
        let delay = self.backoff.delay(beforeRetry: self.failures, random: random)
        return (.retry(after: delay, retry: self.failures, error: error), [])
    }

    /// Whether no later attempt can succeed after `error`.
    package static func failsForGood(_ error: SocketIPCError) -> Bool {
        switch error.code {
        case .unauthorized, .notSocketIPCPeer, .unsupportedVersion, .wrongStyle, .invalidPath, .protocolViolation:
            true
        default:
            false
        }
    }

    /// The wait before a retry is over.
    package mutating func retryDue() -> Action {
        guard case .waiting(let retry, _) = self.state else { return .stop }
        self.state = .connecting(attempt: retry + 1)
        return .connect(attempt: retry + 1)
    }

    /// The ready connection closed at `now`, with `error` (its close reason, if it has one): connect again at once
    /// if it had stayed up for at least ``stableConnection`` (or the backoff's maximum delay, if shorter); otherwise
    /// count it as a failure and retry after the backoff, `random` in `0..<1` placing the retry in the jitter's range.
    package mutating func connectionLost(
        _ connection: Connection,
        at now: ContinuousClock.Instant,
        error: SocketIPCError?,
        random: Double
    ) -> Action {
        guard case .ready(let current) = self.state, current === connection else { return .stop }
        let lasted = self.readySince.map { $0.duration(to: now) } ?? .zero
        self.readySince = nil
        if lasted >= min(Self.stableConnection, self.backoff.maximumDelay) {
            self.failures = 0
            self.state = .connecting(attempt: 1)
            return .connect(attempt: 1)
        }
        self.failures += 1
        let failure =
            error
            ?? SocketIPCError(.connectionClosed, "the connection closed \(lasted) after it was ready")
        self.state = .waiting(retry: self.failures, error: failure)
        let delay = self.backoff.delay(beforeRetry: self.failures, random: random)
        return .retry(after: delay, retry: self.failures, error: failure)
    }

    /// The client shuts down: the waiters to fail, and the connection to close if one is ready.
    package mutating func shutdown() -> (connection: Connection?, failedWaiters: [Waiter]) {
        var connection: Connection?
        if case .ready(let current) = self.state { connection = current }
        self.state = .shutDown
        let waiters = self.waiters.values.map(\.waiter)
        self.waiters = [:]
        return (connection, waiters)
    }

    /// What a call that needs a connection gets.
    package enum WaitAction {
        /// This connection, ready now.
        case ready(Connection)
        /// None yet: the waiter is kept under `id` until one is (or it is removed).
        case wait
        /// The client failed for good, or shut down.
        case fail(SocketIPCError)
    }

    /// The ready connection, unless it is `excluding`; nothing is kept either way.
    package func readyConnection(excluding: Connection?) -> Connection? {
        guard case .ready(let connection) = self.state, connection !== excluding else { return nil }
        return connection
    }

    /// A call needs a connection other than `excluding` (one it saw closed).
    package mutating func waitForConnection(id: Int, waiter: Waiter, excluding: Connection?) -> WaitAction {
        switch self.state {
        case .ready(let connection) where connection !== excluding:
            return .ready(connection)
        case .failed(let error):
            return .fail(error)
        case .shutDown:
            return .fail(SocketIPCError(.invalidState, "the client is shut down"))
        default:
            self.waiters[id] = (waiter, excluding)
            return .wait
        }
    }

    /// Removes waiter `id` (its call was cancelled or timed out), if it still waits.
    package mutating func removeWaiter(id: Int) -> Waiter? {
        self.waiters.removeValue(forKey: id)?.waiter
    }
}

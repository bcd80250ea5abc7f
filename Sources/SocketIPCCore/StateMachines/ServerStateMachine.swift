import NIOCore

/// What a server knows about itself, as a value: whether it runs, accepts and drains, the connections it holds and
/// their admissions, and the timer of a graceful shutdown's grace period. The server feeds it events under its lock
/// and performs the actions it returns once the lock is released. Nothing here does I/O, reads a clock or schedules
/// anything, so it is tested with plain values.
///
/// ```
/// idle ─runCalled─▶ starting ─listening─▶ running ─shutdownRequested─▶ shuttingDown ─last connection closed─▶ finished
///  │                   │ └─listenFailed──────────────────────────────────────────────────────────────────▶ finished
///  │                   └─shutdownRequested: remembered; listening then shuts down at once, with nothing to drain
///  └─shutdownRequested─────────────────────────────────────────────────────────────────────────────────▶ finished
/// ```
///
/// A shutdown with no connection left and no shutdown hooks to run goes straight to `finished`. A running server's
/// shutdown hooks (``shutdownRequested(graceful:runningShutdownHooks:)``) are part of the drain: `shuttingDown`
/// lasts until they have ended (``shutdownHooksFinished()``) too, and a graceful shutdown tells its connections that
/// it is going away only then, so that what the hooks send reaches the peers first. The grace period's timer is armed by the server
/// after the lock is released, so it may be reported (``gracePeriodTimerArmed(_:)``) after the drain completed: the
/// machine then answers with an action to cancel it; the drain cancels a timer it holds. So no timer outlives the
/// drain.
///
/// Generic over what the runtime holds, so that tests use plain values:
/// - `Listener`: what accepts connections, stopped when the shutdown begins.
/// - `Channel`: the channel of a connection being served, closed by a forced shutdown.
/// - `Connection`: a framed connection, told that the server is going away by a graceful shutdown.
/// - `Timer`: the scheduled end of the grace period, cancelled when the drain completes first.
///
/// The events are `@inlinable`, so that the runtime module specializes them for its own types: unspecialized, every
/// event on the accepting thread paid for generic metadata lookups and value-witness copies, about a tenth of the
/// server's CPU time in the EOF-style `seed` benchmark (a connection per message). That is also why the machine is
/// `public` under the `SocketIPCRuntime` SPI rather than `package`: the bodies of `@inlinable package` declarations
/// are not specialized in another module. Users of `SocketIPC` do not see it.
@_spi(SocketIPCRuntime) public struct ServerStateMachine<Listener, Channel, Connection, Timer> {
    /// A connection waiting for one of its user's handshakes to end.
    public typealias Parked = ConnectionAdmissions.Parked

    /// Where the server is in its life, for tests and logs.
    public enum Phase: Equatable, Sendable {
        /// Made; ``runCalled()`` not yet.
        case idle
        /// Claiming the socket path; not yet accepting.
        case starting
        /// Accepting and serving.
        case running
        /// Not accepting; waiting for the connections left to close.
        case shuttingDown
        /// Done: every connection closed (or the server never ran).
        case finished
    }

    @usableFromInline
    var state: State

    /// A server that has not run yet, with its connection limits.
    @inlinable
    public init(admissions: ConnectionAdmissions) {
        self.state = .idle(Idle(admissions: admissions))
    }

    /// Where the server is in its life.
    public var phase: Phase {
        switch self.state {
        case .idle: .idle
        case .starting: .starting
        case .running: .running
        case .shuttingDown: .shuttingDown
        case .finished: .finished
        case .modifying: preconditionFailure("ServerStateMachine read while it is being modified")
        }
    }

    /// Connections counted now: served, handshaking and parked.
    public var connectionCount: Int {
        switch self.state {
        case .idle(let idle): idle.admissions.count
        case .starting(let starting): starting.admissions.count
        case .running(let running): running.registry.admissions.count
        case .shuttingDown(let shuttingDown): shuttingDown.registry.admissions.count
        case .finished: 0
        case .modifying: preconditionFailure("ServerStateMachine read while it is being modified")
        }
    }

    /// The framed connections whose handshake is complete (the peer's hello has arrived) and that have not closed,
    /// in the order they were accepted: while running, and while shutting down (until each closes). Empty for an
    /// EOF-style server, whose connections never report a handshake, and before and after the server runs.
    public var establishedConnections: [Connection] {
        let established: [UInt64: Connection]
        switch self.state {
        case .running(let running): established = running.registry.established
        case .shuttingDown(let shuttingDown): established = shuttingDown.registry.established
        case .idle, .starting, .finished: return []
        case .modifying: preconditionFailure("ServerStateMachine read while it is being modified")
        }
        return established.sorted { $0.key < $1.key }.map(\.value)
    }

    // MARK: - States

    @usableFromInline
    enum State {
        case idle(Idle)
        case starting(Starting)
        case running(Running)
        case shuttingDown(ShuttingDown)
        case finished
        /// Only while an event takes the state apart, so that the dictionaries it holds are mutated in place
        /// instead of copied.
        case modifying
    }

    @usableFromInline
    struct Idle {
        @usableFromInline
        var admissions: ConnectionAdmissions

        @inlinable
        init(admissions: ConnectionAdmissions) {
            self.admissions = admissions
        }
    }

    @usableFromInline
    struct Starting {
        @usableFromInline
        var admissions: ConnectionAdmissions
        /// A shutdown came before the socket was listening: shut down as soon as it is.
        @usableFromInline
        var shutdownRequested = false

        @inlinable
        init(admissions: ConnectionAdmissions) {
            self.admissions = admissions
        }
    }

    @usableFromInline
    struct Running {
        @usableFromInline
        var listener: Listener
        @usableFromInline
        var registry: Registry

        @inlinable
        init(listener: Listener, registry: Registry) {
            self.listener = listener
            self.registry = registry
        }
    }

    @usableFromInline
    struct ShuttingDown {
        @usableFromInline
        var registry: Registry
        /// Whether the connections still have their grace period: `false` once they were closed.
        @usableFromInline
        var graceful: Bool
        /// The end of the grace period, once the server reported it armed.
        @usableFromInline
        var gracePeriodTimer: Timer?
        /// Whether the server's shutdown hooks still run (``Shutdown/runShutdownHooks``): the drain is not complete
        /// before they end, and a graceful shutdown tells its connections that it is going away only then.
        @usableFromInline
        var hooksRunning: Bool

        @inlinable
        init(registry: Registry, graceful: Bool, hooksRunning: Bool = false) {
            self.registry = registry
            self.graceful = graceful
            self.hooksRunning = hooksRunning
        }

        /// Whether the going-away frames wait for the shutdown hooks: graceful, and the hooks still run.
        @inlinable
        var holdsGoingAway: Bool { self.graceful && self.hooksRunning }

        /// Whether nothing is left to drain: no connection counted, and no hook running.
        @inlinable
        var isDrained: Bool { self.registry.admissions.count == 0 && !self.hooksRunning }
    }

    /// The connections counted, with the channels and framed connections of those being served. Every entry is an
    /// admitted connection, so the registry holds at most the admissions' `maximumConnections`; a connection leaves
    /// it when it closes.
    @usableFromInline
    struct Registry {
        @usableFromInline
        var admissions: ConnectionAdmissions
        @usableFromInline
        var channels: [UInt64: Channel] = [:]
        /// Framed connections, from when they opened (before the peer's hello).
        @usableFromInline
        var connections: [UInt64: Connection] = [:]
        /// The framed connections whose peer's hello has arrived: those that ``establishedConnections`` lists.
        @usableFromInline
        var established: [UInt64: Connection] = [:]

        @inlinable
        init(admissions: ConnectionAdmissions) {
            self.admissions = admissions
        }

        /// Forgets a closed connection and hands back the parked connections its handshake slot frees.
        @inlinable
        mutating func close(_ id: UInt64, now: NIODeadline) -> ConnectionClosed {
            self.channels.removeValue(forKey: id)
            self.connections.removeValue(forKey: id)
            self.established.removeValue(forKey: id)
            let closed = self.admissions.closed(id)
            guard closed.wasCounted else { return ConnectionClosed(wasCounted: false) }
            return ConnectionClosed(wasCounted: true, parked: self.handOff(closed.next, now: now))
        }

        /// The parked connection to serve now, starting with `next`; those whose handshake time is up on the way
        /// are forgotten (each frees its slot for the one after it) and handed back to be closed unserved.
        @inlinable
        mutating func handOff(_ next: Parked?, now: NIODeadline) -> ParkedHandOff {
            var handOff = ParkedHandOff()
            var next = next
            while let parked = next {
                if parked.handshakeDeadline > now {
                    handOff.serve = parked
                    break
                }
                handOff.expired.append(parked)
                next = self.admissions.closed(parked.id).next
            }
            return handOff
        }
    }
}

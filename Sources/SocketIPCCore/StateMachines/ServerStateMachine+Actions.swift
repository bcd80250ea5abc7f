import NIOCore

/// What the server does in answer to each event: named actions, taken outside the lock.
extension ServerStateMachine {
    /// What the server's `run()` does once it is called.
    public enum RunAction: Equatable, Sendable {
        /// Claim the socket path and listen; then report ``listening(_:)`` or ``listenFailed()``.
        case startListening
        /// Throw: the server ran already, or was shut down before it ran.
        case failAlreadyRan
    }

    /// What to do once the socket listens.
    public enum ListeningAction {
        /// Accept and serve.
        case serve
        /// Start the listener all the same (it closes the socket when it stops), then shut down: a shutdown was
        /// requested before the socket was listening.
        case shutDown(Shutdown)
    }

    /// What to do with a connection just accepted.
    public enum AcceptAction: Equatable, Sendable {
        /// Serve it now: it counts as handshaking.
        case serve
        /// Tell the peer that the authorization policy refused it, then close; it counts against the connection
        /// limits until it is closed, but never as a pending handshake.
        case refuseUnauthorized
        /// Keep it unread until one of its user's handshakes ends (``ParkedHandOff/serve``) or its handshake time
        /// is up (``parkedHandshakeExpired(_:)``).
        case park
        /// Close it at once, uncounted.
        case refuse(Refusal)
    }

    /// Why an accepted connection is closed at once.
    public enum Refusal: Equatable, Sendable, CustomStringConvertible {
        /// The server is not running (any more).
        case shuttingDown
        /// A connection limit is reached.
        case limit(ConnectionAdmissions.Refusal)

        public var description: String {
            switch self {
            case .shuttingDown: "the server is shutting down"
            case .limit(let refusal): refusal.description
            }
        }
    }

    /// What to do with a channel just set up for a connection.
    public enum ChannelAction: Equatable, Sendable {
        /// Keep it: it is the server's to close in a forced shutdown.
        case keep
        /// Close it: the server has closed its connections already.
        case close
    }

    /// What to do with a framed connection that just opened.
    public enum ConnectionOpenedAction: Equatable, Sendable {
        /// Serve it.
        case serve
        /// Tell it that the server is going away: a shutdown began while it was being set up.
        case goAway
    }

    /// Parked connections handed back when a handshake slot of their user freed.
    public struct ParkedHandOff {
        /// The connection to serve now, if one waits whose handshake time is not up.
        public var serve: Parked?
        /// Connections whose handshake time ran out while they waited: forgotten already; close each unserved and
        /// count it as no longer active.
        public var expired: [Parked]

        /// Hands back `serve`, and `expired` to close.
        @inlinable
        public init(serve: Parked? = nil, expired: [Parked] = []) {
            self.serve = serve
            self.expired = expired
        }
    }

    /// What to do once a connection closed.
    public struct ConnectionClosed {
        /// Whether the connection was counted (the first close of an admitted connection): count it as no longer
        /// active.
        public var wasCounted: Bool
        /// Parked connections of the same user handed back now that a handshake slot is free.
        public var parked: ParkedHandOff
        /// Whether this was the last connection of a shutdown: the drain is complete, and the server's `run()` may
        /// return.
        public var drained: Bool
        /// The grace period's timer, when the drain completed before it: cancel it.
        public var cancelGracePeriodTimer: Timer?

        /// What to do once a connection closed; by default, nothing more than counting it if `wasCounted`.
        @inlinable
        public init(
            wasCounted: Bool,
            parked: ParkedHandOff = ParkedHandOff(),
            drained: Bool = false,
            cancelGracePeriodTimer: Timer? = nil
        ) {
            self.wasCounted = wasCounted
            self.parked = parked
            self.drained = drained
            self.cancelGracePeriodTimer = cancelGracePeriodTimer
        }
    }

    /// What to do with a parked connection whose handshake time is up.
    public enum ParkedExpiredAction: Equatable {
        /// Nothing: it was served or closed meanwhile.
        case none
        /// Close it unserved and count it as no longer active: it is forgotten already.
        case closeUnserved(Parked)
    }

    /// What a shutdown request asks for.
    public enum ShutdownAction {
        /// Nothing: the server shuts down already (or, before it listens, will as soon as it does).
        case none
        /// Shut down.
        case shutDown(Shutdown)
    }

    /// The steps of a shutdown, in the order the server takes them.
    public struct Shutdown {
        /// Whether the connections get the grace period (`false`: they are closed now).
        public var graceful: Bool
        /// The listener to stop, the first time.
        public var stopListening: Listener?
        /// Connections that waited for a handshake slot: forgotten already; close each unserved and count it as no
        /// longer active.
        public var closeParked: [Parked]
        /// Framed connections to tell that the server is going away (graceful).
        public var tellGoingAway: [Connection]
        /// Channels to close now (forced).
        public var closeChannels: [Channel]
        /// Whether to cancel the handlers' work still running (forced).
        public var cancelHandlerTasks: Bool
        /// The grace period's timer, which a forced shutdown makes moot: cancel it.
        public var cancelGracePeriodTimer: Timer?
        /// Whether to schedule the end of the grace period, and report it with ``gracePeriodTimerArmed(_:)``.
        public var armGracePeriodTimer: Bool
        /// Whether nothing is left to drain: the server's `run()` may return.
        public var drained: Bool
        /// Whether to run the server's shutdown hooks now, as part of the drain (before telling the connections that
        /// the server is going away, in a graceful shutdown), and report ``shutdownHooksFinished()`` once they end.
        public var runShutdownHooks: Bool

        /// A shutdown's steps; by default, none but logging it.
        @inlinable
        public init(
            graceful: Bool,
            stopListening: Listener? = nil,
            closeParked: [Parked] = [],
            tellGoingAway: [Connection] = [],
            closeChannels: [Channel] = [],
            cancelHandlerTasks: Bool = false,
            cancelGracePeriodTimer: Timer? = nil,
            armGracePeriodTimer: Bool = false,
            drained: Bool = false,
            runShutdownHooks: Bool = false
        ) {
            self.graceful = graceful
            self.stopListening = stopListening
            self.closeParked = closeParked
            self.tellGoingAway = tellGoingAway
            self.closeChannels = closeChannels
            self.cancelHandlerTasks = cancelHandlerTasks
            self.cancelGracePeriodTimer = cancelGracePeriodTimer
            self.armGracePeriodTimer = armGracePeriodTimer
            self.drained = drained
            self.runShutdownHooks = runShutdownHooks
        }
    }

    /// What to do once the shutdown hooks have ended.
    public struct ShutdownHooksFinished {
        /// Framed connections to tell now that the server is going away (a graceful shutdown, whose going-away
        /// frames waited for the hooks).
        public var tellGoingAway: [Connection]
        /// Whether this completed the drain: the server's `run()` may return.
        public var drained: Bool
        /// The grace period's timer, when the drain completed before it: cancel it.
        public var cancelGracePeriodTimer: Timer?

        /// What to do once the hooks have ended; by default, nothing.
        @inlinable
        public init(tellGoingAway: [Connection] = [], drained: Bool = false, cancelGracePeriodTimer: Timer? = nil) {
            self.tellGoingAway = tellGoingAway
            self.drained = drained
            self.cancelGracePeriodTimer = cancelGracePeriodTimer
        }
    }

    /// What to do with a grace period timer just armed.
    public enum GracePeriodTimerAction {
        /// Keep it: connections are left to drain.
        case keep
        /// Cancel it: the drain completed, or the shutdown was forced, before it was reported.
        case cancel(Timer)
    }

    /// The connection limits after ``fitLimits(toHold:)`` lowered them.
    public struct LoweredLimits: Equatable, Sendable {
        /// The most connections in all.
        public var maximumConnections: Int
        /// The most connections of one user.
        public var maximumConnectionsPerUser: Int

        /// The limits as lowered.
        @inlinable
        public init(maximumConnections: Int, maximumConnectionsPerUser: Int) {
            self.maximumConnections = maximumConnections
            self.maximumConnectionsPerUser = maximumConnectionsPerUser
        }
    }
}

// MARK: - Conformances

extension ServerStateMachine.ListeningAction: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.ParkedHandOff: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.ConnectionClosed: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.ParkedExpiredAction: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.ShutdownAction: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.Shutdown: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.GracePeriodTimerAction: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}
extension ServerStateMachine.ShutdownHooksFinished: Sendable
where Listener: Sendable, Channel: Sendable, Connection: Sendable, Timer: Sendable {}

extension ServerStateMachine.ParkedHandOff: Equatable {}
extension ServerStateMachine.ConnectionClosed: Equatable where Timer: Equatable {}
extension ServerStateMachine.GracePeriodTimerAction: Equatable where Timer: Equatable {}

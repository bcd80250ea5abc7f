import NIOCore

/// The events a server feeds its state machine, each answered with a named action.
extension ServerStateMachine {
    /// The server's `run()` was called.
    @inlinable
    public mutating func runCalled() -> RunAction {
        switch self.state {
        case .idle(let idle):
            self.state = .starting(Starting(admissions: idle.admissions))
            return .startListening
        case .starting, .running, .shuttingDown, .finished:
            return .failAlreadyRan
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// Lowers the connection limits to `connections` in all, and half of them for one user, if they are higher: what
    /// the process's descriptors (or, with descriptor passing, its threads) can hold; before the server listens.
    /// - Returns: The lowered limits, or `nil` if they were not lowered.
    @inlinable
    public mutating func fitLimits(toHold connections: Int) -> LoweredLimits? {
        func fit(_ admissions: inout ConnectionAdmissions) -> LoweredLimits? {
            guard admissions.fit(toHold: connections) else { return nil }
            return LoweredLimits(
                maximumConnections: admissions.maximumConnections,
                maximumConnectionsPerUser: admissions.maximumConnectionsPerUser
            )
        }
        switch self.state {
        case .idle(var idle):
            defer { self.state = .idle(idle) }
            return fit(&idle.admissions)
        case .starting(var starting):
            defer { self.state = .starting(starting) }
            return fit(&starting.admissions)
        case .running, .shuttingDown, .finished:
            return nil
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// The socket path could not be claimed: the server's `run()` throws, and the server is finished.
    @inlinable
    public mutating func listenFailed() {
        self.state = .finished
    }

    /// The socket listens; `listener` accepts its connections once started.
    @inlinable
    public mutating func listening(_ listener: Listener) -> ListeningAction {
        switch self.state {
        case .starting(let starting) where !starting.shutdownRequested:
            self.state = .running(Running(listener: listener, registry: Registry(admissions: starting.admissions)))
            return .serve
        case .starting:
            // No connection was accepted yet: nothing to close, nothing to drain.
            self.state = .finished
            return .shutDown(Shutdown(graceful: false, stopListening: listener, drained: true))
        case .idle, .running, .shuttingDown, .finished:
            assertionFailure("listening reported twice, or before run() was called")
            return .shutDown(Shutdown(graceful: false, stopListening: listener))
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A connection was accepted: admits it against the limits, or refuses it.
    /// - Parameters:
    ///   - id: The connection's number.
    ///   - descriptor: Its socket, kept for a connection that is parked.
    ///   - peer: The peer's credentials, which say whose limits it counts against.
    ///   - authorized: Whether the authorization policy allowed the peer; a refused peer is only told why.
    ///   - handshakeDeadline: When its handshake time is up, counted from now (kept for a connection that is
    ///     parked).
    @inlinable
    public mutating func connectionAccepted(
        _ id: UInt64,
        descriptor: Int32,
        peer: PeerCredentials?,
        authorized: Bool,
        handshakeDeadline: NIODeadline
    ) -> AcceptAction {
        guard case .running(var running) = self.state else { return .refuse(.shuttingDown) }
        self.state = .modifying
        defer { self.state = .running(running) }
        let decision = running.registry.admissions.admit(
            id,
            descriptor: descriptor,
            peer: peer,
            handshaking: authorized,
            handshakeDeadline: handshakeDeadline
        )
        switch decision {
        case .admitted: return authorized ? .serve : .refuseUnauthorized
        case .parked: return .park
        case .refused(let refusal): return .refuse(.limit(refusal))
        }
    }

    /// The channel of an admitted connection was set up.
    @inlinable
    public mutating func channelInitialized(_ id: UInt64, channel: Channel) -> ChannelAction {
        switch self.state {
        case .running(var running):
            self.state = .modifying
            running.registry.channels[id] = channel
            self.state = .running(running)
            return .keep
        case .shuttingDown(var shuttingDown) where shuttingDown.graceful:
            self.state = .modifying
            shuttingDown.registry.channels[id] = channel
            self.state = .shuttingDown(shuttingDown)
            return .keep
        case .idle, .starting, .shuttingDown, .finished:
            return .close
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A framed connection opened on its channel (before the peer's hello). While a graceful shutdown's hooks run,
    /// it is served, and told that the server is going away with the others once they end
    /// (``shutdownHooksFinished()``).
    @inlinable
    public mutating func connectionOpened(_ id: UInt64, connection: Connection) -> ConnectionOpenedAction {
        switch self.state {
        case .running(var running):
            self.state = .modifying
            running.registry.connections[id] = connection
            self.state = .running(running)
            return .serve
        case .shuttingDown(var shuttingDown):
            self.state = .modifying
            shuttingDown.registry.connections[id] = connection
            self.state = .shuttingDown(shuttingDown)
            return shuttingDown.holdsGoingAway ? .serve : .goAway
        case .idle, .starting, .finished:
            return .goAway
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A framed connection's peer sent its hello: it no longer counts as a pending handshake, and is listed in
    /// ``establishedConnections``. (An EOF-style connection counts as one until it closes.)
    /// - Parameter now: The time, to tell whether a parked connection handed back has run out of handshake time.
    /// - Returns: Parked connections of the same user handed back now that a handshake slot is free.
    @inlinable
    public mutating func handshakeCompleted(_ id: UInt64, now: NIODeadline) -> ParkedHandOff {
        switch self.state {
        case .running(var running):
            self.state = .modifying
            defer { self.state = .running(running) }
            running.registry.established[id] = running.registry.connections[id]
            let next = running.registry.admissions.handshakeEnded(id)
            return running.registry.handOff(next, now: now)
        case .shuttingDown(var shuttingDown):
            // Parked connections were closed when the shutdown began: none is handed back.
            self.state = .modifying
            defer { self.state = .shuttingDown(shuttingDown) }
            shuttingDown.registry.established[id] = shuttingDown.registry.connections[id]
            let next = shuttingDown.registry.admissions.handshakeEnded(id)
            return shuttingDown.registry.handOff(next, now: now)
        case .idle, .starting, .finished:
            return ParkedHandOff()
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A connection closed, or could not be set up. Only its first close counts; later ones do nothing.
    /// - Parameter now: The time, to tell whether a parked connection handed back has run out of handshake time.
    @inlinable
    public mutating func connectionClosed(_ id: UInt64, now: NIODeadline) -> ConnectionClosed {
        switch self.state {
        case .running(var running):
            self.state = .modifying
            defer { self.state = .running(running) }
            return running.registry.close(id, now: now)
        case .shuttingDown(var shuttingDown):
            self.state = .modifying
            var action = shuttingDown.registry.close(id, now: now)
            guard shuttingDown.isDrained else {
                self.state = .shuttingDown(shuttingDown)
                return action
            }
            self.state = .finished
            action.drained = true
            action.cancelGracePeriodTimer = shuttingDown.gracePeriodTimer
            return action
        case .idle, .starting, .finished:
            return ConnectionClosed(wasCounted: false)
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A parked connection's handshake time is up.
    @inlinable
    public mutating func parkedHandshakeExpired(_ id: UInt64) -> ParkedExpiredAction {
        // Only a running server parks connections: a shutdown closes them all when it begins.
        guard case .running(var running) = self.state else { return .none }
        self.state = .modifying
        defer { self.state = .running(running) }
        guard let parked = running.registry.admissions.expireParked(id) else { return .none }
        return .closeUnserved(parked)
    }

    /// A shutdown was asked for: graceful (`shutdownGracefully()`, a service group's), or forced (the
    /// task running the server's `run()` was cancelled). A forced one after a graceful one closes what is left now.
    /// - Parameters:
    ///   - graceful: Whether the connections get the grace period.
    ///   - runningShutdownHooks: Whether the server has shutdown hooks to run as part of the drain. Taken into
    ///     account only by the first request of a running server: its ``Shutdown/runShutdownHooks`` is then set, the
    ///     drain is not complete before ``shutdownHooksFinished()``, and a graceful shutdown tells its connections
    ///     that it is going away only then. Default `false`.
    @inlinable
    public mutating func shutdownRequested(graceful: Bool, runningShutdownHooks: Bool = false) -> ShutdownAction {
        switch self.state {
        case .idle:
            self.state = .finished
            return .none
        case .starting(var starting):
            starting.shutdownRequested = true
            self.state = .starting(starting)
            return .none
        case .running(var running):
            self.state = .modifying
            var shutdown = Shutdown(graceful: graceful, stopListening: running.listener)
            shutdown.runShutdownHooks = runningShutdownHooks
            shutdown.closeParked = running.registry.admissions.takeAllParked()
            for parked in shutdown.closeParked {
                _ = running.registry.admissions.closed(parked.id)
            }
            guard running.registry.admissions.count > 0 || runningShutdownHooks else {
                self.state = .finished
                shutdown.drained = true
                return .shutDown(shutdown)
            }
            if graceful {
                // With hooks to run, the going-away frames wait for them (``shutdownHooksFinished()``).
                if !runningShutdownHooks { shutdown.tellGoingAway = Array(running.registry.connections.values) }
                shutdown.armGracePeriodTimer = true
            } else {
                // Said before the close, as HTTP/2 sends GOAWAY before it closes at once: a peer waiting for an answer
                // learns that the server went away on purpose, not that it crashed.
                shutdown.tellGoingAway = Array(running.registry.connections.values)
                shutdown.closeChannels = Array(running.registry.channels.values)
                shutdown.cancelHandlerTasks = true
            }
            self.state = .shuttingDown(
                ShuttingDown(registry: running.registry, graceful: graceful, hooksRunning: runningShutdownHooks)
            )
            return .shutDown(shutdown)
        case .shuttingDown(var shuttingDown) where shuttingDown.graceful && !graceful:
            self.state = .modifying
            // Going-away waited for the shutdown hooks: said now, before the close (found by a review).
            let untold = shuttingDown.holdsGoingAway ? Array(shuttingDown.registry.connections.values) : []
            shuttingDown.graceful = false
            let shutdown = Shutdown(
                graceful: false,
                tellGoingAway: untold,
                closeChannels: Array(shuttingDown.registry.channels.values),
                cancelHandlerTasks: true,
                cancelGracePeriodTimer: shuttingDown.gracePeriodTimer
            )
            shuttingDown.gracePeriodTimer = nil
            self.state = .shuttingDown(shuttingDown)
            return .shutDown(shutdown)
        case .shuttingDown, .finished:
            return .none
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// The shutdown hooks that ``Shutdown/runShutdownHooks`` asked to run have ended: a graceful shutdown now tells
    /// its connections that it is going away (also those that opened while the hooks ran), and the drain completes
    /// if no connection is left.
    @inlinable
    public mutating func shutdownHooksFinished() -> ShutdownHooksFinished {
        guard case .shuttingDown(var shuttingDown) = self.state, shuttingDown.hooksRunning else {
            return ShutdownHooksFinished()
        }
        self.state = .modifying
        var action = ShutdownHooksFinished()
        if shuttingDown.graceful { action.tellGoingAway = Array(shuttingDown.registry.connections.values) }
        shuttingDown.hooksRunning = false
        guard shuttingDown.isDrained else {
            self.state = .shuttingDown(shuttingDown)
            return action
        }
        self.state = .finished
        action.drained = true
        action.cancelGracePeriodTimer = shuttingDown.gracePeriodTimer
        return action
    }

    /// The server armed the grace period's timer that ``Shutdown/armGracePeriodTimer`` asked for.
    @inlinable
    public mutating func gracePeriodTimerArmed(_ timer: Timer) -> GracePeriodTimerAction {
        guard case .shuttingDown(var shuttingDown) = self.state, shuttingDown.graceful,
            shuttingDown.gracePeriodTimer == nil
        else { return .cancel(timer) }
        self.state = .modifying
        shuttingDown.gracePeriodTimer = timer
        self.state = .shuttingDown(shuttingDown)
        return .keep
    }

    /// The grace period's timer fired: the shutdown is forced, unless the drain completed first.
    @inlinable
    public mutating func gracePeriodEnded() -> ShutdownAction {
        guard case .shuttingDown(var shuttingDown) = self.state, shuttingDown.graceful else { return .none }
        self.state = .modifying
        shuttingDown.gracePeriodTimer = nil  // it fired: nothing to cancel
        self.state = .shuttingDown(shuttingDown)
        return self.shutdownRequested(graceful: false)
    }
}

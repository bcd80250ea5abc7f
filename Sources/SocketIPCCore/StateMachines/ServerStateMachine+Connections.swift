import NIOCore

// MARK: - Events of connections

extension ServerStateMachine {
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

    /// A framed connection opened on its channel (before the peer's hello).
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
            return .goAway
        case .idle, .starting, .finished:
            return .goAway
        case .modifying:
            preconditionFailure("ServerStateMachine used while it is being modified")
        }
    }

    /// A framed connection's peer sent its hello: it no longer counts as a pending handshake. (An EOF-style
    /// connection counts as one until it closes.)
    /// - Parameter now: The time, to tell whether a parked connection handed back has run out of handshake time.
    /// - Returns: Parked connections of the same user handed back now that a handshake slot is free.
    @inlinable
    public mutating func handshakeCompleted(_ id: UInt64, now: NIODeadline) -> ParkedHandOff {
        switch self.state {
        case .running(var running):
            self.state = .modifying
            defer { self.state = .running(running) }
            let next = running.registry.admissions.handshakeEnded(id)
            return running.registry.handOff(next, now: now)
        case .shuttingDown(var shuttingDown):
            // Parked connections were closed when the shutdown began: none is handed back.
            self.state = .modifying
            defer { self.state = .shuttingDown(shuttingDown) }
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
            guard shuttingDown.registry.admissions.count == 0 else {
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
}

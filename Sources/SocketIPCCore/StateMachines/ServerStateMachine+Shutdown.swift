import NIOCore

// MARK: - Events of shutdown

extension ServerStateMachine {
    /// A shutdown was asked for: graceful (`shutdownGracefully()`, a service group's), or forced (the
    /// task running the server's `run()` was cancelled). A forced one after a graceful one closes what is left now.
    @inlinable
    public mutating func shutdownRequested(graceful: Bool) -> ShutdownAction {
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
            shutdown.closeParked = running.registry.admissions.takeAllParked()
            for parked in shutdown.closeParked {
                _ = running.registry.admissions.closed(parked.id)
            }
            guard running.registry.admissions.count > 0 else {
                self.state = .finished
                shutdown.drained = true
                return .shutDown(shutdown)
            }
            if graceful {
                shutdown.tellGoingAway = Array(running.registry.connections.values)
                shutdown.armGracePeriodTimer = true
            } else {
                shutdown.closeChannels = Array(running.registry.channels.values)
                shutdown.cancelHandlerTasks = true
            }
            self.state = .shuttingDown(ShuttingDown(registry: running.registry, graceful: graceful))
            return .shutDown(shutdown)
        case .shuttingDown(var shuttingDown) where shuttingDown.graceful && !graceful:
            self.state = .modifying
            shuttingDown.graceful = false
            let shutdown = Shutdown(
                graceful: false,
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

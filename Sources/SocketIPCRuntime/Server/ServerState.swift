import NIOCore
@_spi(SocketIPCRuntime) import SocketIPCCore

/// What a ``Server`` keeps under its lock: its state machine, and beside it what only the runtime holds (the tasks
/// waiting for it to run, the bodies to run when it shuts down). One lock, so that an event of the machine and what
/// it means for those waiters and bodies are one step.
struct ServerState {
    /// Where the server is in its life, its connections and their admissions.
    var machine: Server.StateMachine
    /// The tasks waiting in ``Server/waitUntilRunning()``.
    var startup = StartupWaiters()
    /// The bodies of ``Server/onGracefulShutdown(_:)``.
    var shutdownHooks = ShutdownHooks()
    /// The grace period's timer of a graceful shutdown whose connections have all closed: it still bounds the
    /// handlers' work that goes on without a connection (an EOF-style message received whole), and is cancelled
    /// once ``Server/run()`` is done with that work.
    var drainedGracePeriodTimer: Scheduled<Void>?
    /// Whether ``Server/run()`` is done with the handlers' work: a grace period's timer armed from now on is
    /// cancelled at once instead of kept.
    var handlerWorkEnded = false

    init(machine: Server.StateMachine) {
        self.machine = machine
    }

    /// Keeps `timer` as ``drainedGracePeriodTimer``; returns it to cancel instead when ``Server/run()`` is already
    /// done with the handlers' work, or when a timer is kept already (both end the same grace period).
    mutating func keepDrainedGracePeriodTimer(_ timer: Scheduled<Void>) -> Scheduled<Void>? {
        if self.handlerWorkEnded || self.drainedGracePeriodTimer != nil { return timer }
        self.drainedGracePeriodTimer = timer
        return nil
    }
}

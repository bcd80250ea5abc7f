import NIOCore
@_spi(SocketIPCRuntime) import SocketIPCCore

/// What a ``Server`` keeps under its lock: its state machine, and beside it what only the runtime holds (the tasks
/// waiting for it to run). One lock, so that an event of the machine and what it means for those waiters are one
/// step.
struct ServerState {
    /// Where the server is in its life, its connections and their admissions.
    var machine: Server.StateMachine
    /// The tasks waiting in ``Server/waitUntilRunning()``.
    var startup = StartupWaiters()

    init(machine: Server.StateMachine) {
        self.machine = machine
    }
}
